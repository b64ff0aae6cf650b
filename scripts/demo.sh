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
#   scripts/demo.sh secure   like `up`, with security on: mutual TLS everywhere (certificates
#                            from scripts/dev-certs.sh in .demo/secure/certs), client tokens
#                            with permissions, Consul with ACLs (default deny, a token per
#                            binary) and HTTPS only; prints how client commands must look
#   scripts/demo.sh cluster  the deployment shape instead of one dev agent: 3 Consul servers,
#                            one Consul client agent per "machine" (machine1-3 each run a node
#                            registered with its own agent; machine4 runs the gateway and is
#                            where the console and tools talk to Consul), then as `up`
#   scripts/demo.sh kill machineN     (cluster) SIGKILL machine N's agent and node: a dead
#                                     machine, which Consul's Serf failure detection notices
#   scripts/demo.sh restart machineN  (cluster) boot it again: agent, then node
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
# EC_DEMO_CLUSTER_PORT (18500: in `cluster` mode member k uses HTTP base+10k, serf LAN +1,
# serf WAN +2, server RPC +3; servers are k=1-3, machine1-4 k=4-7),
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
# The Consul agent node N registers with: its machine's agent in cluster mode, else the one.
node_consul_port() {
    if [[ "${CLUSTER:-0}" == 1 ]]; then member_port "machine$1" http; else echo "$CONSUL_PORT"; fi
}
node_health_port() { echo $((NODE_PORT + 2 * ($1 - 1) + 1)); }

# Consul's HTTP API as the demo's own calls reach it. After `secure`: over HTTPS (CA from
# .demo/secure/certs) and with the management token, from a header file (never on a command
# line that `ps` shows, never printed).
consul_base() {
    if [[ -f "$SECURE_DIR/consul.hcl" ]]; then echo "https://127.0.0.1:$CONSUL_PORT"; else echo "http://127.0.0.1:$CONSUL_PORT"; fi
}
consul_curl() {
    local args=(-sf)
    [[ -f "$SECURE_DIR/consul.hcl" ]] && args+=(--cacert "$CERTS/ca.pem")
    [[ -f "$SECURE_DIR/consul-management.header" ]] && args+=(-H "@$SECURE_DIR/consul-management.header")
    curl "${args[@]}" "$@"
}
# scripts/setup-consul.sh against the demo's Consul, with the same CA and token (exported,
# so they stay off command lines).
setup_consul() {
    (
        if [[ -f "$SECURE_DIR/consul.hcl" ]]; then export CONSUL_CACERT="$CERTS/ca.pem"; fi
        if [[ -f "$SECURE_DIR/consul-management.header" ]]; then
            # shellcheck source=/dev/null
            source "$SECURE_DIR/tokens.env"
            export CONSUL_HTTP_TOKEN="$EC_DEMO_CONSUL_MANAGEMENT_TOKEN"
        fi
        exec "$ROOT/scripts/setup-consul.sh" --consul-addr="$(consul_base)" "$@"
    )
}
# Runs "$@" with SEC_ENV's VAR=value settings exported; unlike `env VAR=value cmd`, the
# secrets never appear in a command line, not even for the instant before exec.
exec_with_sec_env() {
    local kv
    for kv in "${SEC_ENV[@]}"; do export "${kv?}"; done
    exec "$@"
}

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
    [[ "$(consul_curl "$(consul_base)/v1/status/leader")" == *:* ]]
}

nodes_passing() {
    local n
    n="$(consul_curl "$(consul_base)/v1/health/service/streaming-node?passing" | jq length)"
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
    local http=(-http-port "$CONSUL_PORT")
    if [[ "${SECURE:-0}" == 1 ]]; then http=(-http-port -1 -config-file "$SECURE_DIR/consul.hcl"); fi
    log "starting Consul dev agent on $(consul_base)"
    # Dev mode keeps everything in memory: `down` + `up` starts from a clean slate. DNS and
    # gRPC ports are off; the update check would reach the internet, so it is disabled.
    setsid "$consul" agent -dev -node demo-consul -bind 127.0.0.1 -client 127.0.0.1 \
        "${http[@]}" -dns-port -1 \
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
    secure_setup "$id"
    SEC_ENV+=(EVENT_CATCHER_NODE_HEALTH_CHECK_INTERVAL=2s EVENT_CATCHER_NODE_HEALTH_CHECK_TIMEOUT=1s)
    (exec_with_sec_env setsid "$BIN/ec-node" --id "$id" --host 127.0.0.1 \
        --port "$(node_grpc_port "$i")" --health-port "$(node_health_port "$i")" \
        --data-dir "$DEMO/$id" --consul-addr "127.0.0.1:$(node_consul_port "$i")" "${SEC_FLAGS[@]}") \
        </dev/null >"$LOGS/$id.log" 2>&1 &
    write_pid "$id" $! "--data-dir $DEMO/$id"
}

start_gateway() {
    log "starting the gateway on 127.0.0.1:$GATEWAY_PORT"
    secure_setup gateway
    (exec_with_sec_env setsid "$BIN/ec-gateway" --host 127.0.0.1 --port "$GATEWAY_PORT" \
        --consul-addr "127.0.0.1:$CONSUL_PORT" "${SEC_FLAGS[@]}") \
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
    secure_setup client
    SEC_ENV+=(RUST_BACKTRACE=0 RUST_LIB_BACKTRACE=0)
    (exec_with_sec_env setsid bash -c "
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
            } | '$BIN/ec-client' ${SEC_FLAGS[*]} publish --gateway 127.0.0.1:$GATEWAY_PORT --data-id $DATA_ID \\
                --delivery-timeout 24h >/dev/null
            echo \"\$(date -u +%T) publisher stopped; restarting in 2 s\" >&2
            sleep 2
        done
    ") </dev/null >>"$LOGS/producer.log" 2>&1 &
    write_pid producer $! "EC_DEMO_PRODUCER_MARK"
}

routable() {
    secure_setup client
    (exec_with_sec_env timeout 5 "$BIN/ec-client" "${SEC_FLAGS[@]}" stream --gateway "127.0.0.1:$GATEWAY_PORT" --data-id "$DATA_ID" \
        --from earliest --count 1)
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
    use_dev_layout
    check_ports
    rm -f "$DEMO/mode"
    # Consul's dev agent starts empty, so the nodes' old logs (and their replication epochs)
    # would not match it: every `up` starts from a clean slate.
    rm -rf "$DEMO"/node1 "$DEMO"/node2 "$DEMO"/node3 "$LOGS" "$DEMO/producer.seq" "$SECURE_DIR"
    mkdir -p "$DEMO" "$PIDS" "$LOGS"
    # Keep the demo's state out of git without touching the repo's .gitignore.
    printf '*\n' >"$DEMO/.gitignore"
    build
    if [[ "${SECURE:-0}" == 1 ]]; then make_credentials; fi
    # If anything below fails, stop what was started.
    trap 'rc=$?; if [[ $rc != 0 ]]; then log "start failed; stopping what was started"; down_all; fi' EXIT
    start_consul
    if [[ "${SECURE:-0}" == 1 ]]; then consul_acls; fi
    for i in 1 2 3; do
        start_node "$i"
    done
    start_gateway
    wait_until "all three nodes passing their Consul health checks" nodes_passing
    log "mapping data ID $DATA_ID to node1,node2,node3 (node1 is the primary)"
    setup_consul --data-id="$DATA_ID" --node-id=node1,node2,node3 >&2
    start_producer
    wait_until "the first event of $DATA_ID reaching readers through the gateway" routable
    trap - EXIT
    if [[ "${SECURE:-0}" == 1 ]]; then print_next_secure; else print_next; fi
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
        setup_consul --list | sed 's/^/  /'
        echo "node health (Consul):"
        consul_curl "$(consul_base)/v1/health/service/streaming-node" |
            jq -r '.[] | "  \(.Service.ID)  \(.Service.Address):\(.Service.Port)  " +
                ([.Checks[].Status] | if any(. == "critical") then "critical" elif any(. == "warning") then "warning" else "passing" end)'
        if [[ "${CLUSTER:-0}" == 1 ]]; then cluster_members; fi
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
    if [[ "${CLUSTER:-0}" == 1 ]]; then
        pid_of "machine$n" >/dev/null || die "machine$n's Consul agent is not running: 'scripts/demo.sh restart machine$n'"
    else
        pid_of consul >/dev/null || die "the demo is not running; start it with scripts/demo.sh"
    fi
    target="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | jq -r .target_directory)"
    BIN="$target/$PROFILE"
    [[ -x "$BIN/ec-node" ]] || die "$BIN/ec-node is missing; run scripts/demo.sh up first"
    if [[ -f "$SECURE_DIR/tokens.env" ]]; then SECURE=1; fi
    start_node "$n"
    log "$id restarted on its data dir; it rejoins as a replica of the current primary"
}

# --------------------------------------------------------------------------------------------
# secure: the same demo with mutual TLS and client tokens
# --------------------------------------------------------------------------------------------

SECURE_DIR="$DEMO/secure"
CERTS="$SECURE_DIR/certs"

# Certificates for node1..3, the gateway and a client (scripts/dev-certs.sh), and three
# random tokens: admin (mappings, promotion, everything), app (publish, create, read; no
# admin) and the gateway's own (read, for what it asks the nodes itself). Processes get the
# tokens through the environment (EVENT_CATCHER_SECURITY_TOKENS, EVENT_CATCHER_CLIENT_TOKEN),
# never on a command line that `ps` shows; tokens.env and env.sh keep them for the user.
make_credentials() {
    command -v openssl >/dev/null || die "openssl is required for 'secure' (e.g. apt-get install openssl)"
    mkdir -p "$SECURE_DIR"
    chmod 700 "$SECURE_DIR"
    log "making a CA and certificates in $CERTS (scripts/dev-certs.sh)"
    # `consul` is the Consul agent's HTTPS certificate (valid for 127.0.0.1, like every one).
    "$ROOT/scripts/dev-certs.sh" --out "$CERTS" --nodes node1,node2,node3,consul >&2
    local admin app gateway
    admin="admin-$(openssl rand -hex 16)"
    app="app-$(openssl rand -hex 16)"
    gateway="gateway-$(openssl rand -hex 16)"
    (
        umask 077
        printf 'EC_DEMO_ADMIN_TOKEN=%s\nEC_DEMO_APP_TOKEN=%s\nEC_DEMO_GATEWAY_TOKEN=%s\n' \
            "$admin" "$app" "$gateway" >"$SECURE_DIR/tokens.env"
        # For the user's shell: after `source .demo/secure/env.sh`, ec-client and ec-console
        # speak mutual TLS with the client certificate and present the app token.
        {
            echo "export EVENT_CATCHER_TLS_CA_FILE='$CERTS/ca.pem'"
            echo "export EVENT_CATCHER_TLS_CERT_FILE='$CERTS/client.pem'"
            echo "export EVENT_CATCHER_TLS_KEY_FILE='$CERTS/client.key'"
            echo "export EVENT_CATCHER_CLIENT_TOKEN='$app'"
        } >"$SECURE_DIR/env.sh"
        # Consul with ACLs (deny by default) and its API on HTTPS only; read by start_consul.
        cat >"$SECURE_DIR/consul.hcl" <<HCL
acl {
  enabled        = true
  default_policy = "deny"
  down_policy    = "extend-cache"
}
ports {
  http  = -1
  https = $CONSUL_PORT
}
cert_file = "$CERTS/consul.pem"
key_file  = "$CERTS/consul.key"
# API callers prove who they are with ACL tokens; client certificates are not required.
verify_incoming = false
HCL
    )
}

# Consul's ACL rules per binary: README's minimal policies ("Consul ACLs"), the gateway's with
# admin calls and automatic failover; the console edits mappings and promotes like it.
ACL_NODE='key_prefix "streaming/data/" { policy = "read" }
key_prefix "streaming/data.epochs/" { policy = "write" }
key "streaming/data.cluster/secret" { policy = "write" }
service "streaming-node" { policy = "write" }
service_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }'
ACL_GATEWAY='key_prefix "streaming/data/" { policy = "write" }
key_prefix "streaming/data.epochs/" { policy = "write" }
key_prefix "streaming/data.failover/" { policy = "write" }
session_prefix "" { policy = "write" }
service_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }'
# The dev agent's own token: it writes its node's catalog entry and coordinates.
ACL_AGENT='node "demo-consul" { policy = "write" }
service_prefix "" { policy = "read" }'

consul_bootstrap() {
    (
        umask 077
        curl -sf --cacert "$CERTS/ca.pem" -X PUT "$(consul_base)/v1/acl/bootstrap" >"$SECURE_DIR/consul-bootstrap.json"
    )
}

# Creates ACL policy ec-demo-NAME with RULES and a token holding it; prints the token.
consul_token() {
    jq -n --arg n "ec-demo-$1" --arg r "$2" '{Name: $n, Rules: $r}' |
        consul_curl -X PUT --data-binary @- "$(consul_base)/v1/acl/policy" >/dev/null ||
        die "Consul refused ACL policy ec-demo-$1; see $LOGS/consul.log"
    jq -n --arg n "ec-demo-$1" '{Description: $n, Policies: [{Name: $n}]}' |
        consul_curl -X PUT --data-binary @- "$(consul_base)/v1/acl/token" | jq -re .SecretID ||
        die "Consul refused a token for ec-demo-$1; see $LOGS/consul.log"
}

# Bootstraps Consul's ACLs (the management token), gives the agent its token, and makes a
# token per binary. They join tokens.env (mode 600); the management token also goes to a
# header file for the demo's own curl calls, the console's token to env.sh.
consul_acls() {
    log "bootstrapping Consul ACLs (default deny); tokens for node, gateway, console in $SECURE_DIR"
    wait_until "Consul accepting the ACL bootstrap" consul_bootstrap
    local mgmt node gateway console agent
    mgmt="$(jq -re .SecretID "$SECURE_DIR/consul-bootstrap.json")" || die "Consul's ACL bootstrap answer has no SecretID"
    rm -f "$SECURE_DIR/consul-bootstrap.json"
    (
        umask 077
        printf 'X-Consul-Token: %s\n' "$mgmt" >"$SECURE_DIR/consul-management.header"
    )
    agent="$(consul_token agent "$ACL_AGENT")"
    jq -n --arg t "$agent" '{Token: $t}' |
        consul_curl -X PUT --data-binary @- "$(consul_base)/v1/agent/token/agent" >/dev/null ||
        die "Consul refused the agent token; see $LOGS/consul.log"
    node="$(consul_token node "$ACL_NODE")"
    gateway="$(consul_token gateway "$ACL_GATEWAY")"
    console="$(consul_token console "$ACL_GATEWAY")"
    printf 'EC_DEMO_CONSUL_MANAGEMENT_TOKEN=%s\nEC_DEMO_CONSUL_NODE_TOKEN=%s\nEC_DEMO_CONSUL_GATEWAY_TOKEN=%s\nEC_DEMO_CONSUL_CONSOLE_TOKEN=%s\n' \
        "$mgmt" "$node" "$gateway" "$console" >>"$SECURE_DIR/tokens.env"
    # ec-console's Consul settings, and the same for setup-consul.sh and the consul CLI.
    {
        echo "export EVENT_CATCHER_CONSUL_TOKEN='$console'"
        echo "export EVENT_CATCHER_CONSUL_CA_FILE='$CERTS/ca.pem'"
        echo "export CONSUL_HTTP_TOKEN='$console'"
        echo "export CONSUL_HTTP_ADDR='$(consul_base)'"
        echo "export CONSUL_CACERT='$CERTS/ca.pem'"
    } >>"$SECURE_DIR/env.sh"
}

# SEC_FLAGS: the TLS flags of one component (node1..3, gateway, client), SEC_ENV: the
# token settings it is started with; both empty unless SECURE=1.
secure_setup() {
    SEC_FLAGS=()
    SEC_ENV=()
    [[ "${SECURE:-0}" == 1 ]] || return 0
    # shellcheck source=/dev/null
    source "$SECURE_DIR/tokens.env"
    SEC_ENV=("EVENT_CATCHER_SECURITY_TOKENS=$EC_DEMO_ADMIN_TOKEN admin publish create read,$EC_DEMO_APP_TOKEN publish create read,$EC_DEMO_GATEWAY_TOKEN read")
    case "$1" in
    node*) SEC_ENV+=("EVENT_CATCHER_CONSUL_TOKEN=$EC_DEMO_CONSUL_NODE_TOKEN" "EVENT_CATCHER_CONSUL_CA_FILE=$CERTS/ca.pem") ;;
    gateway) SEC_ENV+=("EVENT_CATCHER_CLIENT_TOKEN=$EC_DEMO_GATEWAY_TOKEN"
        "EVENT_CATCHER_CONSUL_TOKEN=$EC_DEMO_CONSUL_GATEWAY_TOKEN" "EVENT_CATCHER_CONSUL_CA_FILE=$CERTS/ca.pem") ;;
    client) SEC_ENV+=("EVENT_CATCHER_CLIENT_TOKEN=$EC_DEMO_APP_TOKEN") ;;
    esac
    SEC_FLAGS=(--tls-ca "$CERTS/ca.pem" --tls-cert "$CERTS/$1.pem" --tls-key "$CERTS/$1.key")
    if [[ "$1" != client ]]; then SEC_FLAGS+=(--tls-require-client-cert true); fi
}

secure() {
    SECURE=1
    up
}

print_next_secure() {
    local gw="127.0.0.1:$GATEWAY_PORT" BIN="${BIN#"$ROOT"/}" c="${CERTS#"$ROOT"/}" s="${SECURE_DIR#"$ROOT"/}"
    local tls="--tls-ca $c/ca.pem --tls-cert $c/client.pem --tls-key $c/client.key"
    local app="\$(sed -n 's/^EC_DEMO_APP_TOKEN=//p' $s/tokens.env)"
    local admin="\$(sed -n 's/^EC_DEMO_ADMIN_TOKEN=//p' $s/tokens.env)"
    cat <<EOF

Event Catcher demo is running with security on (logs and data in .demo/, credentials in $s/):
  gateway    $gw   mutual TLS: clients need a certificate signed by $c/ca.pem
  nodes      node1 127.0.0.1:$(node_grpc_port 1)   node2 127.0.0.1:$(node_grpc_port 2)   node3 127.0.0.1:$(node_grpc_port 3)
             mutual TLS; a replica's certificate must name its node ID
  tokens     $s/tokens.env: admin (mappings, promotion, all), app (publish, create, read),
             gateway (its own reads of the nodes); every call needs one
  Consul     https://127.0.0.1:$CONSUL_PORT/ui   HTTPS only (certificate from $c/ca.pem), ACLs on,
             default deny: a token per binary (README "Consul ACLs") in $s/tokens.env;
             the management token is EC_DEMO_CONSUL_MANAGEMENT_TOKEN there
  producer   $RATE events/s to data ID '$DATA_ID', over mutual TLS with the app token

Every client command needs the CA, a client certificate and a token. Pass them:
  EVENT_CATCHER_CLIENT_TOKEN=$app \\
    $BIN/ec-client $tls \\
    stream --gateway $gw --data-id $DATA_ID
or set them once for this shell (the TLS files, the app token and the console's Consul token
as EVENT_CATCHER_* variables; CONSUL_HTTP_* and CONSUL_CACERT for setup-consul.sh and consul):
  source $s/env.sh
  $BIN/ec-client stream --gateway $gw --data-id $DATA_ID --proxy
  echo hello | $BIN/ec-client publish --gateway $gw --data-id other   # after mapping 'other'
EOF
    if [[ -x "$BIN/ec-console" ]]; then
        echo "  EVENT_CATCHER_CLIENT_TOKEN=$admin $BIN/ec-console --gateway $gw --consul-addr 127.0.0.1:$CONSUL_PORT   # after env.sh"
    fi
    cat <<EOF

Refused, to see it:
  $BIN/ec-client --tls-ca $c/ca.pem stream --gateway $gw --data-id $DATA_ID   # no client certificate
  EVENT_CATCHER_CLIENT_TOKEN= $BIN/ec-client $tls stream --gateway $gw --data-id $DATA_ID   # no token
  python3 scripts/attacks/forged_replica.py --tls-ca $c/ca.pem --tls-cert $c/node2.pem \\
    --tls-key $c/node2.key --claim node3 --token $app   # a forged replica with node2's certificate

  scripts/demo.sh kill node1 | restart node1 | status | down   # as in the plain demo
EOF
}

# --------------------------------------------------------------------------------------------
# cluster: 3 Consul servers and one client agent per machine, as production runs Consul
# --------------------------------------------------------------------------------------------

CLUSTER_PORT="${EC_DEMO_CLUSTER_PORT:-18500}"
SERVERS=(server1 server2 server3)
CLUSTER_MEMBERS=(server1 server2 server3 machine1 machine2 machine3 machine4)
CLUSTER_COMPONENTS=("${CLUSTER_MEMBERS[@]}" node1 node2 node3 gateway producer)

# Port `kind` (http, lan, wan, server) of Consul member `name` (serverN, machineN).
member_port() {
    local k base
    case "$1" in
    server*) k="${1#server}" ;;
    machine*) k=$((${1#machine} + 3)) ;;
    *) die "no Consul member $1" ;;
    esac
    base=$((CLUSTER_PORT + 10 * k))
    case "$2" in
    http) echo "$base" ;;
    lan) echo $((base + 1)) ;;
    wan) echo $((base + 2)) ;;
    server) echo $((base + 3)) ;;
    esac
}

# A demo started with `cluster` stays one until the next `up`: status, kill and down follow it.
DEV_COMPONENTS=("${COMPONENTS[@]}")
DEV_CONSUL_PORT="$CONSUL_PORT"
use_dev_layout() {
    CLUSTER=0
    COMPONENTS=("${DEV_COMPONENTS[@]}")
    CONSUL_PORT="$DEV_CONSUL_PORT"
}
use_cluster_layout() {
    CLUSTER=1
    COMPONENTS=("${CLUSTER_COMPONENTS[@]}")
    # The gateway, the console and setup-consul.sh talk to machine4's agent.
    CONSUL_PORT="$(member_port machine4 http)"
}
if [[ -f "$DEMO/mode" && "$(cat "$DEMO/mode")" == cluster ]]; then
    use_cluster_layout
fi

# One Consul agent: a server (bootstrap-expect 3) or a machine's client agent, with its own
# data dir and ports; every one retry-joins the servers, so a rebooted member finds them.
# Gossip keeps Consul's production timings: a dead machine is marked failed in a few seconds.
start_member() {
    local name="$1" consul="$2" args=() s
    mkdir -p "$DEMO/consul/$name"
    case "$name" in
    server*) args=(-server -bootstrap-expect 3 -hcl 'performance { raft_multiplier = 1 }') ;;
    machine4) args=(-ui) ;;
    esac
    for s in "${SERVERS[@]}"; do
        args+=(-retry-join "127.0.0.1:$(member_port "$s" lan)")
    done
    log "starting Consul $name on 127.0.0.1:$(member_port "$name" http)"
    setsid "$consul" agent -node "demo-$name" -data-dir "$DEMO/consul/$name" \
        -bind 127.0.0.1 -client 127.0.0.1 -disable-host-node-id \
        -http-port "$(member_port "$name" http)" -serf-lan-port "$(member_port "$name" lan)" \
        -serf-wan-port "$(member_port "$name" wan)" -server-port "$(member_port "$name" server)" \
        -dns-port -1 -hcl 'ports { grpc = -1 }' -hcl 'disable_update_check = true' \
        -retry-interval 1s "${args[@]}" </dev/null >>"$LOGS/$name.log" 2>&1 &
    write_pid "$name" $! "-node demo-$name"
}

# Every Consul member as the gateway's agent sees it: a killed machine shows `failed`.
cluster_members() {
    echo "Consul members:"
    curl -sf "http://127.0.0.1:$CONSUL_PORT/v1/agent/members" |
        jq -r 'sort_by(.Name)[] | "  \(.Name)  \(.Tags.role)  " +
            ({"1": "alive", "2": "leaving", "3": "left", "4": "failed"}[.Status | tostring] // "status \(.Status)")'
}

members_alive() {
    local n
    n="$(curl -sf "http://127.0.0.1:$CONSUL_PORT/v1/agent/members" | jq '[.[] | select(.Status == 1)] | length')"
    [[ "$n" -ge ${#CLUSTER_MEMBERS[@]} ]]
}

cluster_up() {
    local c consul p
    for c in "${CLUSTER_COMPONENTS[@]}" consul; do
        if pid_of "$c" >/dev/null; then
            die "the demo is already running ($c has pid $(pid_of "$c")); 'scripts/demo.sh status' or 'scripts/demo.sh down'"
        fi
    done
    for tool in curl jq; do
        command -v "$tool" >/dev/null || die "$tool is required (e.g. apt-get install $tool)"
    done
    use_cluster_layout
    for c in "${CLUSTER_MEMBERS[@]}"; do
        for p in http lan wan server; do
            if port_busy "$(member_port "$c" "$p")"; then
                die "port $(member_port "$c" "$p") on 127.0.0.1 is in use; stop what uses it or pick another base with EC_DEMO_CLUSTER_PORT"
            fi
        done
    done
    for c in 1 2 3; do
        for p in "$(node_grpc_port "$c")" "$(node_health_port "$c")"; do
            if port_busy "$p"; then
                die "port $p on 127.0.0.1 is in use; pick other ports with EC_DEMO_NODE_PORT"
            fi
        done
    done
    if port_busy "$GATEWAY_PORT"; then
        die "port $GATEWAY_PORT on 127.0.0.1 is in use; pick another with EC_DEMO_GATEWAY_PORT"
    fi
    # Fresh Consul state and fresh node logs: their replication epochs must match.
    rm -rf "$DEMO"/node1 "$DEMO"/node2 "$DEMO"/node3 "$DEMO/consul" "$LOGS" "$DEMO/producer.seq" "$SECURE_DIR"
    mkdir -p "$DEMO" "$PIDS" "$LOGS"
    printf '*\n' >"$DEMO/.gitignore"
    echo cluster >"$DEMO/mode"
    build
    trap 'rc=$?; if [[ $rc != 0 ]]; then log "start failed; stopping what was started"; down_all; fi' EXIT
    consul="$("$ROOT/scripts/install-consul.sh" | tail -n 1)"
    [[ -x "$consul" ]] || die "scripts/install-consul.sh did not provide a consul binary"
    for c in "${CLUSTER_MEMBERS[@]}"; do
        start_member "$c" "$consul"
    done
    wait_until "the three Consul servers electing a leader" consul_has_leader
    wait_until "all seven Consul agents alive in the cluster" members_alive
    for c in 1 2 3; do
        start_node "$c"
    done
    start_gateway
    wait_until "all three nodes passing their Consul health checks" nodes_passing
    log "mapping data ID $DATA_ID to node1,node2,node3 (node1 is the primary)"
    setup_consul --data-id="$DATA_ID" --node-id=node1,node2,node3 >&2
    start_producer
    wait_until "the first event of $DATA_ID reaching readers through the gateway" routable
    trap - EXIT
    print_next
    cat <<EOF

Cluster layout (Consul HTTP API ports):
  servers      server1 :$(member_port server1 http)  server2 :$(member_port server2 http)  server3 :$(member_port server3 http)
  machine1-3   client agents :$(member_port machine1 http) :$(member_port machine2 http) :$(member_port machine3 http), node1-3 registered with their own
  machine4     client agent :$(member_port machine4 http) for the gateway, the console and the UI
  scripts/demo.sh kill machine1      # agent and node die together: Serf marks the machine
                                     # failed and the gateway promotes a replica
  scripts/demo.sh restart machine1   # boots it again: it rejoins and follows the new primary
EOF
}

# The number N of `machineN` (1-3: the machines with a node); dies otherwise.
machine_number() {
    [[ "${1:-}" =~ ^machine([123])$ ]] || die "name a machine with a node: machine1, machine2 or machine3 (got '${1:-}')"
    echo "${BASH_REMATCH[1]}"
}

kill_machine() {
    local n pid c
    [[ "${CLUSTER:-0}" == 1 ]] || die "machines exist in cluster mode only: scripts/demo.sh cluster"
    n="$(machine_number "$1")"
    for c in "machine$n" "node$n"; do
        if pid="$(pid_of "$c")"; then
            log "SIGKILL $c (pid $pid); the PID file stays, so 'status' shows it STOPPED"
            kill -KILL "$pid"
        fi
    done
}

restart_machine() {
    local n consul
    [[ "${CLUSTER:-0}" == 1 ]] || die "machines exist in cluster mode only: scripts/demo.sh cluster"
    n="$(machine_number "$1")"
    if pid_of "machine$n" >/dev/null; then
        die "machine$n is running; 'scripts/demo.sh kill machine$n' first"
    fi
    consul="$("$ROOT/scripts/install-consul.sh" | tail -n 1)"
    start_member "machine$n" "$consul"
    wait_until "machine$n's agent rejoining the cluster" \
        curl -sf "http://127.0.0.1:$(member_port "machine$n" http)/v1/catalog/nodes"
    pid_of "node$n" >/dev/null || restart_node "node$n"
}

case "${1:-up}" in
up) up ;;
cluster) cluster_up ;;
down) down ;;
status) status ;;
kill) if [[ "${2:-}" == machine* ]]; then kill_machine "$2"; else kill_node "${2:-}"; fi ;;
restart) if [[ "${2:-}" == machine* ]]; then restart_machine "$2"; else restart_node "${2:-}"; fi ;;
secure) secure ;;
-h | --help | help) sed -n '2,41p' "$0" | sed 's/^# \{0,1\}//' ;;
*) die "unknown command '$1'; use up, secure, cluster, status, kill nodeN|machineN, restart nodeN|machineN or down" ;;
esac
