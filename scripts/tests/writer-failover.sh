#!/usr/bin/env bash
# writer-failover.sh — a producer through the gateway while the primary is lost, checked as a
# user would: three nodes and a gateway at default settings (only ports and data dirs set),
# `ec-client publish --count 4000 --rate 400`, the primary (node1) signalled 3 s in. Prints
# the publisher's exit status, whether the log holds the 4000 numbered payloads exactly once
# at gapless offsets in send order, the largest gap between commit timestamps (the write
# pause), and whether two readers (redirect and --proxy) saw every offset once.
#
#   scripts/tests/writer-failover.sh KILL|STOP [--proxy]
#
# Needs the debug binaries (cargo build --workspace --bins) and uses loopback ports
# 18700-18780; everything lives in a temp dir that is removed afterwards.
set -uo pipefail
SIG=${1:?KILL or STOP}; PFLAGS=${2:-}
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"; cd "$ROOT"
B="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug"
CONSUL="${EC_CONSUL_BIN:-$(scripts/install-consul.sh | tail -n 1)}"
W="$(mktemp -d)"; trap 'rm -rf "$W"' EXIT
CP=18700; GW=18751
"$CONSUL" agent -dev -http-port $CP -dns-port -1 -serf-lan-port 18701 -serf-wan-port 18702 -server-port 18703 -hcl 'ports { grpc = -1 }' -bind 127.0.0.1 -client 127.0.0.1 > $W/consul.log 2>&1 & CPID=$!
until curl -sf http://127.0.0.1:$CP/v1/status/leader | grep -q 127; do sleep 0.2; done
for i in 1 2 3; do
  $B/ec-node --id node$i --host 127.0.0.1 --port $((18760+i)) --health-port $((18770+i)) --data-dir $W/n$i --consul-addr 127.0.0.1:$CP > $W/node$i.log 2>&1 & echo $! > $W/node$i.pid
done
$B/ec-gateway --host 127.0.0.1 --port $GW --metrics-port 18752 --consul-addr 127.0.0.1:$CP > $W/gw.log 2>&1 & GPID=$!
curl -sf -X PUT -d 'node1,node2,node3' http://127.0.0.1:$CP/v1/kv/streaming/data/t10 >/dev/null
# Wait until the gateway routes and the three nodes pass their checks.
for i in $(seq 100); do $B/ec-client publish --data-id warm --count 1 --gateway 127.0.0.1:$GW --quiet >/dev/null 2>&1; \
  n=$(curl -s http://127.0.0.1:$CP/v1/health/service/streaming-node?passing | grep -o '"ServiceID"' | wc -l); [ "$n" -ge 3 ] && break; sleep 0.5; done
$B/ec-client stream --data-id t10 --gateway 127.0.0.1:$GW --json --count 4000 > $W/reader-redirect.jsonl 2>$W/reader-redirect.err & R1=$!
$B/ec-client stream --data-id t10 --gateway 127.0.0.1:$GW --proxy --json --count 4000 > $W/reader-proxy.jsonl 2>$W/reader-proxy.err & R2=$!
$B/ec-client publish --data-id t10 --count 4000 --rate 400 --gateway 127.0.0.1:$GW --quiet $PFLAGS > $W/pub.out 2> $W/pub.err & P=$!
sleep 3
kill -$SIG $(cat $W/node1.pid)
wait $P; echo "publish exit status $?"
for r in $R1 $R2; do timeout 60 tail --pid=$r -f /dev/null; done
$B/ec-client stream --data-id t10 --gateway 127.0.0.1:$GW --json --no-follow > $W/final.jsonl 2>$W/final.err
python3 - $W <<'PY'
import json,sys
w=sys.argv[1]
ev=[json.loads(l) for l in open(w+'/final.jsonl')]
offs=[e['offset'] for e in ev]; data=[e['data'] for e in ev]
nums=[int(d.rstrip('x')) for d in data]
print("events",len(ev),"gapless",offs==list(range(len(ev))),"distinct payloads",len(set(nums)),"in order",nums==sorted(nums),"min/max",min(nums),max(nums))
ts=[e['timestamp'] for e in ev]; gaps=[b-a for a,b in zip(ts,ts[1:])]
print("largest commit gap ms",max(gaps))
for r in ('reader-redirect','reader-proxy'):
    rv=[json.loads(l) for l in open(f'{w}/{r}.jsonl')]
    o=[e['offset'] for e in rv]
    print(r,len(rv),"gapless",o==list(range(len(rv))))
PY
kill -CONT $(cat $W/node1.pid) 2>/dev/null; for i in 1 2 3; do kill -9 $(cat $W/node$i.pid) 2>/dev/null; done; kill $GPID $CPID; wait 2>/dev/null
