#!/usr/bin/env bash
# Install the real peers the lab and the tests run against (Debian packages), and stop the
# system services the packages start: the tests run their own instances on loopback addresses.
set -eu
export DEBIAN_FRONTEND=noninteractive
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
need=""
for pkg in prosody prosody-modules lua-unbound ejabberd dnsmasq python3-slixmpp openssl iproute2 procps slapd ldap-utils; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need="$need $pkg"
done
if [ -n "$need" ]; then
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends $need
  # The packages start their system services; the lab and tests run their own instances.
  for svc in prosody ejabberd dnsmasq slapd; do
    $SUDO systemctl stop "$svc" 2>/dev/null || $SUDO service "$svc" stop 2>/dev/null || true
    $SUDO systemctl disable "$svc" 2>/dev/null || true
  done
fi
exit 0
