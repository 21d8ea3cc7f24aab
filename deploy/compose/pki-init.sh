#!/bin/sh
# The lab's certificates and secrets, generated at start into the `pki` volume (mounted at
# /pki) by the one-shot service pki-init; nothing is baked into an image. Idempotent: a
# volume that has them is left as it is (FORCE=1 makes new ones).
#
# * /pki/causeway/: the traversal PKI (CA, the edge's server and core's client certificate)
#   and core's internal s2s certificate, from `edge pki init`; the dialback secrets.
# * /pki/<domain>.crt|key: federation certificates for the edge and every server, issued by
#   "Lab Public CA" (public-ca.crt), which the edge and the partner servers trust (the
#   internal servers do not: they speak only to core, with dialback). The edge's (example.com
#   and its aliases) and partner.test's carry serverAuth only, as public CAs issue them since
#   2026; the others serverAuth and clientAuth. Whether a server accepts such a certificate
#   from a peer shows in how the peer authenticates: SASL EXTERNAL, or dialback.
#
# Keys are readable by group 5269 (causeway-pki), of which every lab image's server user is a
# member.
set -eu
cd /pki
if [ -f .complete ] && [ -z "${FORCE:-}" ]; then
    echo "pki-init: /pki is complete (FORCE=1 to make new certificates)"
    exit 0
fi
rm -rf /pki/* /pki/.complete

edge pki init --dir /pki/causeway --force \
    --edge-name edge.example.com \
    --core-name core1.example.com \
    --core-s2s-name core1.example.com --core-s2s-name core \
    --domain example.com --domain conference.example.com --domain internal2.example \
    >/dev/null
secret() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }
secret >/pki/causeway/dialback-secret
secret >/pki/causeway/core-dialback-secret

# Lab Public CA.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj "/CN=Lab Public CA/O=Causeway lab" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout public-ca.key -out public-ca.crt 2>/dev/null

# issue NAME USAGE SAN...: /pki/NAME.crt|key for the DNS names SAN..., extended key usage USAGE.
issue() {
    name=$1 usage=$2
    shift 2
    sans=$(printf 'DNS:%s,' "$@")
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
        -keyout "$name.key" -out "$name.csr" 2>/dev/null
    openssl x509 -req -in "$name.csr" -CA public-ca.crt -CAkey public-ca.key -days 30 \
        -extfile /dev/stdin -out "$name.crt" 2>/dev/null <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=$usage
subjectAltName=${sans%,}
EXT
    rm -f "$name.csr"
}
# The edge's federation certificate: every federated domain and chat node alias.
issue edge-federation serverAuth example.com conference.example.com internal2.example
# The internal servers' own (they speak only to core).
issue example.com serverAuth,clientAuth example.com
issue conference.example.com serverAuth,clientAuth conference.example.com
issue internal2.example serverAuth,clientAuth internal2.example
# Partners: partner.test (Prosody 13) as a public CA issues them now, the others as before.
issue partner.test serverAuth partner.test
issue conference.partner.test serverAuth conference.partner.test
issue partner2.test serverAuth,clientAuth partner2.test
issue partner3.test serverAuth,clientAuth partner3.test
issue partner4.test serverAuth,clientAuth partner4.test
rm -f public-ca.key

cp edge-federation.crt edge-federation.key causeway/
chgrp -R 5269 /pki
chmod 0640 /pki/*.key /pki/causeway/*.key /pki/causeway/*secret
chmod 0644 /pki/*.crt /pki/causeway/*.crt
chmod 0750 /pki/causeway
chmod 0755 /pki
touch .complete
echo "pki-init: certificates in /pki: $(ls /pki/*.crt | wc -l) federation, $(ls /pki/causeway/*.crt | wc -l) Causeway"
