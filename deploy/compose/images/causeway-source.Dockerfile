# The Causeway runtime image built from source, for users whose Docker can pull images:
#
#   docker build -f deploy/compose/images/causeway-source.Dockerfile -t causeway:source .
#
# run from the repository root (the build context is the whole workspace). Needs a Rust image
# from a registry (Debian's own rustc is older than the workspace's rust-version, 1.85).
# NOT exercised by the project's tests: its machines have no registry; the tested image is
# images/causeway.Dockerfile, which packs binaries built on the host.
ARG RUST_IMAGE=rust:1-bookworm
ARG BASE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin edge --bin core

FROM ${BASE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
RUN groupadd --system causeway \
    && groupadd --gid 5269 causeway-pki \
    && useradd --system --gid causeway --groups causeway-pki --home-dir /var/lib/causeway --shell /usr/sbin/nologin causeway \
    && install -d -o causeway -g causeway -m 0750 /run/causeway /var/lib/causeway /etc/causeway
COPY --from=build /src/target/release/edge /src/target/release/core /usr/local/bin/
COPY deploy/compose/images/causeway-healthcheck /usr/local/bin/causeway-healthcheck
USER causeway
WORKDIR /var/lib/causeway
HEALTHCHECK --interval=5s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/causeway-healthcheck"]
CMD ["edge", "run", "--config", "/etc/causeway/edge.toml"]
