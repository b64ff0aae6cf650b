#!/usr/bin/env bash
# dev-certs.sh — make a CA and TLS certificates for a local Event Catcher cluster and tests.
#
# Writes into --out DIR (default ./certs):
#   ca.pem, ca.key            the CA (tls.ca_file of every process)
#   <node>.pem, <node>.key    one per node ID: CN and a DNS SAN are the node ID, so a peer can
#                             read the node's identity from its certificate
#   gateway.pem, gateway.key  the gateway
#   client.pem, client.key    a client (SDK, ec-client, ec-console) for mutual TLS
# Every server certificate is valid for localhost and 127.0.0.1 and may act as client too
# (extendedKeyUsage serverAuth, clientAuth), since nodes and gateways also dial others.
# Keys are ECDSA P-256. For development only: the CA key sits next to the certificates.
# Needs only the openssl command line. Exit codes: 0 done, 1 openssl failed, 2 bad usage.
set -euo pipefail
export LC_ALL=C

PROG="$(basename "$0")"
OUT="certs"
NODES="node1,node2,node3"
DAYS=825
ID_RULE="1-128 characters from [A-Za-z0-9._-], and not '.' or '..'"

usage() {
    cat <<EOF
Usage: $PROG [--out DIR] [--nodes ID[,ID...]] [--days N]

  --out DIR      where to write (default: certs); existing files there are replaced
  --nodes IDS    node IDs to make certificates for (default: node1,node2,node3); $ID_RULE
  --days N       validity in days (default: 825)

Then point each process at its files, e.g. for node1:
  EVENT_CATCHER_TLS_CERT_FILE=certs/node1.pem EVENT_CATCHER_TLS_KEY_FILE=certs/node1.key \\
  EVENT_CATCHER_TLS_CA_FILE=certs/ca.pem ec-node --id node1
EOF
}

die_usage() {
    echo "$PROG: $1" >&2
    echo "Run '$PROG --help' for usage." >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case "$1" in
        --out=*) OUT="${1#*=}" ;;
        --out) [ $# -ge 2 ] || die_usage "--out needs a directory"; OUT="$2"; shift ;;
        --nodes=*) NODES="${1#*=}" ;;
        --nodes) [ $# -ge 2 ] || die_usage "--nodes needs node IDs"; NODES="$2"; shift ;;
        --days=*) DAYS="${1#*=}" ;;
        --days) [ $# -ge 2 ] || die_usage "--days needs a number"; DAYS="$2"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die_usage "unknown argument '$1'" ;;
    esac
    shift
done

[[ "$DAYS" =~ ^[1-9][0-9]*$ ]] || die_usage "--days must be a positive number, not '$DAYS'"
IFS=',' read -r -a NODE_IDS <<< "$NODES"
[ "${#NODE_IDS[@]}" -gt 0 ] || die_usage "--nodes names no node"
for id in "${NODE_IDS[@]}"; do
    if ! [[ "$id" =~ ^[A-Za-z0-9._-]{1,128}$ ]] || [ "$id" = "." ] || [ "$id" = ".." ]; then
        die_usage "node ID '$id' is not valid: $ID_RULE"
    fi
    case "$id" in ca|gateway|client) die_usage "node ID '$id' would overwrite the $id files" ;; esac
done

command -v openssl >/dev/null || { echo "$PROG: openssl is not installed" >&2; exit 1; }
mkdir -p "$OUT"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

run() {
    if ! "$@" >"$WORK/log" 2>&1; then
        echo "$PROG: openssl failed: $*" >&2
        cat "$WORK/log" >&2
        exit 1
    fi
}

run openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$OUT/ca.key"
run openssl req -x509 -new -key "$OUT/ca.key" -sha256 -days "$DAYS" \
    -subj "/O=Event Catcher dev/CN=Event Catcher dev CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$OUT/ca.pem"

# issue NAME CN SAN EKU: NAME.key and NAME.pem signed by the CA.
issue() {
    local name="$1" cn="$2" san="$3" eku="$4"
    cat > "$WORK/$name.ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=$eku
subjectAltName=$san
EOF
    run openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$OUT/$name.key"
    run openssl req -new -key "$OUT/$name.key" -subj "/O=Event Catcher dev/CN=$cn" \
        -out "$WORK/$name.csr"
    run openssl x509 -req -in "$WORK/$name.csr" -CA "$OUT/ca.pem" -CAkey "$OUT/ca.key" \
        -CAcreateserial -CAserial "$WORK/ca.srl" -days "$DAYS" -sha256 \
        -extfile "$WORK/$name.ext" -out "$OUT/$name.pem"
    chmod 600 "$OUT/$name.key"
}

LOCAL="DNS:localhost,IP:127.0.0.1,IP:::1"
for id in "${NODE_IDS[@]}"; do
    issue "$id" "$id" "DNS:$id,$LOCAL" "serverAuth,clientAuth"
done
issue gateway gateway "DNS:gateway,$LOCAL" "serverAuth,clientAuth"
issue client client "DNS:client" "clientAuth"
chmod 600 "$OUT/ca.key"

echo "wrote a CA and certificates for ${NODE_IDS[*]}, gateway and client to $OUT/"
