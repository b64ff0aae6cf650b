#!/usr/bin/env bash
# demo.sh — run the whole Event Catcher system on this machine with one command.
#
#   scripts/demo.sh [up]     install Consul if needed, build, start Consul (dev agent), one
#                            gateway, three nodes and a producer on 127.0.0.1; map data ID
#                            `demo` to node1,node2,node3; print what to run next
#   scripts/demo.sh status   what is running, the mapping and the nodes' health
#   scripts/demo.sh down     stop exactly what `up` started (by its PID files), nothing else
#   scripts/demo.sh kill nodeN     SIGKILL one node (by its PID file), as a crash would
#   scripts/demo.sh restart nodeN  start a killed node again on its data dir: it rejoins
#
# Everything lives under .demo/ in the repo (git-ignored): data dirs, logs, pids/; `up` wipes
# the previous run's data and logs, `down` keeps them for a look. Processes
# are recognised by their PID file *and* their command line, so a PID reused by another
# program after a reboot is never signalled.
#
# The nodes replicate `demo` from its primary (node1) to node2 and node3: kill the node that
# serves a reader and the reader continues from the next offset on another one. Writes go to
# the primary only; kill it and the gateway promotes an in-sync replica by itself, about 1.3 s
# after the kill at default settings (it checks every node every 200 ms and promotes 1 s after
# a loss; a frozen node counts as lost after 3 s of silence), while the producer retries and
# carries on there without losing or repeating an event (its payload numbers stay
# continuous). `restart` brings the old primary back: it truncates what the new primary does
# not have and follows it as a replica.
#
# Environment: EC_DEMO_PROFILE=debug|release (default debug: builds faster),
# EC_DEMO_CONSUL_PORT (8500), EC_DEMO_GATEWAY_PORT (50051), EC_DEMO_NODE_PORT (50052: node N
# uses gRPC port base+2(N-1) and health port base+2(N-1)+1), EC_DEMO_RATE (events/s, 3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEMO="$ROOT/.demo"
PIDS="$DEMO/pids"
LOGS="$DEMO/logs"
PROFILE="${EC_DEMO_PROFILE:-debug}"
CONSUL_PORT="${EC_DEMO_CONSUL_PORT:-8500}"
GATEWAY_PORT="${EC_DEMO_GATEWAY_PORT:-50051}"
NODE_PORT="${EC_DEMO_NODE_PORT:-50052}"
RATE="${EC_DEMO_RATE:-3}"
DATA_ID="demo"
NODES=(node1 node2 node3)
# Start order; `down` stops in reverse.
COMPONENTS=(consul node1 node2 node3 gateway producer)
READY_SECS=60

log() { printf 'demo: %s\n' "$*" >&2; }
die() {
    printf 'demo: ERROR: %s\n' "$*" >&2
    exit 1
}

node_grpc_port() { echo $((NODE_PORT + 2 * ($1 - 1))); }
node_health_port() { echo $((NODE_PORT + 2 * ($1 - 1) + 1)); }

# --------------------------------------------------------------------------------------------
# PID files: one per component, "PID" on the first line and a string its command line must
# contain on the second.
# --------------------------------------------------------------------------------------------

pid_of() {
    local file="$PIDS/$1.pid"
    [[ -f "$file" ]] || return 1
    local pid sig
    pid="$(sed -n 1p "$file")"
    sig="$(sed -n 2p "$file")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$sig" || return 1
    echo "$pid"
}

write_pid() {
    mkdir -p "$PIDS"
    printf '%s\n%s\n' "$2" "$3" >"$PIDS/$1.pid"
}

# Stops one component: SIGTERM (to its whole process group for the producer), up to 15 s,
# then SIGKILL.
stop_component() {
    local name="$1" pid target
    if ! pid="$(pid_of "$name")"; then
        [[ -f "$PIDS/$name.pid" ]] && log "$name: not running (stale PID file removed)"
        rm -f "$PIDS/$name.pid"
        return 0
    fi
    target="$pid"
    # The producer is a pipeline started as its own process group: stop all of it.
    [[ "$name" == producer ]] && target="-$pid"
    log "stopping $name (pid $pid)"
    kill -TERM -- "$target" 2>/dev/null || true
    for _ in $(seq 1 150); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name did not stop within 15 s; sending SIGKILL"
        kill -KILL -- "$target" 2>/dev/null || true
    fi
    rm -f "$PIDS/$name.pid"
}

# --------------------------------------------------------------------------------------------
# up
# --------------------------------------------------------------------------------------------

port_busy() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

check_ports() {
    local ports=("$CONSUL_PORT" "$GATEWAY_PORT" 18300 18301 18302) i
    for i in 1 2 3; do
        ports+=("$(node_grpc_port "$i")" "$(node_health_port "$i")")
    done
    for p in "${ports[@]}"; do
        if port_busy "$p"; then
            die "port $p on 127.0.0.1 is in use; stop what uses it (or 'scripts/demo.sh down' if it is an earlier demo), or pick other ports with EC_DEMO_CONSUL_PORT / EC_DEMO_GATEWAY_PORT / EC_DEMO_NODE_PORT"
        fi
    done
}

wait_until() {
    local what="$1"
    shift
    for _ in $(seq 1 $((READY_SECS * 5))); do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    die "$what did not happen within ${READY_SECS}s; see the logs in $LOGS"
}

consul_has_leader() {
    [[ "$(curl -sf "http://127.0.0.1:$CONSUL_PORT/v1/status/leader")" == *:* ]]
}

nodes_passing() {
    local n
    n="$(curl -sf "http://127.0.0.1:$CONSUL_PORT/v1/health/service/streaming-node?passing" | jq length)"
    [[ "$n" -ge 3 ]]
}

build() {
    local flags=()
    [[ "$PROFILE" == release ]] && flags+=(--release)
    # The whole workspace, as scripts/test.sh builds it: selecting packages with -p would
    # unify the dependencies' features differently and recompile ~80 crates.
    log "building the workspace's binaries ($PROFILE)"
    (cd "$ROOT" && cargo build "${flags[@]}" --workspace --bins) >&2
    local target
    target="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | jq -r .target_directory)"
    BIN="$target/$PROFILE"
    for b in ec-node ec-gateway ec-client; do
        [[ -x "$BIN/$b" ]] || die "build finished but $BIN/$b is missing"
    done
}

start_consul() {
    local consul
    consul="$("$ROOT/scripts/install-consul.sh" | tail -n 1)"
    [[ -x "$consul" ]] || die "scripts/install-consul.sh did not provide a consul binary"
    log "starting Consul dev agent on 127.0.0.1:$CONSUL_PORT"
    # Dev mode keeps everything in memory: `down` + `up` starts from a clean slate. DNS and
    # gRPC ports are off; the update check would reach the internet, so it is disabled.
    setsid "$consul" agent -dev -node demo-consul -bind 127.0.0.1 -client 127.0.0.1 \
        -http-port "$CONSUL_PORT" -dns-port -1 \
        -hcl 'disable_update_check = true' -hcl 'ports { grpc = -1 }' \
        -hcl 'ports { serf_lan = 18301, serf_wan = 18302, server = 18300 }' \
        </dev/null >"$LOGS/consul.log" 2>&1 &
    write_pid consul $! "-node demo-consul"
    wait_until "Consul electing itself leader" consul_has_leader
}

start_node() {
    local i="$1" id="node$1"
    mkdir -p "$DEMO/$id"
    log "starting $id on 127.0.0.1:$(node_grpc_port "$i") (health :$(node_health_port "$i"), data $DEMO/$id)"
    # Short health-check interval so a killed node turns critical within seconds.
    EVENT_CATCHER_NODE_HEALTH_CHECK_INTERVAL=2s EVENT_CATCHER_NODE_HEALTH_CHECK_TIMEOUT=1s \
        setsid "$BIN/ec-node" --id "$id" --host 127.0.0.1 \
        --port "$(node_grpc_port "$i")" --health-port "$(node_health_port "$i")" \
        --data-dir "$DEMO/$id" --consul-addr "127.0.0.1:$CONSUL_PORT" \
        </dev/null >"$LOGS/$id.log" 2>&1 &
    write_pid "$id" $! "--data-dir $DEMO/$id"
}

start_gateway() {
    log "starting the gateway on 127.0.0.1:$GATEWAY_PORT"
    setsid "$BIN/ec-gateway" --host 127.0.0.1 --port "$GATEWAY_PORT" \
        --consul-addr "127.0.0.1:$CONSUL_PORT" \
        </dev/null >"$LOGS/gateway.log" 2>&1 &
    write_pid gateway $! "--port $GATEWAY_PORT"
}

# The producer: a line every 1/RATE s, published through the gateway's route to the primary
# (the nodes replicate it). When the primary dies, the publisher retries by itself (one line
# in producer.log when the outage starts, one when it resumed) and resends what was not
# acknowledged to the promoted replica under the same producer identity, so every numbered
# line is stored exactly once and the numbers stay continuous. It gives up only after
# --delivery-timeout (a day here: a demo waits for its cluster); if it ever stops, it is
# restarted after 2 s and numbering goes on from .demo/producer.seq (lines it had read but
# not published are then missing).
start_producer() {
    log "starting the producer: $RATE events/s to data ID $DATA_ID"
    local interval
    interval="$(awk -v r="$RATE" 'BEGIN { if (r <= 0) exit 1; printf "%.3f", 1 / r }')" ||
        die "EC_DEMO_RATE must be a positive number of events per second, got '$RATE'"
    # setsid makes the loop its own process group, so `down` stops all of it at once. The
    # marker comment identifies this process in the PID check.
    RUST_BACKTRACE=0 RUST_LIB_BACKTRACE=0 setsid bash -c "
        # EC_DEMO_PRODUCER_MARK
        seq_file='$DEMO/producer.seq'
        while :; do
            {
                i=\$(cat \"\$seq_file\" 2>/dev/null || echo 0)
                while :; do
                    printf 'demo event %d at %s\\n' \"\$i\" \"\$(date -u +%H:%M:%S.%3N)\" || exit 0
                    i=\$((i + 1))
                    echo \"\$i\" >\"\$seq_file\"
                    sleep $interval
                done
            } | '$BIN/ec-client' publish --gateway 127.0.0.1:$GATEWAY_PORT --data-id $DATA_ID \\
                --delivery-timeout 24h >/dev/null
            echo \"\$(date -u +%T) publisher stopped; restarting in 2 s\" >&2
            sleep 2
        done
    " </dev/null >>"$LOGS/producer.log" 2>&1 &
    write_pid producer $! "EC_DEMO_PRODUCER_MARK"
}

routable() {
    timeout 5 "$BIN/ec-client" stream --gateway "127.0.0.1:$GATEWAY_PORT" --data-id "$DATA_ID" \
        --from earliest --count 1
}

up() {
    for c in "${COMPONENTS[@]}"; do
        if pid_of "$c" >/dev/null; then
            die "the demo is already running ($c has pid $(pid_of "$c")); 'scripts/demo.sh status' or 'scripts/demo.sh down'"
        fi
    done
    for tool in curl jq; do
        command -v "$tool" >/dev/null || die "$tool is required (e.g. apt-get install $tool)"
    done
    check_ports
    # Consul's dev agent starts empty, so the nodes' old logs (and their replication epochs)
    # would not match it: every `up` starts from a clean slate.
    rm -rf "$DEMO"/node1 "$DEMO"/node2 "$DEMO"/node3 "$LOGS" "$DEMO/producer.seq"
    mkdir -p "$DEMO" "$PIDS" "$LOGS"
    # Keep the demo's state out of git without touching the repo's .gitignore.
    printf '*\n' >"$DEMO/.gitignore"
    build
    # If anything below fails, stop what was started.
    trap 'rc=$?; if [[ $rc != 0 ]]; then log "start failed; stopping what was started"; down_all; fi' EXIT
    start_consul
    for i in 1 2 3; do
        start_node "$i"
    done
    start_gateway
    wait_until "all three nodes passing their Consul health checks" nodes_passing
    log "mapping data ID $DATA_ID to node1,node2,node3 (node1 is the primary)"
    "$ROOT/scripts/setup-consul.sh" --consul-addr="127.0.0.1:$CONSUL_PORT" \
        --data-id="$DATA_ID" --node-id=node1,node2,node3 >&2
    start_producer
    wait_until "the first event of $DATA_ID reaching readers through the gateway" routable
    trap - EXIT
    print_next
}

print_next() {
    local gw="127.0.0.1:$GATEWAY_PORT" BIN="${BIN#"$ROOT"/}"
    cat <<EOF

Event Catcher demo is running (logs and data in .demo/):
  Consul       http://127.0.0.1:$CONSUL_PORT/ui
  gateway      $gw
  nodes        node1 127.0.0.1:$(node_grpc_port 1)   node2 127.0.0.1:$(node_grpc_port 2)   node3 127.0.0.1:$(node_grpc_port 3)
  producer     $RATE events/s to data ID '$DATA_ID'

Try:
  $BIN/ec-client stream --gateway $gw --data-id $DATA_ID               # follow it (redirect mode)
  $BIN/ec-client stream --gateway $gw --data-id $DATA_ID --proxy       # through the gateway
  $BIN/ec-client stream --gateway $gw --data-id $DATA_ID --offset 0 --count 10
  echo hello | $BIN/ec-client publish --gateway $gw --data-id other     # needs a mapping for 'other':
  scripts/setup-consul.sh --consul-addr=127.0.0.1:$CONSUL_PORT --data-id=other --node-id=node2
EOF
    if [[ -x "$BIN/ec-console" ]]; then
        echo "  $BIN/ec-console --gateway $gw --consul-addr 127.0.0.1:$CONSUL_PORT   # operator console"
    fi
    cat <<EOF
  scripts/demo.sh kill node1      # kill the primary: readers continue on node2/node3, the
                                  # gateway promotes one of them in about 1-2 s and the producer
                                  # carries on there (.demo/logs/producer.log)
  scripts/demo.sh restart node1   # it comes back as a replica of the new primary
  scripts/demo.sh status
  scripts/demo.sh down
EOF
}

# --------------------------------------------------------------------------------------------
# status / down
# --------------------------------------------------------------------------------------------

status() {
    local any=0 c pid
    for c in "${COMPONENTS[@]}"; do
        if pid="$(pid_of "$c")"; then
            printf '%-9s running  pid %s\n' "$c" "$pid"
            any=1
        elif [[ -f "$PIDS/$c.pid" ]]; then
            printf '%-9s STOPPED  (pid file left; see %s)\n' "$c" "$LOGS/$c.log"
        else
            printf '%-9s -\n' "$c"
        fi
    done
    if [[ $any == 0 ]]; then
        echo "the demo is not running; start it with scripts/demo.sh"
        return 0
    fi
    if consul_has_leader 2>/dev/null; then
        echo
        echo "mappings:"
        "$ROOT/scripts/setup-consul.sh" --consul-addr="127.0.0.1:$CONSUL_PORT" --list | sed 's/^/  /'
        echo "node health (Consul):"
        curl -sf "http://127.0.0.1:$CONSUL_PORT/v1/health/service/streaming-node" |
            jq -r '.[] | "  \(.Service.ID)  \(.Service.Address):\(.Service.Port)  " +
                ([.Checks[].Status] | if any(. == "critical") then "critical" elif any(. == "warning") then "warning" else "passing" end)'
    fi
}

down_all() {
    local i
    for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
        stop_component "${COMPONENTS[$i]}"
    done
}

down() {
    [[ -d "$PIDS" ]] || {
        log "nothing to stop (no $PIDS)"
        return 0
    }
    down_all
    log "stopped; data and logs remain in $DEMO (delete it for a clean slate)"
}

# --------------------------------------------------------------------------------------------
# kill / restart one node
# --------------------------------------------------------------------------------------------

# The number N of a node name `nodeN` of this demo; dies otherwise.
node_number() {
    [[ "${1:-}" =~ ^node([123])$ ]] || die "name a node of the demo: node1, node2 or node3 (got '${1:-}')"
    echo "${BASH_REMATCH[1]}"
}

kill_node() {
    local id="$1" pid
    node_number "$id" >/dev/null
    pid="$(pid_of "$id")" || die "$id is not running ('scripts/demo.sh status')"
    log "SIGKILL $id (pid $pid); the PID file stays, so 'status' shows it STOPPED"
    kill -KILL "$pid"
}

restart_node() {
    local id="$1" n target
    n="$(node_number "$id")"
    if pid_of "$id" >/dev/null; then
        die "$id is running (pid $(pid_of "$id")); 'scripts/demo.sh kill $id' first"
    fi
    pid_of consul >/dev/null || die "the demo is not running; start it with scripts/demo.sh"
    target="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | jq -r .target_directory)"
    BIN="$target/$PROFILE"
    [[ -x "$BIN/ec-node" ]] || die "$BIN/ec-node is missing; run scripts/demo.sh up first"
    start_node "$n"
    log "$id restarted on its data dir; it rejoins as a replica of the current primary"
}

case "${1:-up}" in
up) up ;;
down) down ;;
status) status ;;
kill) kill_node "${2:-}" ;;
restart) restart_node "${2:-}" ;;
-h | --help | help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//' ;;
*) die "unknown command '$1'; use up, status, kill nodeN, restart nodeN or down" ;;
esac
