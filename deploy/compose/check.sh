#!/usr/bin/env bash
# The checks of a running Causeway deployment, in one script: the smoke test (users on both
# sides exchange messages, presence and group chat: smoke/smoke.py) and the firewall model
# (firewall.sh). The container lab runs it (run.sh); any deployment whose hosts a command
# prefix can reach can run it too:
#
#   RUN_CLIENT='<command that runs smoke/smoke.py where the users' servers are reachable>'
#   RUN_IN='<command prefix that runs a command in a host: edge, core, prosody-internal, prosody-partner>'
#   deploy/compose/check.sh
#
# Progress goes to stderr; the last line on stdout is the smoke test's JSON summary. Exit 0
# when both pass.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${RUN_CLIENT:?set RUN_CLIENT to the command that runs the smoke test}"
: "${RUN_IN:?set RUN_IN to the command prefix that runs a command in a host}"

status=0
summary=$($RUN_CLIENT | tee /dev/stderr | tail -n 1) || status=1
RUN_IN="$RUN_IN" "$here/firewall.sh" >&2 || status=1
echo "$summary"
exit "$status"
