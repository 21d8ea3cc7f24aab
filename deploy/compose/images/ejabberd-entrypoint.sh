#!/bin/bash
# Run ejabberd in the foreground (`ejabberdctl foreground`), create the accounts listed in
# /etc/causeway/accounts.txt (lines "user@domain password"; blank lines and # comments ignored)
# once it has started, then mark the container ready for the health check. SIGTERM (docker
# stop) stops ejabberd cleanly.
set -euo pipefail
config=${EJABBERD_CONFIG:-/etc/causeway/ejabberd.yml}
accounts=${XMPP_ACCOUNTS_FILE:-/etc/causeway/accounts.txt}
ready=/run/ejabberd/causeway-ready
[ -r "$config" ] || { echo "causeway-ejabberd: no configuration at $config" >&2; exit 1; }
rm -f "$ready"

cookie=/var/lib/ejabberd/.erlang.cookie
if [ ! -s "$cookie" ]; then
    (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$cookie")
fi

ctl() { ejabberdctl --config "$config" "$@" </dev/null; }

ejabberdctl --config "$config" foreground </dev/null &
pid=$!
stop() {
    ctl stop >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" || true
    exit 0
}
trap stop TERM INT

# `ejabberdctl started` waits (up to about a minute) for the node to be up.
until ctl started >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || { wait "$pid"; exit $?; }
    sleep 1
done

if [ -r "$accounts" ]; then
    while read -r jid password _; do
        case "$jid" in ''|'#'*) continue ;; esac
        user=${jid%@*} host=${jid#*@}
        if out=$(ctl register "$user" "$host" "$password" 2>&1); then
            echo "causeway-ejabberd: account $jid ready"
        elif [[ $out == *"already registered"* ]]; then
            # A restarted container keeps its Mnesia spool (changing a password needs
            # mod_admin_extra, which the lab does not load): recreate the container to reset.
            echo "causeway-ejabberd: account $jid exists (kept as it is)"
        else
            echo "causeway-ejabberd: cannot create $jid: $out" >&2
            stop
        fi
    done <"$accounts"
fi
touch "$ready"
echo "causeway-ejabberd: ready"

# `wait` returns early when a trapped signal arrives; the trap then stops ejabberd.
wait "$pid"
