#!/usr/bin/env bash
# Build the local Debian base images the container lab (and the two-host packaging) build on,
# for machines where no image can be pulled: debootstrap a minimal root of each suite from the
# Debian mirror apt already uses here, and `docker import` it as causeway-base:<suite>.
#
#   deploy/compose/base-images.sh                 bookworm and trixie, each unless present
#   deploy/compose/base-images.sh trixie          one suite
#   FORCE=1 deploy/compose/base-images.sh         rebuild even if present
#   MIRROR=http://... deploy/compose/base-images.sh
#
# Users who can pull may use debian:<suite>-slim instead: every Dockerfile of the lab takes its
# base image as the build argument BASE.
set -euo pipefail

suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(bookworm trixie)

die() { echo "base-images.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap needs it)"
command -v docker >/dev/null || die "docker is missing"
docker info >/dev/null 2>&1 || die "the Docker daemon does not answer"
if ! command -v debootstrap >/dev/null; then
    apt-get install -y debootstrap >/dev/null || die "cannot install debootstrap"
fi

# The mirror apt uses (deb822 .sources first, then one-line sources.list).
mirror() {
    local m
    m=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' |
        grep -v security | head -n1 || true)
    [ -n "$m" ] || m=$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
        awk '{print $2}' | grep -v security | head -n1 || true)
    echo "${m:-http://deb.debian.org/debian}"
}
MIRROR="${MIRROR:-$(mirror)}"

for suite in "${suites[@]}"; do
    image="causeway-base:$suite"
    if [ -z "${FORCE:-}" ] && docker image inspect "$image" >/dev/null 2>&1; then
        echo "== $image: present"
        continue
    fi
    root=$(mktemp -d "/tmp/causeway-base-$suite.XXXXXX")
    trap 'rm -rf "$root"' EXIT
    echo "== $image: debootstrap $suite from $MIRROR"
    started=$(date +%s)
    debootstrap --variant=minbase --include=ca-certificates "$suite" "$root" "$MIRROR" \
        >"$root.log" 2>&1 || { tail -n 20 "$root.log" >&2; die "debootstrap $suite failed"; }
    # What an image does not need: apt lists and caches, docs, logs of the build.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
        "$root"/var/cache/apt/archives/*.deb "$root"/usr/share/doc/* \
        "$root"/usr/share/man/* "$root"/var/log/*.log
    # apt inside the image uses the same mirror (and the security archive where it exists).
    cat >"$root/etc/apt/sources.list" <<EOF
deb $MIRROR $suite main
EOF
    tar -C "$root" -c . | docker import \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        - "$image" >/dev/null
    rm -rf "$root" "$root.log"
    trap - EXIT
    echo "== $image: built in $(( $(date +%s) - started )) s, $(docker image inspect -f '{{.Size}}' "$image" | numfmt --to=iec)"
done
