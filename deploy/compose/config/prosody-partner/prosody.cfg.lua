-- prosody-partner: partner.test (Prosody 13, trixie) + MUC conference.partner.test, on network
-- internet (10.231.3.31). It finds other servers through dns-public (SRV, then A).
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

-- s2s: STARTTLS required (the default). It trusts the Lab Public CA (cafile below), so a peer
-- whose certificate it accepts authenticates with SASL EXTERNAL, the others with dialback
-- (s2s_secure_auth false): which one each peer got shows whether Prosody accepts its
-- certificate (the edge's carries serverAuth only, as public CAs issue them since 2026).
s2s_require_encryption = true
s2s_secure_auth = false

certificates = "/pki"

-- DNS through the container's resolver (Docker's, forwarding to dns-public only); libunbound
-- must not treat the test. TLD as an empty local zone.
unbound = { hoststxt = false; options = { ["local-zone:"] = "test. transparent" } }

modules_enabled = {
	"roster"; "saslauth"; "tls"; "dialback"; "disco"; "ping"; "admin_shell";
}

VirtualHost "partner.test"
	ssl = { certificate = "/pki/partner.test.crt"; key = "/pki/partner.test.key"; cafile = "/pki/public-ca.crt" }

Component "conference.partner.test" "muc"
	ssl = { certificate = "/pki/conference.partner.test.crt"; key = "/pki/conference.partner.test.key"; cafile = "/pki/public-ca.crt" }
	muc_room_locking = false
