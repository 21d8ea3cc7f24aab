# Prosody from Debian, in the foreground as the prosody user. The configuration is mounted at
# /etc/causeway (prosody.cfg.lua, optional accounts.txt); certificates at /pki. Nothing secret
# is baked in: the package's generated localhost certificate and ssl-cert's snakeoil key are
# removed.
#
#   trixie:   Prosody 13.0.x     docker build --build-arg BASE=causeway-base:trixie ...
#   bookworm: Prosody 0.12.x     docker build --build-arg BASE=causeway-base:bookworm ...
ARG BASE=debian:trixie-slim
FROM ${BASE}

ARG DEBIAN_FRONTEND=noninteractive
# Package scripts must not try to start services during the build.
RUN printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d \
 && apt-get update \
 && apt-get install -y --no-install-recommends prosody lua-unbound \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc/* /usr/share/man/* \
 && rm -f /usr/sbin/policy-rc.d \
 && rm -f /etc/prosody/certs/* /etc/ssl/private/ssl-cert-snakeoil.key /etc/ssl/certs/ssl-cert-snakeoil.pem \
 # The lab's PKI volume makes keys readable by this group (gid 5269): see compose.yaml.
 && groupadd --gid 5269 causeway-pki && usermod -a -G causeway-pki prosody \
 && install -d -o prosody -g prosody /run/prosody /var/lib/prosody /etc/causeway \
 && ln -sf /etc/causeway/prosody.cfg.lua /etc/prosody/prosody.cfg.lua

COPY images/prosody-entrypoint.sh /usr/local/bin/causeway-prosody
RUN chmod 755 /usr/local/bin/causeway-prosody

USER prosody
WORKDIR /var/lib/prosody
EXPOSE 5222 5269
# Healthy: s2s (5269 = 0x1495) and c2s (5222 = 0x1466) are listening, so the configuration
# loaded and the accounts exist (created before Prosody starts). Read from /proc rather than by
# connecting, which would log a connection every few seconds.
HEALTHCHECK --interval=5s --timeout=3s --start-period=20s --retries=3 \
    CMD grep -qsE ':1495 0+:0000 0A' /proc/net/tcp /proc/net/tcp6 \
     && grep -qsE ':1466 0+:0000 0A' /proc/net/tcp /proc/net/tcp6
ENTRYPOINT ["/usr/local/bin/causeway-prosody"]
