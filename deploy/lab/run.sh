#!/usr/bin/env bash
# The lab federation topology, end to end, on loopback addresses: dnsmasq, an internal Prosody
# (example.com, routed through core), an external Prosody (partner.test), an external ejabberd
# (partner2.test), core and edge. It runs a conversation across it and reports.
#   deploy/lab/run.sh           # run, check, stop
#   deploy/lab/run.sh --stay    # keep it running for exploration (Ctrl-C stops everything)
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/lab/install-deps.sh
cargo build --release --bins --example lab
exec target/release/examples/lab --edge target/release/edge --core target/release/core "$@"
