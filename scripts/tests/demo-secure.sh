#!/usr/bin/env bash
# demo-secure.sh — end-to-end test of `scripts/demo.sh secure`, as a user would run it.
#
# Starts the secured demo (on the demo's ports, or EC_DEMO_* if set), then checks with the
# real binaries: a reader with the printed credentials gets events (redirect and proxy); a
# client without a client certificate, and one without a token, are refused; the forged
# replica (node2's certificate claiming node3, with the cluster secret) is refused, when
# python3 can run scripts/attacks/forged_replica.py; killing the primary moves the producer
# to a promoted replica; `restart` brings the node back with its TLS flags. Consul runs with
# ACLs (default deny) and HTTPS only: an anonymous read of the mappings is refused, plain
# HTTP is not served, and no binary reports a missing Consul right. Stops the demo
# at the end, whatever happened. Prints "N passed, M failed"; exit 0 only if none failed.
#
# Needs what demo.sh needs (cargo, curl, jq, openssl); uses the demo's fixed Consul serf
# ports, so it cannot run beside another demo.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEMO_SH="$ROOT/scripts/demo.sh"
GATEWAY="127.0.0.1:${EC_DEMO_GATEWAY_PORT:-50051}"
CONSUL="127.0.0.1:${EC_DEMO_CONSUL_PORT:-8500}"
NODE_BASE="${EC_DEMO_NODE_PORT:-50052}"
export RUST_BACKTRACE=0 RUST_LIB_BACKTRACE=0
PASSED=0
FAILED=0
OUT="$(mktemp -d)"

pass() { PASSED=$((PASSED + 1)); printf 'ok    %s\n' "$1"; }
fail() { FAILED=$((FAILED + 1)); printf 'FAIL  %s\n' "$1"; [[ -n "${2:-}" ]] && sed 's/^/      /' "$2" | tail -n 15; }

finish() {
    "$DEMO_SH" down >/dev/null 2>&1
    rm -rf "$OUT"
    echo "$PASSED passed, $FAILED failed"
    [[ $FAILED == 0 ]]
}
trap 'finish; exit $?' EXIT

if ! "$DEMO_SH" secure >"$OUT/up.txt" 2>"$OUT/up.err"; then
    fail "scripts/demo.sh secure starts" "$OUT/up.err"
    exit 1
fi
pass "scripts/demo.sh secure starts"
grep -q 'source .demo/secure/env.sh' "$OUT/up.txt" && grep -q -- '--tls-cert .demo/secure/certs/client.pem' "$OUT/up.txt" &&
    pass "it prints how client commands must look" || fail "it prints how client commands must look" "$OUT/up.txt"

TARGET="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | jq -r .target_directory)"
BIN="$TARGET/${EC_DEMO_PROFILE:-debug}"
CERTS="$ROOT/.demo/secure/certs"
TLS=(--tls-ca "$CERTS/ca.pem" --tls-cert "$CERTS/client.pem" --tls-key "$CERTS/client.key")
# shellcheck source=/dev/null
source "$ROOT/.demo/secure/tokens.env"

# The printed way: the app token from tokens.env, the client certificate.
read_events() {
    EVENT_CATCHER_CLIENT_TOKEN="$EC_DEMO_APP_TOKEN" timeout 30 "$BIN/ec-client" "${TLS[@]}" \
        stream --gateway "$GATEWAY" --data-id demo --from earliest --count 3 "$@"
}
read_events >"$OUT/read.txt" 2>&1 && [[ $(wc -l <"$OUT/read.txt") -ge 3 ]] &&
    pass "a reader with the client certificate and token gets events" ||
    fail "a reader with the client certificate and token gets events" "$OUT/read.txt"
read_events --proxy >"$OUT/proxy.txt" 2>&1 && [[ $(wc -l <"$OUT/proxy.txt") -ge 3 ]] &&
    pass "a reader through the gateway gets events" || fail "a reader through the gateway gets events" "$OUT/proxy.txt"
(
    # shellcheck source=/dev/null
    source "$ROOT/.demo/secure/env.sh"
    timeout 30 "$BIN/ec-client" stream --gateway "$GATEWAY" --data-id demo --from earliest --count 1
) >"$OUT/env.txt" 2>&1 && pass "env.sh sets everything a client needs" || fail "env.sh sets everything a client needs" "$OUT/env.txt"

# Consul: ACLs on with default deny, HTTPS only.
consul_get() {
    local path="$1"
    shift
    curl -s --cacert "$CERTS/ca.pem" "$@" "https://$CONSUL/$path"
}
code="$(consul_get "v1/kv/streaming/data/?recurse" -o "$OUT/anon-list.txt" -w '%{http_code}')"
if [[ "$code" == 403 || "$code" == 404 ]] && ! grep -q 'demo' "$OUT/anon-list.txt"; then
    pass "an anonymous Consul listing of the mappings is refused (HTTP $code, nothing shown)"
else
    fail "an anonymous Consul listing of the mappings is refused (HTTP $code)" "$OUT/anon-list.txt"
fi
code="$(consul_get "v1/kv/streaming/data/demo" -o "$OUT/anon-key.txt" -w '%{http_code}')"
[[ "$code" == 403 ]] && pass "an anonymous Consul read of the mapping of demo is refused (HTTP 403)" ||
    fail "an anonymous Consul read of the mapping of demo is refused (HTTP $code)" "$OUT/anon-key.txt"
consul_get "v1/kv/streaming/data/demo?raw" -H "@$ROOT/.demo/secure/consul-management.header" >"$OUT/mgmt-key.txt" 2>&1
grep -qx 'node1,node2,node3' "$OUT/mgmt-key.txt" &&
    pass "the management token (from a header file) reads the mapping" ||
    fail "the management token (from a header file) reads the mapping" "$OUT/mgmt-key.txt"
code="$(curl -s -o /dev/null -w '%{http_code}' "http://$CONSUL/v1/status/leader")"
[[ "$code" != 200 ]] && pass "Consul does not serve plain HTTP (HTTP $code)" ||
    fail "Consul does not serve plain HTTP (HTTP $code)"
if grep -l 'a right is missing' "$ROOT"/.demo/logs/{gateway,node1,node2,node3}.log >"$OUT/rights.txt"; then
    fail "no binary reports a missing Consul right with its demo policy" "$OUT/rights.txt"
else
    pass "no binary reports a missing Consul right with its demo policy"
fi
ps -eo args >"$OUT/ps.txt"
leaked=0
while IFS='=' read -r _ value; do
    [[ -n "$value" ]] && grep -qF -- "$value" "$OUT/ps.txt" && leaked=1
done <"$ROOT/.demo/secure/tokens.env"
[[ $leaked == 0 ]] && pass "no token of tokens.env shows in a command line (ps)" ||
    fail "no token of tokens.env shows in a command line (ps)"

# Refusals.
if EVENT_CATCHER_CLIENT_TOKEN="$EC_DEMO_APP_TOKEN" timeout 30 "$BIN/ec-client" --tls-ca "$CERTS/ca.pem" \
    stream --gateway "$GATEWAY" --data-id demo --count 1 >"$OUT/nocert.txt" 2>&1; then
    fail "a client without a certificate is refused" "$OUT/nocert.txt"
else
    pass "a client without a certificate is refused"
fi
if EVENT_CATCHER_CLIENT_TOKEN= timeout 30 "$BIN/ec-client" "${TLS[@]}" \
    stream --gateway "$GATEWAY" --data-id demo --count 1 >"$OUT/notoken.txt" 2>&1; then
    fail "a client without a token is refused" "$OUT/notoken.txt"
elif grep -qi 'unauthenticated' "$OUT/notoken.txt"; then
    pass "a client without a token is refused (UNAUTHENTICATED)"
else
    fail "a client without a token is refused (UNAUTHENTICATED)" "$OUT/notoken.txt"
fi

if command -v python3 >/dev/null && python3 -c 'import grpc, grpc_tools' 2>/dev/null; then
    SECRET="$(consul_get "v1/kv/streaming/data.cluster/secret?raw" -H "@$ROOT/.demo/secure/consul-management.header")"
    if python3 "$ROOT/scripts/attacks/forged_replica.py" \
        --nodes "127.0.0.1:$NODE_BASE,127.0.0.1:$((NODE_BASE + 2)),127.0.0.1:$((NODE_BASE + 4))" \
        --tls-ca "$CERTS/ca.pem" --tls-cert "$CERTS/node2.pem" --tls-key "$CERTS/node2.key" \
        --claim node3 --secret "$SECRET" --token "$EC_DEMO_APP_TOKEN" >"$OUT/forged.txt" 2>&1 &&
        grep -q 'PERMISSION_DENIED' "$OUT/forged.txt"; then
        pass "node2's certificate claiming node3 is refused (PERMISSION_DENIED)"
    else
        fail "node2's certificate claiming node3 is refused (PERMISSION_DENIED)" "$OUT/forged.txt"
    fi
else
    echo "skip  the forged replica (python3 with grpcio and grpcio-tools is not installed)"
fi

# Failover with security on, and a restart with the same flags.
"$DEMO_SH" kill node1 >/dev/null 2>&1
moved=0
for _ in $(seq 1 150); do
    if grep -qE 'publishing resumed on node node[23]' "$ROOT/.demo/logs/producer.log"; then
        moved=1
        break
    fi
    sleep 0.2
done
[[ $moved == 1 ]] && pass "after the primary's kill the producer carries on on a promoted replica" ||
    fail "after the primary's kill the producer carries on on a promoted replica" "$ROOT/.demo/logs/producer.log"
# The gateway's Consul token sufficed to promote: the mapping now names another primary.
consul_get "v1/kv/streaming/data/demo?raw" -H "@$ROOT/.demo/secure/consul-management.header" >"$OUT/promoted.txt" 2>&1
grep -qE '^node[23],' "$OUT/promoted.txt" &&
    pass "the gateway promoted through Consul with its ACL token (mapping $(cat "$OUT/promoted.txt"))" ||
    fail "the gateway promoted through Consul with its ACL token" "$OUT/promoted.txt"
"$DEMO_SH" restart node1 >/dev/null 2>&1
rejoined=0
for _ in $(seq 1 150); do
    if grep -q 'following the primary' "$ROOT/.demo/logs/node1.log"; then
        rejoined=1
        break
    fi
    sleep 0.2
done
[[ $rejoined == 1 ]] && pass "restart node1: it rejoins over mutual TLS as a replica" ||
    fail "restart node1: it rejoins over mutual TLS as a replica" "$ROOT/.demo/logs/node1.log"
read_events --proxy >"$OUT/after.txt" 2>&1 && [[ $(wc -l <"$OUT/after.txt") -ge 3 ]] &&
    pass "after failover and restart, a reader through the gateway still gets events" ||
    fail "after failover and restart, a reader through the gateway still gets events" "$OUT/after.txt"
