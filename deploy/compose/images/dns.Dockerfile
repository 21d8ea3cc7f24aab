# dnsmasq in the foreground, serving the views of the lab; the configuration is mounted at
# /etc/causeway/dnsmasq.conf. It logs to stderr (docker logs).
ARG BASE=debian:bookworm-slim
FROM ${BASE}

ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends dnsmasq-base \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc/* /usr/share/man/*

EXPOSE 53/udp 53/tcp
# Healthy: listening on TCP 53 (0x0035); read from /proc, no query needed.
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 \
    CMD grep -qsE ':0035 0+:0000 0A' /proc/net/tcp /proc/net/tcp6
# It starts as root to bind port 53, then drops to the dnsmasq user.
ENTRYPOINT ["dnsmasq", "--keep-in-foreground", "--log-facility=-", "--conf-file=/etc/causeway/dnsmasq.conf"]
