#!/usr/bin/env bash
# Makes a CA and server and client certificates in QEMU's tls-creds-x509
# layout (ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem,
# client-key.pem) in DIR, for HOSTS (subjectAltName entries, e.g.
# IP:127.0.0.1,DNS:localhost). For tests and trying TLS out; a fleet uses
# its own PKI.
set -euo pipefail
dir=${1:?usage: tls-certs.sh DIR [SAN]}
san=${2:-IP:127.0.0.1,DNS:localhost}
mkdir -p "$dir"
cd "$dir"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
key ca-key.pem
openssl req -x509 -new -key ca-key.pem -out ca-cert.pem -days 30 -subj "/CN=vmm test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
for who in server client; do
    key "$who-key.pem"
    openssl req -new -key "$who-key.pem" -out "$who.csr" -subj "/C=GB/O=vmm tests/CN=vmm $who"
    eku=$([ "$who" = server ] && echo serverAuth || echo clientAuth)
    printf 'subjectAltName=%s\nextendedKeyUsage=%s\nbasicConstraints=CA:FALSE\n' "$san" "$eku" > "$who.ext"
    openssl x509 -req -in "$who.csr" -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial \
        -out "$who-cert.pem" -days 30 -extfile "$who.ext" 2>/dev/null
    rm -f "$who.csr" "$who.ext"
done
rm -f ca-cert.srl
