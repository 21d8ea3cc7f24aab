#!/usr/bin/env bash
# The paired deployment on two hosts, tested across network namespaces (issue 13): three hosts
# made with `ip netns` and veth pairs, firewalls as nftables rules, the daemons installed from
# the Debian packages and started the way their units start them (dedicated users, config in an
# /etc-like tree, the runtime directory), a real Prosody inside and a partner Prosody outside.
#
#   inside (cw2-inside)         dmz (cw2-dmz)              internet (cw2-net)
#   Prosody example.com  core ---7400---> edge <---5269---> Prosody partner.test, dnsmasq
#   10.242.1.1                  10.242.1.2 | 10.242.2.2    10.242.2.3
#   client (cw2-client): the users' devices, c2s to each side's Prosody only.
#
# Firewalls: inside -> dmz:7400 only, nothing into inside (but the users' c2s), internet <->
# dmz:5269 only; the dmz host does not forward. Checks: the conversation across (the
# container lab's smoke test, one partner), the firewall model (connections that must fail
# do), /readyz not ready -> ready -> not ready as the tunnel comes and goes, and a reload by
# SIGHUP (as ExecReload's `reload` does through the admin socket) and by `edge reload`.
#   deploy/twohost/run.sh            (as root; .ci/run runs it after the package check)
#   CAUSEWAY_TWOHOST_BREAK=firewall deploy/twohost/run.sh
#                                    (no firewall rules: the firewall checks must fail)
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD

fail() { echo "twohost: FAIL: $*" >&2; exit 1; }
step() { echo "== $*" >&2; }
[ "$(id -u)" = 0 ] || fail "run as root: it creates network namespaces and installs the packages"
for tool in ip nft prosody dnsmasq openssl setpriv python3 curl; do
    command -v "$tool" >/dev/null || fail "$tool is missing (deploy/lab/install-deps.sh; apt-get install nftables curl)"
done
/usr/bin/python3 -c 'import slixmpp' 2>/dev/null || fail "python3-slixmpp is missing (deploy/lab/install-deps.sh)"
ip netns list >/dev/null 2>&1 || fail "this machine cannot create network namespaces"

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
debs=(target/debian/causeway-edge_"$version"-1_amd64.deb target/debian/causeway-core_"$version"-1_amd64.deb)
[ -f "${debs[0]}" ] && [ -f "${debs[1]}" ] || deploy/debian/build.sh >&2

W=$(mktemp -d /tmp/cw-twohost.XXXXXX)
chmod 0755 "$W"
NS=(cw2-inside cw2-dmz cw2-net cw2-client)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for _ in $(seq 1 20); do
        alive=0
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.25
    done
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for n in "${NS[@]}"; do ip netns del "$n" 2>/dev/null || true; rm -rf "/etc/netns/$n"; done
    rm -rf /run/causeway-edge /run/causeway-core
    [ -n "${KEEP:-}" ] || rm -rf "$W"
}
trap cleanup EXIT
for n in "${NS[@]}"; do ip netns del "$n" 2>/dev/null || true; done

step "packages"
dpkg -i "${debs[@]}" >"$W/dpkg.log" 2>&1 || fail "dpkg -i: $(cat "$W/dpkg.log")"

step "hosts and links"
in_ns() { local n=$1; shift; ip netns exec "$n" "$@"; }
for n in "${NS[@]}"; do ip netns add "$n"; in_ns "$n" ip link set lo up; done
link() { # link NS_A IF_A ADDR_A NS_B IF_B ADDR_B
    ip link add "$2" type veth peer name "$5"
    ip link set "$2" netns "$1"; ip link set "$5" netns "$4"
    in_ns "$1" ip addr add "$3/24" dev "$2"; in_ns "$1" ip link set "$2" up
    in_ns "$4" ip addr add "$6/24" dev "$5"; in_ns "$4" ip link set "$5" up
}
link cw2-inside cw2-i-d 10.242.1.1 cw2-dmz cw2-d-i 10.242.1.2
link cw2-dmz cw2-d-n 10.242.2.2 cw2-net cw2-n-d 10.242.2.3
link cw2-client cw2-c-i 10.242.3.100 cw2-inside cw2-i-c 10.242.3.1
link cw2-client cw2-c-n 10.242.4.100 cw2-net cw2-n-c 10.242.4.3
# Routes through the dmz host, which forwards: only its firewall stops traffic between inside
# and the internet (so that the firewall checks below could fail).
in_ns cw2-dmz sysctl -qw net.ipv4.ip_forward=1
in_ns cw2-inside ip route add 10.242.2.0/24 via 10.242.1.2
in_ns cw2-net ip route add 10.242.1.0/24 via 10.242.2.2

step "firewalls"
if [ "${CAUSEWAY_TWOHOST_BREAK:-}" = firewall ]; then
    echo "   (none: CAUSEWAY_TWOHOST_BREAK=firewall)" >&2
else
in_ns cw2-dmz nft -f - <<'EOF'
table inet cw2 {
  chain input { type filter hook input priority 0; policy drop;
    ct state established,related accept
    iif lo accept
    iifname "cw2-d-i" ip saddr 10.242.1.1 tcp dport 7400 accept
    iifname "cw2-d-n" tcp dport 5269 accept
  }
  chain forward { type filter hook forward priority 0; policy drop; }
  chain output { type filter hook output priority 0; policy drop;
    ct state established,related accept
    oif lo accept
    oifname "cw2-d-n" tcp dport 5269 accept
  }
}
EOF
in_ns cw2-inside nft -f - <<'EOF'
table inet cw2 {
  chain input { type filter hook input priority 0; policy drop;
    ct state established,related accept
    iif lo accept
    iifname "cw2-i-c" tcp dport 5222 accept
  }
  chain forward { type filter hook forward priority 0; policy drop; }
  chain output { type filter hook output priority 0; policy drop;
    ct state established,related accept
    oif lo accept
    oifname "cw2-i-d" ip daddr 10.242.1.2 tcp dport 7400 accept
  }
}
EOF
fi

step "certificates and configs in $W/etc/causeway"
etc=$W/etc/causeway
mkdir -p "$etc/pki"
edge pki init --dir "$etc/pki" --edge-name edge.example.com --core-name core1.example.com \
    --domain example.com --domain conference.example.com >/dev/null
echo "twohost-edge-dialback-secret-0001" >"$etc/pki/dialback-secret"
echo "twohost-core-dialback-secret-0001" >"$etc/pki/core-dialback-secret"
cat >"$etc/edge.toml" <<'EOF'
[tunnel]
listen = "10.242.1.2:7400"
cert = "pki/edge-tunnel.crt"
key = "pki/edge-tunnel.key"
ca = "pki/traversal-ca.crt"
keepalive_secs = 2

[[tunnel.cores]]
id = "core1.example.com"
domains = ["example.com", "conference.example.com"]

[federation]
listen = "10.242.2.2:5269"
cert = "pki/edge-federation.crt"
key = "pki/edge-federation.key"
dialback_secret_file = "pki/dialback-secret"

[[static_routes]]
domain = "partner.test"
addresses = ["10.242.2.3:5269"]

[[static_routes]]
domain = "conference.partner.test"
addresses = ["10.242.2.3:5269"]

[dns]
nameservers = ["127.0.0.1:53"]

[policy]
privacy_mode = "allow-list"
allow = ["partner.test", "conference.partner.test"]

[admin]
socket = "/run/causeway-edge/edge.sock"

[metrics]
EOF
cat >"$etc/core.toml" <<'EOF'
[core]
id = "core1.example.com"

[tunnel]
edge = "10.242.1.2:7400"
edge_name = "edge.example.com"
cert = "pki/core-tunnel.crt"
key = "pki/core-tunnel.key"
ca = "pki/traversal-ca.crt"
keepalive_secs = 2

[s2s]
listen = "10.242.1.1:15269"
cert = "pki/core-s2s.crt"
key = "pki/core-s2s.key"
dialback_secret_file = "pki/core-dialback-secret"

[[domains]]
name = "example.com"
nodes = ["10.242.1.1:5269"]
chat_node_aliases = ["conference.example.com"]

[admin]
socket = "/run/causeway-core/core.sock"

[metrics]
EOF
# As the install guide says: root's files, readable by the daemon's group.
chgrp causeway-edge "$etc/edge.toml" "$etc"/pki/edge-* "$etc/pki/dialback-secret"
chgrp causeway-core "$etc/core.toml" "$etc"/pki/core-*
chmod 0640 "$etc"/*.toml "$etc"/pki/*.key "$etc"/pki/*secret
chmod 0644 "$etc"/pki/*.crt
edge check -c "$etc/edge.toml" >&2
core check -c "$etc/core.toml" >&2

step "DNS and XMPP servers"
mkdir -p /etc/netns/cw2-net
ip netns exec cw2-net dnsmasq --keep-in-foreground --no-resolv --no-hosts --bind-interfaces \
    --listen-address=10.242.2.3 --port=53 --pid-file="$W/dnsmasq.pid" \
    --srv-host=_xmpp-server._tcp.example.com,edge.example.com,5269 \
    --srv-host=_xmpp-server._tcp.conference.example.com,edge.example.com,5269 \
    --host-record=edge.example.com,10.242.2.2 >"$W/dnsmasq.log" 2>&1 &
pids+=($!)

# prosody DIR DOMAIN MUC C2S_IP S2S_IP ROUTE DNS: one Prosody with its own config and data.
prosody_instance() {
    local dir=$1 domain=$2 muc=$3 c2s=$4 s2s=$5 route=$6 dns=$7
    mkdir -p "$dir/data" "$dir/certs"
    for host in "$domain" "$muc"; do
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
            -subj "/CN=$host" -addext "subjectAltName=DNS:$host" \
            -keyout "$dir/certs/$host.key" -out "$dir/certs/$host.crt" 2>/dev/null
    done
    local enc=${domain//./%2e}
    mkdir -p "$dir/data/$enc/accounts"
    local route_cfg="" route_mod=""
    if [ -n "$route" ]; then
        route_cfg="plugin_paths = { \"/usr/share/causeway-core/prosody\" }
causeway_route_host = \"${route%:*}\"
causeway_route_port = ${route#*:}"
        route_mod='"causeway_route";'
    fi
    cat >"$dir/prosody.cfg.lua" <<EOF
pidfile = "$dir/prosody.pid"
data_path = "$dir/data"
log = { { levels = { min = "info" }, to = "file", filename = "$dir/prosody.log" } }
c2s_interfaces = { "$c2s" }
s2s_interfaces = { "$s2s" }
c2s_ports = { 5222 }
s2s_ports = { 5269 }
c2s_direct_tls_ports = { }
s2s_direct_tls_ports = { }
http_ports = { }
https_ports = { }
admin_socket = "$dir/prosody.sock"
authentication = "internal_plain"
storage = "internal"
s2s_require_encryption = true
s2s_secure_auth = false
muc_room_locking = false
unbound = { resolvconf = false; hoststxt = false; forward = { "$dns" };
    options = { ["local-zone:"] = "test. transparent" } }
$route_cfg
modules_enabled = { "roster"; "saslauth"; "tls"; "dialback"; "disco"; "ping"; $route_mod }
VirtualHost "$domain"
    ssl = { certificate = "$dir/certs/$domain.crt"; key = "$dir/certs/$domain.key" }
Component "$muc" "muc"
    ssl = { certificate = "$dir/certs/$muc.crt"; key = "$dir/certs/$muc.key" }
EOF
    chown -R prosody:prosody "$dir"
}
account() { # DIR USER DOMAIN
    local f="$1/data/${3//./%2e}/accounts/$2.dat"
    printf 'return {\n\t["password"] = "%s-secret";\n};\n' "$2" >"$f"
    chown prosody:prosody "$f"
}
prosody_instance "$W/prosody-inside" example.com conference.example.com 10.242.3.1 10.242.1.1 10.242.1.1:15269 127.0.0.1@9
account "$W/prosody-inside" alice example.com
prosody_instance "$W/prosody-partner" partner.test conference.partner.test 10.242.4.3 10.242.2.3 "" 10.242.2.3@53
account "$W/prosody-partner" bob partner.test
for side in inside:cw2-inside partner:cw2-net; do
    ip netns exec "${side#*:}" setpriv --reuid=prosody --regid=prosody --init-groups \
        env HOME="$W/prosody-${side%:*}" prosody --config "$W/prosody-${side%:*}/prosody.cfg.lua" \
        >"$W/prosody-${side%:*}.out" 2>&1 &
    pids+=($!)
done

# The daemons, as their units run them: the dedicated user, the runtime directory
# (RuntimeDirectory=, mode 0750), no new privileges.
daemon() { # NS NAME
    local ns=$1 name=$2
    install -d -o "causeway-$name" -g "causeway-$name" -m 0750 "/run/causeway-$name"
    # Started directly (not through a shell function) so that $! is the daemon itself:
    # ip netns exec and setpriv exec into it.
    ip netns exec "$ns" setpriv --reuid="causeway-$name" --regid="causeway-$name" --init-groups --no-new-privs \
        "/usr/bin/$name" run --config "$etc/$name.toml" >>"$W/$name.log" 2>&1 &
    pids+=($!)
    eval "${name}_pid=$!"
}
readyz() { # NS PORT -> "CODE BODY..."
    in_ns "$1" curl -s -m 3 -o "$W/readyz.body" -w '%{http_code}' "http://127.0.0.1:$2/readyz" 2>/dev/null || true
}
until_ready() { # NS PORT CODE WHAT
    for _ in $(seq 1 60); do
        [ "$(readyz "$1" "$2")" = "$3" ] && return 0
        sleep 0.5
    done
    fail "$4: /readyz on $1 never answered $3 (last: $(cat "$W/readyz.body" 2>/dev/null))
$(tail -n 20 "$W"/*.log)"
}

step "edge alone: alive, not ready"
daemon cw2-dmz edge
until_ready cw2-dmz 9464 503 "the edge without core"
grep -q "no core is connected" "$W/readyz.body" || fail "/readyz does not say why: $(cat "$W/readyz.body")"
step "core dials out: both ready"
daemon cw2-inside core
until_ready cw2-dmz 9464 200 "the edge with its core"
until_ready cw2-inside 9465 200 "core with its edge and node"

step "the conversation across (smoke test)"
prosody_version=$(dpkg-query -W -f='${Version}' prosody | cut -d- -f1)
in_ns cw2-client env CAUSEWAY_SMOKE_SERVERS="example.com=10.242.3.1=Prosody $prosody_version (inside),partner.test=10.242.4.3=Prosody $prosody_version" \
    CAUSEWAY_SMOKE_USERS="alice@example.com,bob@partner.test" \
    /usr/bin/python3 deploy/compose/smoke/smoke.py >"$W/smoke.out" 2>&1 || fail "smoke test:
$(cat "$W/smoke.out")
$(tail -n 30 "$W/edge.log" "$W/core.log")"
grep "  OK" "$W/smoke.out" >&2

step "the firewall model"
checks=0
probe() { # NS EXPECT IP PORT WHAT
    local got=closed
    in_ns "$1" timeout 3 bash -c "exec 3<>/dev/tcp/$3/$4" 2>/dev/null && got=open
    checks=$((checks + 1))
    [ "$got" = "$2" ] || fail "$5: $3:$4 from $1 is $got, expected $2"
    echo "  ok $5 ($1 -> $3:$4 $got)" >&2
}
probe cw2-inside open 10.242.1.2 7400 "core reaches the edge's tunnel port"
probe cw2-net open 10.242.2.2 5269 "the internet reaches the edge's federation port"
probe cw2-dmz closed 10.242.1.1 5269 "the edge cannot reach the internal Prosody"
probe cw2-dmz closed 10.242.1.1 15269 "the edge cannot reach core's s2s port"
probe cw2-net closed 10.242.1.2 7400 "the internet cannot reach the tunnel port"
probe cw2-net closed 10.242.1.1 5269 "the internet cannot reach the internal Prosody"
probe cw2-net closed 10.242.1.1 15269 "the internet cannot reach core"
probe cw2-inside closed 10.242.2.3 5269 "inside cannot reach the internet"
probe cw2-inside closed 10.242.2.2 5269 "core cannot reach the edge's federation port"
in_ns cw2-dmz ss -Htln | grep -q "127.0.0.1:9464" || fail "the edge's HTTP listener is not on loopback"

step "reload: SIGHUP, and the admin socket as ExecReload"
before=$(grep -c "configuration reloaded" "$W/edge.log" || true)
kill -HUP "$edge_pid"
for _ in $(seq 1 20); do
    [ "$(grep -c "configuration reloaded" "$W/edge.log" || true)" -gt "$before" ] && break
    sleep 0.25
done
[ "$(grep -c "configuration reloaded" "$W/edge.log" || true)" -gt "$before" ] || fail "SIGHUP did not reload the edge"
in_ns cw2-dmz setpriv --reuid=causeway-edge --regid=causeway-edge --init-groups \
    edge reload --config "$etc/edge.toml" >&2 || fail "edge reload (as ExecReload runs it) failed"
in_ns cw2-inside setpriv --reuid=causeway-core --regid=causeway-core --init-groups \
    core reload --config "$etc/core.toml" >&2 || fail "core reload failed"

step "the tunnel drops (core stops): not ready again"
kill -TERM "$core_pid"
until_ready cw2-dmz 9464 503 "the edge after core stopped"
grep -q "no core is connected" "$W/readyz.body" || fail "/readyz does not say why: $(cat "$W/readyz.body")"
grep -q "drained in" "$W/core.log" || fail "core did not drain on SIGTERM: $(tail -n 20 "$W/core.log")"

echo "twohost: OK: conversation across, $checks firewall checks, reload, readiness both ways"
