#!/usr/bin/env bash
# The container lab: inside, DMZ and internet as three Docker networks, today's and last
# year's XMPP servers on them, core and edge between (deploy/compose/compose.yaml; README,
# "Container lab").
#
#   deploy/compose/run.sh          build what is missing, start, run the smoke test and the
#                                  firewall checks, report, stop and remove everything
#   deploy/compose/run.sh --stay   the same, but leave it running to look around
#   deploy/compose/run.sh down     stop and remove its containers, networks and volumes
#
# Needs Docker Engine and Compose (v2 `docker compose` or v1 `docker-compose`), and cargo for
# the binaries. Where nothing can be pulled, the Debian base images are built locally first
# (base-images.sh); set CAUSEWAY_BASE_BOOKWORM=debian:bookworm-slim and
# CAUSEWAY_BASE_TRIXIE=debian:trixie-slim to use pulled ones instead.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

die() { echo "compose lab: $*" >&2; exit 1; }
step() { echo "== $*"; }

command -v docker >/dev/null ||
    die "Docker is missing: this lab needs Docker Engine with Compose (deploy/lab/run.sh is the lab for machines without Docker)"
docker info >/dev/null 2>&1 || die "the Docker daemon does not answer (is it running? are you allowed to use it?)"
if docker compose version >/dev/null 2>&1; then
    compose=(docker compose -f "$here/compose.yaml")
elif command -v docker-compose >/dev/null; then
    compose=(docker-compose -f "$here/compose.yaml")
else
    die "no Docker Compose: install the compose plugin (docker compose) or docker-compose"
fi
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-causeway-lab}

down() { "${compose[@]}" --profile tools down -v --remove-orphans >/dev/null 2>&1; }

stay=false
case "${1:-}" in
    down) down; echo "compose lab: removed"; exit 0 ;;
    --stay) stay=true ;;
    "") ;;
    *) die "usage: run.sh [--stay | down]" ;;
esac

started=$(date +%s)
# Base images: local ones unless pulled ones were asked for.
if [ -z "${CAUSEWAY_BASE_BOOKWORM:-}" ] || [ -z "${CAUSEWAY_BASE_TRIXIE:-}" ]; then
    step "base images"
    "$here/base-images.sh"
fi

step "binaries (cargo build --release)"
(cd "$here/../.." && cargo build --release --locked --bin edge --bin core 2>&1 | tail -n 1)
mkdir -p "$here/bin"
for b in edge core; do
    # Stripped: the image needs no debug info (the host's binaries keep it).
    strip -o "$here/bin/$b.new" "$here/../../target/release/$b"
    if cmp -s "$here/bin/$b.new" "$here/bin/$b"; then rm "$here/bin/$b.new"; else mv "$here/bin/$b.new" "$here/bin/$b"; fi
done

step "images"
"${compose[@]}" --profile tools build -q

# From here on, anything that fails leaves the logs and stops the lab (unless --stay).
report_failure() {
    echo "compose lab: FAILED; the last lines of edge and core:" >&2
    "${compose[@]}" logs --no-color --tail 30 edge core >&2 2>/dev/null || true
    $stay || down
}
trap report_failure ERR
trap 'echo "compose lab: interrupted"; $stay || down; exit 130' INT TERM

down
step "certificates (pki-init)"
"${compose[@]}" --profile tools run --rm pki-init

step "services"
"${compose[@]}" up -d
# Wait until every service is healthy (Compose v1 has no `up --wait`).
deadline=$(( $(date +%s) + 180 ))
while :; do
    unhealthy=()
    for id in $("${compose[@]}" ps -q); do
        s=$(docker inspect -f '{{.Name}} {{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id")
        case "$s" in *" healthy"|*" running") ;; *) unhealthy+=("$s") ;; esac
    done
    [ ${#unhealthy[@]} = 0 ] && break
    [ "$(date +%s)" -lt "$deadline" ] || { echo "not healthy after 180 s: ${unhealthy[*]}" >&2; false; }
    sleep 2
done
exec_in() { "${compose[@]}" exec -T "$@"; }
deadline=$(( $(date +%s) + 120 ))
# The pair is up when core has found its nodes, the edge has its core, and the edge knows the
# chat node alias core discovers from the internal Prosody (core may start before Prosody
# answers: discovery then tries again within seconds).
until exec_in edge edge status --config /etc/causeway/edge.toml 2>/dev/null | grep -q 'conference.example.com' &&
      exec_in core core status --config /etc/causeway/core.toml >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || {
        exec_in edge edge status --config /etc/causeway/edge.toml >&2 || true
        exec_in core core status --config /etc/causeway/core.toml >&2 || true
        false
    }
    sleep 2
done
up_secs=$(( $(date +%s) - started ))

step "smoke test and firewall model"
smoke=$(RUN_CLIENT="${compose[*]} --profile tools run --rm client" \
    RUN_IN="${compose[*]} exec -T" "$here/check.sh")
conns=$(exec_in edge edge connections --config /etc/causeway/edge.toml --json)
trap - ERR

python3 - "$smoke" "$up_secs" "$conns" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
conns = json.loads(sys.argv[3])
msgs = [x for x in r["results"] if x["check"] == "message"]
print(f"""
container lab: OK (up and federating {sys.argv[2]} s after the start)
  networks   inside 10.231.1.0/24 (internal) | dmz 10.231.2.0/24 | internet 10.231.3.0/24
  path       internal server -> core (inside) -> tunnel (dmz, core dials out) -> edge -> partner (internet)
  federated  {len(msgs)} messages, {sum(1 for x in r['results'] if x['check'] == 'presence')} presence subscriptions, {sum(1 for x in r['results'] if x['check'] == 'groupchat')} group chat rounds
  latency    message median {sorted(x['ms'] for x in msgs)[len(msgs)//2]:.0f} ms, worst {max(x['ms'] for x in msgs):.0f} ms (first contacts include dialback)""")
# How each partner and the edge authenticated each other (the edge's and partner.test's
# certificates carry serverAuth only; every server trusts the Lab Public CA): SASL EXTERNAL
# means the certificate was accepted, dialback that it was not (or not offered).
software = {"partner.test": "Prosody 13", "partner2.test": "ejabberd 24.12",
            "partner3.test": "Prosody 0.12", "partner4.test": "ejabberd 23.01"}
auth = {}
for c in conns:
    for p in c["pairs"]:
        if p["local"] == "example.com" and p["remote"] in software:
            auth[(p["remote"], c["direction"])] = c["auth"]
print("  certificates (edge: serverAuth only)   partner accepts the edge's  edge accepts the partner's")
for d, name in software.items():
    usage = "serverAuth only" if d == "partner.test" else "serverAuth+clientAuth"
    print(f"    {d:<14} {name:<15} {auth.get((d, 'outgoing'), '-'):<27} {auth.get((d, 'incoming'), '-')} ({usage})")
PY

if $stay; then
    cat <<EOF
staying up. Look around:
  ${compose[*]} exec edge edge status --config /etc/causeway/edge.toml
  ${compose[*]} exec edge edge connections --config /etc/causeway/edge.toml
  ${compose[*]} exec core core status --config /etc/causeway/core.toml
  ${compose[*]} logs -f edge core
stop and remove it: deploy/compose/run.sh down
EOF
else
    down
    echo "compose lab: stopped and removed"
fi
