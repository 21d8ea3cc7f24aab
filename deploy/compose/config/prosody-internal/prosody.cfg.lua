-- prosody-internal: the internal Prosody 13 of example.com (+ MUC conference.example.com), on
-- network inside (10.231.1.11). ALL its outgoing s2s goes to core:5269 through
-- mod_causeway_route (mounted from deploy/prosody at /usr/local/lib/causeway/prosody).
-- Mounted at /etc/causeway/prosody.cfg.lua; certificates from /pki; accounts from
-- /etc/causeway/accounts.txt (created by the image's entrypoint before Prosody starts).

pidfile = "/run/prosody/prosody.pid"
data_path = "/var/lib/prosody"
log = { { levels = { min = "info" }, to = "console" } }

interfaces = { "*" }
c2s_ports = { 5222 }
s2s_ports = { 5269 }
c2s_direct_tls_ports = { }
s2s_direct_tls_ports = { }

authentication = "internal_hashed"
storage = "internal"

-- s2s: STARTTLS required (the default), authenticated with dialback: core's certificate is not
-- one Prosody can verify for the remote domains, so s2s_secure_auth must stay false.
s2s_require_encryption = true
s2s_secure_auth = false

-- Outgoing s2s, all of it (MUC traffic and dialback verifications included), to core.
plugin_paths = { "/usr/local/lib/causeway/prosody" }
causeway_route_host = "core"
causeway_route_port = 5269

certificates = "/pki"

-- DNS through the container's resolver (Docker's, forwarding to dns-inside only); libunbound
-- must not treat the test. TLD as an empty local zone.
unbound = { hoststxt = false; options = { ["local-zone:"] = "test. transparent" } }

modules_enabled = {
	"roster"; "saslauth"; "tls"; "dialback"; "disco"; "ping"; "admin_shell";
	"causeway_route";
}

VirtualHost "example.com"
	ssl = { certificate = "/pki/example.com.crt"; key = "/pki/example.com.key" }

Component "conference.example.com" "muc"
	ssl = { certificate = "/pki/conference.example.com.crt"; key = "/pki/conference.example.com.key" }
	muc_room_locking = false
