# ejabberd from Debian, in the foreground. The configuration is mounted at /etc/causeway
# (ejabberd.yml, optional accounts.txt); certificates at /pki. Nothing secret is baked in: the
# package's generated certificate is removed, and the Erlang cookie is created per container at
# its first start (the Erlang distribution only listens on 127.0.0.1).
#
#   trixie:   ejabberd 24.12      docker build --build-arg BASE=causeway-base:trixie ...
#   bookworm: ejabberd 23.01      docker build --build-arg BASE=causeway-base:bookworm ...
ARG BASE=debian:trixie-slim
FROM ${BASE}

ARG DEBIAN_FRONTEND=noninteractive
RUN printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d \
 && apt-get update \
 && apt-get install -y --no-install-recommends ejabberd \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc/* /usr/share/man/* \
 && rm -f /usr/sbin/policy-rc.d \
 && rm -f /etc/ejabberd/ejabberd.pem /etc/ssl/private/ssl-cert-snakeoil.key /etc/ssl/certs/ssl-cert-snakeoil.pem \
 && rm -rf /var/lib/ejabberd/.erlang.cookie /var/lib/ejabberd/*@* \
 && groupadd --gid 5269 causeway-pki && usermod -a -G causeway-pki ejabberd \
 && install -d -o ejabberd -g ejabberd /run/ejabberd /var/lib/ejabberd /var/log/ejabberd /etc/causeway \
 && ln -sf /etc/causeway/ejabberd.yml /etc/ejabberd/ejabberd.yml \
 # The Erlang distribution (epmd and the node's port) on loopback only; ejabberdctl resets
 # INET_DIST_INTERFACE before reading this file, so it must be set here, not in ENV.
 && printf '\nINET_DIST_INTERFACE=127.0.0.1\nERL_EPMD_ADDRESS=127.0.0.1\n' >>/etc/default/ejabberd

COPY images/ejabberd-entrypoint.sh /usr/local/bin/causeway-ejabberd
RUN chmod 755 /usr/local/bin/causeway-ejabberd

USER ejabberd
WORKDIR /var/lib/ejabberd
EXPOSE 5222 5269
# Healthy: the entrypoint wrote its marker (ejabberd started, accounts created) and s2s (5269 =
# 0x1495) and c2s (5222 = 0x1466) are listening. Read from /proc rather than by connecting,
# which would log a connection every few seconds (and `ejabberdctl status` costs a whole VM).
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 \
    CMD test -e /run/ejabberd/causeway-ready \
     && grep -qsE ':1495 0+:0000 0A' /proc/net/tcp /proc/net/tcp6 \
     && grep -qsE ':1466 0+:0000 0A' /proc/net/tcp /proc/net/tcp6
ENTRYPOINT ["/usr/local/bin/causeway-ejabberd"]
