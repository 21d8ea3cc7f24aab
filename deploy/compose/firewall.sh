#!/usr/bin/env bash
# The firewall model of a Causeway deployment, checked from inside its hosts: every
# assertion is a TCP connection attempt that must succeed or must fail, or a list of
# listening sockets. Used by the container lab (deploy/compose/run.sh); the hosts can be
# anything a command prefix can run a shell in:
#
#   RUN_IN='docker-compose -f compose.yaml exec -T' deploy/compose/firewall.sh
#
# runs `$RUN_IN <host> bash -c ...` for the hosts edge, core, prosody-internal and
# prosody-partner. Addresses default to the lab's; override with the variables below.
# Exit 0 when every assertion holds; the report names each one.
set -uo pipefail

RUN_IN=${RUN_IN:?set RUN_IN to the command prefix that runs a command in a host}
CORE_INSIDE=${CORE_INSIDE:-10.231.1.10}      # core's s2s address (inside)
CORE_DMZ=${CORE_DMZ:-10.231.2.10}            # core's address on the DMZ network
EDGE_DMZ=${EDGE_DMZ:-10.231.2.20}            # the edge's tunnel address
EDGE_PUBLIC=${EDGE_PUBLIC:-10.231.3.20}      # the edge's federation address
INTERNAL=${INTERNAL:-10.231.1.11 10.231.1.12}  # internal XMPP servers
PARTNER=${PARTNER:-10.231.3.31}              # a partner server

failures=0
checked=0

# probe HOST EXPECT TARGET...: from HOST, connect to each TARGET (ip:port) at once; EXPECT
# is "open" or "closed" (refused, unreachable or no answer within 3 s).
probe() {
    local host=$1 expect=$2
    shift 2
    local script='
        for t in "$@"; do
            ( if timeout 3 bash -c "exec 3<>/dev/tcp/${t%:*}/${t#*:}" 2>/dev/null;
              then echo "$t open"; else echo "$t closed"; fi ) &
        done
        wait'
    local out
    out=$($RUN_IN "$host" bash -c "$script" probe "$@" 2>&1) || true
    local t got
    for t in "$@"; do
        got=$(awk -v t="$t" '$1 == t { print $2 }' <<<"$out")
        checked=$((checked + 1))
        if [ "$got" = "$expect" ]; then
            printf '  OK   %-16s -> %-20s %s\n' "$host" "$t" "$got"
        else
            printf '  FAIL %-16s -> %-20s %s (must be %s)\n' "$host" "$t" "${got:-no answer: $out}" "$expect"
            failures=$((failures + 1))
        fi
    done
}

# listening HOST ALLOWED_REGEX: every TCP socket HOST listens on has a local address matching
# ALLOWED_REGEX (read from /proc: no tool needed in the host).
listening() {
    local host=$1 allowed=$2
    local script='
        for f in /proc/net/tcp /proc/net/tcp6; do
            [ -r "$f" ] || continue
            while read -r _ local _ state _; do
                [ "$state" = 0A ] || continue
                echo "$f $local"
            done < <(tail -n +2 "$f")
        done'
    local out line addr ip port bad=0
    out=$($RUN_IN "$host" bash -c "$script" 2>&1) || true
    while read -r f addr; do
        [ -n "${addr:-}" ] || continue
        port=$((16#${addr#*:}))
        if [ "$f" = /proc/net/tcp ]; then
            local h=${addr%:*}
            ip="$((16#${h:6:2})).$((16#${h:4:2})).$((16#${h:2:2})).$((16#${h:0:2}))"
        else
            ip="[${addr%:*}]"
        fi
        if ! [[ "$ip:$port" =~ $allowed ]]; then
            printf '  FAIL %-16s listens on %s:%s\n' "$host" "$ip" "$port"
            bad=1
        fi
    done <<<"$out"
    checked=$((checked + 1))
    if [ "$bad" = 0 ]; then
        printf '  OK   %-16s listens only on %s\n' "$host" "$allowed"
    else
        failures=$((failures + 1))
    fi
}

echo "firewall model:"
# core dials out to the edge's tunnel port, and that is the only way across.
probe core open "$EDGE_DMZ:7400"
# core binds nothing on its DMZ address (only inside and loopback), and the edge finds
# nothing there.
listening core "^(${CORE_INSIDE//./\\.}|127\\.[0-9.]+):[0-9]+$"
probe edge closed "$CORE_DMZ:5269" "$CORE_DMZ:5222" "$CORE_DMZ:7400" "$CORE_DMZ:22"
# From the edge: no internal server and no core s2s port.
for ip in $INTERNAL; do probe edge closed "$ip:5269" "$ip:5222"; done
probe edge closed "$CORE_INSIDE:5269"
# From a partner: only the edge's federation port.
probe prosody-partner open "$EDGE_PUBLIC:5269"
probe prosody-partner closed "$EDGE_PUBLIC:7400" "$EDGE_DMZ:7400" "$CORE_DMZ:5269" "$CORE_INSIDE:5269"
for ip in $INTERNAL; do probe prosody-partner closed "$ip:5269"; done
# The internal servers reach core, and nothing on the internet.
probe prosody-internal open "$CORE_INSIDE:5269"
probe prosody-internal closed "$PARTNER:5269" "$EDGE_PUBLIC:5269"

echo "firewall model: $((checked - failures)) of $checked assertions hold"
[ "$failures" = 0 ]
