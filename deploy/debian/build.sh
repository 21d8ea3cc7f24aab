#!/usr/bin/env bash
# Build the Debian packages causeway-edge and causeway-core into target/debian/:
#   deploy/debian/build.sh
# Needs cargo-deb (`cargo install cargo-deb --locked`) and dpkg-dev (for the library
# dependencies). The binaries are built once, in release; their man pages and shell
# completions are generated from the binaries themselves.
set -euo pipefail
cd "$(dirname "$0")/../.."

command -v cargo-deb >/dev/null || {
    echo "build.sh: cargo-deb is missing: cargo install cargo-deb --locked" >&2
    exit 1
}

cargo build --release --locked --bin edge --bin core
assets=target/debian-assets
rm -rf "$assets"
for bin in edge core; do
    out="$assets/$bin"
    mkdir -p "$out/man"
    "target/release/$bin" man "$out/man"
    gzip -9n "$out/man"/*.1
    "target/release/$bin" completions bash >"$out/$bin.bash"
    "target/release/$bin" completions zsh >"$out/_$bin"
    "target/release/$bin" completions fish >"$out/$bin.fish"
done
mkdir -p target/debian
for bin in edge core; do
    cargo deb --no-build --locked --strip --variant "$bin" --output target/debian/
done
ls -1 target/debian/*.deb
