#!/usr/bin/env bash
# Check the Debian packages deploy/debian/build.sh made (target/debian/*.deb): their file
# lists, control fields and maintainer scripts; the units (systemd-analyze verify, and an
# exposure of 2.0 or better by systemd-analyze security); then install both on this machine,
# check what the maintainer scripts did (the system users, the units enabled, nothing
# started without a config), upgrade over them, remove and purge them.
#   deploy/debian/check.sh        (as root; used by .ci/run)
# Every check is an assertion: the script stops at the first that fails, saying which.
set -euo pipefail
cd "$(dirname "$0")/../.."

fail() {
    echo "check.sh: FAIL: $*" >&2
    exit 1
}
pass() { echo "ok: $*"; }

[ "$(id -u)" = 0 ] || fail "run as root (it installs the packages)"
for tool in dpkg-deb systemd-analyze; do
    command -v "$tool" >/dev/null || fail "$tool is missing (apt-get install dpkg systemd)"
done
command -v man >/dev/null || fail "man is missing: systemd-analyze verify checks Documentation=man:... (apt-get install man-db)"
MAX_EXPOSURE=20 # systemd-analyze's threshold is ten times the shown score: 2.0

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for bin in edge core; do
    pkg=causeway-$bin
    deb=target/debian/${pkg}_${version}-1_amd64.deb
    [ -f "$deb" ] || fail "$deb is missing: run deploy/debian/build.sh"

    # Control fields.
    [ "$(dpkg-deb -f "$deb" Package)" = "$pkg" ] || fail "$deb: Package is not $pkg"
    depends=$(dpkg-deb -f "$deb" Depends)
    for dep in adduser libc6; do
        [[ "$depends" == *"$dep"* ]] || fail "$pkg: Depends ($depends) lacks $dep"
    done
    pass "$pkg: control (Depends: $depends)"

    # The file list.
    dpkg-deb -c "$deb" | awk '{print $1, $6}' >"$work/$pkg.list"
    expect=(
        "-rwxr-xr-x ./usr/bin/$bin"
        "-rw-r--r-- ./usr/lib/systemd/system/$pkg.service"
        "-rw-r--r-- ./usr/lib/sysusers.d/$pkg.conf"
        "-rw-r--r-- ./usr/share/doc/$pkg/examples/$bin.toml"
        "-rw-r--r-- ./usr/share/doc/$pkg/copyright"
        "-rw-r--r-- ./usr/share/man/man1/$bin.1.gz"
        "-rw-r--r-- ./usr/share/man/man1/$bin-status.1.gz"
        "-rw-r--r-- ./usr/share/man/man1/$bin-reload.1.gz"
        "-rw-r--r-- ./usr/share/bash-completion/completions/$bin"
        "-rw-r--r-- ./usr/share/zsh/vendor-completions/_$bin"
        "-rw-r--r-- ./usr/share/fish/vendor_completions.d/$bin.fish"
    )
    [ "$bin" = core ] && expect+=("-rw-r--r-- ./usr/share/causeway-core/prosody/mod_causeway_route.lua")
    [ "$bin" = edge ] && expect+=("-rwxr-xr-x ./usr/share/causeway-edge/certbot-deploy-hook")
    for line in "${expect[@]}"; do
        grep -qxF -- "$line" "$work/$pkg.list" || fail "$pkg lacks '$line'; it has:
$(cat "$work/$pkg.list")"
    done
    if grep -q ' ./etc/' "$work/$pkg.list"; then
        fail "$pkg ships files under /etc: the config is the administrator's (examples go to /usr/share/doc)"
    fi
    pass "$pkg: ${#expect[@]} expected files, nothing under /etc"

    # The binary runs, is stripped, and says its version.
    dpkg-deb -x "$deb" "$work/$pkg"
    "$work/$pkg/usr/bin/$bin" --version | grep -q "^$bin $version" || fail "$pkg: $bin --version"
    if file "$work/$pkg/usr/bin/$bin" 2>/dev/null | grep -q 'with debug_info'; then
        fail "$pkg: /usr/bin/$bin is not stripped"
    fi
    pass "$pkg: $("$work/$pkg/usr/bin/$bin" --version)"

    # Maintainer scripts: present, executable, valid sh, and none starts a daemon on its own.
    dpkg-deb -e "$deb" "$work/$pkg.control"
    for script in postinst prerm postrm; do
        f="$work/$pkg.control/$script"
        [ -x "$f" ] || fail "$pkg: $script missing or not executable"
        sh -n "$f" || fail "$pkg: $script is not valid sh"
    done
    if grep -E 'deb-systemd-invoke +(start|restart)' "$work/$pkg.control/postinst"; then
        fail "$pkg: postinst starts the daemon unconditionally"
    fi
    pass "$pkg: maintainer scripts"

    # The unit: hardened (exposure score), Type=notify, the reload through the daemon.
    unit="$work/$pkg/usr/lib/systemd/system/$pkg.service"
    for setting in "Type=notify" "ExecReload=/usr/bin/$bin reload --config /etc/causeway/$bin.toml" \
        "ConditionPathExists=/etc/causeway/$bin.toml" "User=$pkg" "RuntimeDirectory=$pkg" \
        "CapabilityBoundingSet=" "Restart=on-failure"; do
        grep -qxF "$setting" "$unit" || fail "$pkg.service lacks $setting"
    done
    score=$(systemd-analyze security --offline=true "$unit" 2>/dev/null | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')
    systemd-analyze security --offline=true --threshold="$MAX_EXPOSURE" "$unit" >/dev/null 2>&1 ||
        fail "$pkg.service: exposure $score is above $((MAX_EXPOSURE / 10)).0"
    pass "$pkg.service: exposure level $score (at most 2.0)"
done

# Install both, as an administrator would, on this machine.
for bin in edge core; do
    [ ! -e "/etc/causeway/$bin.toml" ] || fail "/etc/causeway/$bin.toml exists here already: this check needs a machine without Causeway configured"
done
dpkg -i "target/debian/causeway-edge_${version}-1_amd64.deb" "target/debian/causeway-core_${version}-1_amd64.deb" >"$work/install.log" 2>&1 ||
    fail "dpkg -i: $(cat "$work/install.log")"
for bin in edge core; do
    pkg=causeway-$bin
    getent passwd "$pkg" >/dev/null || fail "postinst did not create the user $pkg"
    getent group "$pkg" >/dev/null || fail "postinst did not create the group $pkg"
    shell=$(getent passwd "$pkg" | cut -d: -f7)
    [[ "$shell" == */nologin || "$shell" == */false ]] || fail "$pkg has a login shell: $shell"
    [ -L "/etc/systemd/system/multi-user.target.wants/$pkg.service" ] || fail "$pkg.service is not enabled"
    systemd-analyze verify "/usr/lib/systemd/system/$pkg.service" >"$work/verify.log" 2>&1 ||
        fail "systemd-analyze verify $pkg.service: $(cat "$work/verify.log")"
    if pgrep -x "$bin" >/dev/null; then
        fail "an $bin process runs after the install, with no config of the administrator's"
    fi
    man -w "$bin" >/dev/null 2>&1 || fail "man $bin does not find the page"
    pass "$pkg installed: user and group $pkg (shell $shell), unit enabled and verified, no daemon started, man $bin"
done
[ -d /etc/causeway ] || fail "postinst did not create /etc/causeway"

# An upgrade over the installed packages keeps the user and the enabled unit.
dpkg -i "target/debian/causeway-edge_${version}-1_amd64.deb" >"$work/upgrade.log" 2>&1 || fail "upgrade: $(cat "$work/upgrade.log")"
[ -L /etc/systemd/system/multi-user.target.wants/causeway-edge.service ] || fail "the upgrade disabled causeway-edge.service"
pass "upgrade over the installed package"

# Remove, then purge.
dpkg -r causeway-edge causeway-core >"$work/remove.log" 2>&1 || fail "dpkg -r: $(cat "$work/remove.log")"
for bin in edge core; do
    [ ! -e "/usr/bin/$bin" ] || fail "/usr/bin/$bin is left after dpkg -r"
    [ "$(readlink "/etc/systemd/system/causeway-$bin.service")" = /dev/null ] ||
        fail "causeway-$bin.service is not masked after dpkg -r (a stray start would find no binary)"
done
dpkg -P causeway-edge causeway-core >"$work/purge.log" 2>&1 || fail "dpkg -P: $(cat "$work/purge.log")"
for bin in edge core; do
    [ ! -e "/etc/systemd/system/multi-user.target.wants/causeway-$bin.service" ] &&
        [ ! -e "/var/lib/systemd/deb-systemd-helper-enabled/causeway-$bin.service.dsh-also" ] &&
        [ ! -e "/etc/systemd/system/causeway-$bin.service" ] ||
        fail "causeway-$bin.service is still enabled or masked after the purge"
    [ ! -e "/usr/lib/systemd/system/causeway-$bin.service" ] || fail "the unit is left after the purge"
done
pass "removed and purged: no binary, no unit, no enablement left"
echo "check.sh: OK: both packages"
