#!/bin/bash
# Create the accounts listed in /etc/causeway/accounts.txt (lines "user@domain password"; blank
# lines and # comments ignored), then run Prosody in the foreground (it is PID 1's replacement:
# `docker stop` sends it SIGTERM directly).
set -euo pipefail
config=${PROSODY_CONFIG:-/etc/causeway/prosody.cfg.lua}
accounts=${XMPP_ACCOUNTS_FILE:-/etc/causeway/accounts.txt}
[ "$(id -u)" != 0 ] || { echo "causeway-prosody: Prosody refuses root; run as prosody" >&2; exit 1; }
[ -r "$config" ] || { echo "causeway-prosody: no configuration at $config" >&2; exit 1; }

if [ -r "$accounts" ]; then
    while read -r jid password _; do
        case "$jid" in ''|'#'*) continue ;; esac
        user=${jid%@*} host=${jid#*@}
        # Offline registration writes straight to the data store; re-registering an existing
        # account (a restarted container) just resets its password.
        prosodyctl --config "$config" register "$user" "$host" "$password" </dev/null >/dev/null \
            || { echo "causeway-prosody: cannot create $jid" >&2; exit 1; }
        echo "causeway-prosody: account $jid ready"
    done <"$accounts"
fi

exec prosody --config "$config" -F "$@"
