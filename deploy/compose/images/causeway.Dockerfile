# The Causeway runtime image: the edge and core binaries, built on the host beforehand
# (deploy/compose/run.sh copies target/release/{edge,core} into the build context's bin/),
# on a minimal Debian. One image serves both daemons; the command picks which.
#
#   docker build -f images/causeway.Dockerfile --build-arg BASE=causeway-base:bookworm .
#
# BASE defaults to debian:bookworm-slim for machines that can pull; machines without a
# registry build causeway-base:bookworm with deploy/compose/base-images.sh. The binaries link
# glibc dynamically: BASE must be bookworm or newer. For an image built from source instead,
# see images/causeway-source.Dockerfile (needs a Rust image from a registry).
ARG BASE=debian:bookworm-slim
FROM ${BASE}

# What the binaries need at run time: CA certificates (partners' certificates, `ca_bundle`).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin

# A dedicated unprivileged user; the config and PKI are mounted read-only (keys readable by
# group 5269, causeway-pki, as in the lab's other images), the admin socket lives in
# /run/causeway (writable by it).
RUN groupadd --system causeway \
    && groupadd --gid 5269 causeway-pki \
    && useradd --system --gid causeway --groups causeway-pki --home-dir /var/lib/causeway --shell /usr/sbin/nologin causeway \
    && install -d -o causeway -g causeway -m 0750 /run/causeway /var/lib/causeway /etc/causeway

COPY bin/edge bin/core /usr/local/bin/
COPY images/causeway-healthcheck /usr/local/bin/causeway-healthcheck

USER causeway
WORKDIR /var/lib/causeway

# The daemon answers its status command: 0 (active) and 2 (inactive, e.g. an edge with no core
# yet, or one of an HA pair down) are both alive; 1 (no answer) is unhealthy.
HEALTHCHECK --interval=5s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/causeway-healthcheck"]

# `edge run -c /etc/causeway/edge.toml` or `core run -c /etc/causeway/core.toml`.
ENTRYPOINT []
CMD ["edge", "run", "--config", "/etc/causeway/edge.toml"]
