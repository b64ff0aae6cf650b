#!/usr/bin/env bash
# setup-consul.sh — manage Event Catcher's data-to-node mappings in Consul KV.
#
# A mapping lives at <kv_prefix><data_id> and holds comma-separated node IDs, primary first
# (the seed's single-node form `--data-id=test-data --node-id=node1` stays valid). Every
# write and delete is a check-and-set on the key's ModifyIndex (cas=0 for a new key) and is
# retried on conflict, so concurrent writers never silently overwrite each other.
# Needs only bash, curl and jq. Exit codes: 0 done, 1 Consul failed or unreachable,
# 2 bad usage or an invalid ID (nothing is written).
set -euo pipefail
# IDs are validated as ASCII; in the C locale [A-Za-z] cannot match accented letters and
# ${#x} counts bytes, so non-ASCII input is refused rather than half-accepted.
export LC_ALL=C

PROG="$(basename "$0")"
MAX_CAS_ATTEMPTS=20
ID_RULE="1-128 characters from [A-Za-z0-9._-], and not '.' or '..'"

usage() {
    cat <<EOF
Usage:
  $PROG --data-id=ID --node-id=NODE[,NODE...]   map a data ID to nodes (first = primary)
  $PROG --delete --data-id=ID                    remove a mapping
  $PROG --list                                   print every mapping as 'data_id -> nodes'

Options (each also accepted as '--name value'):
  --data-id=ID         the data ID; $ID_RULE
  --node-id=NODE       node ID(s), same rule; comma-separated or repeated, primary first
  --delete             delete the mapping of --data-id
  --list               list all mappings under the prefix
  --consul-addr=ADDR   Consul HTTP address, HOST:PORT or http(s)://HOST:PORT
                       (default: \$CONSUL_HTTP_ADDR, else
                       \$EVENT_CATCHER_CONSUL_HOST:\$EVENT_CATCHER_CONSUL_PORT, else localhost:8500)
  --kv-prefix=PREFIX   KV prefix (default: \$EVENT_CATCHER_CONSUL_KV_PREFIX, else streaming/data/)
  -h, --help           show this help

Environment: CONSUL_HTTP_TOKEN is sent as the X-Consul-Token header when set;
CONSUL_CACERT (a PEM CA file) verifies an https:// Consul address.

Examples:
  $PROG --data-id=test-data --node-id=node1
  $PROG --data-id=orders --node-id=node1,node2
  $PROG --list
  $PROG --delete --data-id=orders
EOF
}

die_usage() {
    printf '%s: %s\n' "$PROG" "$*" >&2
    printf "Run '%s --help' for usage.\n" "$PROG" >&2
    exit 2
}

die() {
    printf '%s: %s\n' "$PROG" "$*" >&2
    exit 1
}

for tool in curl jq; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is required but not installed (e.g. apt-get install $tool)"
done

# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------
DATA_ID=""
DATA_ID_SET=0
NODE_ARGS=()
MODE_DELETE=0
MODE_LIST=0
CONSUL_ADDR_ARG=""
KV_PREFIX_ARG=""
KV_PREFIX_SET=0

# Reads the value of an option given as `--x=v` or `--x v`; sets VALUE and SHIFT_BY.
take_value() {
    local name="$1" arg="$2" next_present="$3" next="${4-}"
    if [[ "$arg" == *=* ]]; then
        VALUE="${arg#*=}"
        SHIFT_BY=1
    elif [[ "$next_present" == 1 ]]; then
        VALUE="$next"
        SHIFT_BY=2
    else
        die_usage "$name needs a value"
    fi
}

while [[ $# -gt 0 ]]; do
    arg="$1"
    has_next=0
    [[ $# -ge 2 ]] && has_next=1
    case "$arg" in
        -h | --help)
            usage
            exit 0
            ;;
        --data-id | --data-id=*)
            take_value --data-id "$arg" "$has_next" "${2-}"
            [[ $DATA_ID_SET == 0 ]] || die_usage "--data-id given more than once"
            DATA_ID="$VALUE"
            DATA_ID_SET=1
            ;;
        --node-id | --node-id=*)
            take_value --node-id "$arg" "$has_next" "${2-}"
            NODE_ARGS+=("$VALUE")
            ;;
        --consul-addr | --consul-addr=*)
            take_value --consul-addr "$arg" "$has_next" "${2-}"
            CONSUL_ADDR_ARG="$VALUE"
            ;;
        --kv-prefix | --kv-prefix=*)
            take_value --kv-prefix "$arg" "$has_next" "${2-}"
            KV_PREFIX_ARG="$VALUE"
            KV_PREFIX_SET=1
            ;;
        --delete)
            MODE_DELETE=1
            SHIFT_BY=1
            ;;
        --list)
            MODE_LIST=1
            SHIFT_BY=1
            ;;
        *)
            die_usage "unknown argument '$arg'"
            ;;
    esac
    shift "$SHIFT_BY"
done

# An ID is safe as one path segment and one element of a comma-separated list.
valid_id() {
    local id="$1"
    [[ ${#id} -ge 1 && ${#id} -le 128 ]] || return 1
    [[ "$id" =~ ^[A-Za-z0-9._-]+$ ]] || return 1
    [[ "$id" != "." && "$id" != ".." ]] || return 1
}

check_data_id() {
    [[ $DATA_ID_SET == 1 ]] || die_usage "--data-id is required"
    valid_id "$DATA_ID" || die_usage "invalid data ID '$DATA_ID': a data ID must be $ID_RULE"
}

if [[ $MODE_LIST == 1 ]]; then
    [[ $MODE_DELETE == 0 && $DATA_ID_SET == 0 && ${#NODE_ARGS[@]} -eq 0 ]] ||
        die_usage "--list takes no --data-id, --node-id or --delete"
    MODE=list
elif [[ $MODE_DELETE == 1 ]]; then
    [[ ${#NODE_ARGS[@]} -eq 0 ]] || die_usage "--delete takes no --node-id"
    check_data_id
    MODE=delete
else
    check_data_id
    [[ ${#NODE_ARGS[@]} -gt 0 ]] || die_usage "--node-id is required to write a mapping (or use --delete / --list)"
    NODES=()
    for group in "${NODE_ARGS[@]}"; do
        # Split on commas keeping empty fields, so 'a,,b' and 'a,' are refused, not squeezed.
        rest="$group,"
        while [[ -n "$rest" ]]; do
            node="${rest%%,*}"
            rest="${rest#*,}"
            valid_id "$node" || die_usage "invalid node ID '$node' (in '$group'): a node ID must be $ID_RULE"
            for seen in "${NODES[@]+"${NODES[@]}"}"; do
                [[ "$seen" != "$node" ]] || die_usage "node ID '$node' is given twice; list each node once, primary first"
            done
            NODES+=("$node")
        done
    done
    VALUE_TO_WRITE="$(
        IFS=,
        printf '%s' "${NODES[*]}"
    )"
    MODE=write
fi

# ---------------------------------------------------------------------------------------------
# Where to talk to
# ---------------------------------------------------------------------------------------------
if [[ -n "$CONSUL_ADDR_ARG" ]]; then
    ADDR="$CONSUL_ADDR_ARG"
elif [[ -n "${CONSUL_HTTP_ADDR:-}" ]]; then
    ADDR="$CONSUL_HTTP_ADDR"
elif [[ -n "${EVENT_CATCHER_CONSUL_HOST:-}" || -n "${EVENT_CATCHER_CONSUL_PORT:-}" ]]; then
    ADDR="${EVENT_CATCHER_CONSUL_HOST:-localhost}:${EVENT_CATCHER_CONSUL_PORT:-8500}"
else
    ADDR="localhost:8500"
fi
ADDR="${ADDR%/}"
case "$ADDR" in
    http://* | https://*) BASE_URL="$ADDR" ;;
    *://*) die_usage "unsupported scheme in Consul address '$ADDR' (use HOST:PORT, http:// or https://)" ;;
    *) BASE_URL="http://$ADDR" ;;
esac
[[ "${BASE_URL#*://}" =~ ^[^/[:space:]]+$ ]] || die_usage "invalid Consul address '$ADDR' (expected HOST:PORT)"

if [[ $KV_PREFIX_SET == 1 ]]; then
    PREFIX="$KV_PREFIX_ARG"
else
    PREFIX="${EVENT_CATCHER_CONSUL_KV_PREFIX-streaming/data/}"
fi
# Consul keys never start with '/'; a leading one would only produce '//' in the URL.
while [[ "$PREFIX" == /* ]]; do PREFIX="${PREFIX#/}"; done

# Percent-encodes each '/'-separated segment of a key, keeping the slashes.
encode_key() {
    jq -rn --arg k "$1" '$k | split("/") | map(@uri) | join("/")'
}

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

CURL_ARGS=(--silent --show-error --max-time 15 --connect-timeout 5)
if [[ -n "${CONSUL_HTTP_TOKEN:-}" ]]; then
    # Passed through a header file so the token does not show up in `ps`.
    printf 'X-Consul-Token: %s\n' "$CONSUL_HTTP_TOKEN" >"$TMP/headers"
    CURL_ARGS+=(--header "@$TMP/headers")
fi
if [[ -n "${CONSUL_CACERT:-}" ]]; then
    CURL_ARGS+=(--cacert "$CONSUL_CACERT")
fi

# consul_http METHOD PATH_AND_QUERY [BODY]: sets STATUS and leaves the body in $TMP/body.
consul_http() {
    local method="$1" path="$2" rc=0
    local args=("${CURL_ARGS[@]}" --request "$method" --output "$TMP/body" --write-out '%{http_code}')
    if [[ $# -ge 3 ]]; then
        args+=(--data-binary "$3")
    fi
    STATUS="$(curl "${args[@]}" "$BASE_URL$path" 2>"$TMP/curl.err")" || rc=$?
    if [[ $rc -ne 0 ]]; then
        die "cannot reach Consul at $BASE_URL ($(tr -d '\n' <"$TMP/curl.err")): is Consul running at $ADDR? \
Start one with 'consul agent -dev -client 127.0.0.1 -hcl \"disable_update_check = true\"' \
(scripts/install-consul.sh provides the binary), or point --consul-addr / CONSUL_HTTP_ADDR at yours."
    fi
}

consul_failed() {
    die "Consul at $BASE_URL answered HTTP $STATUS to $1: $(head -c 500 "$TMP/body")"
}

KEY="$PREFIX${DATA_ID}"
KEY_PATH="/v1/kv/$(encode_key "$KEY")"

# Reads the key: sets EXISTS, INDEX (ModifyIndex, 0 when absent) and CURRENT (its value).
read_key() {
    consul_http GET "$KEY_PATH"
    case "$STATUS" in
        200)
            EXISTS=1
            INDEX="$(jq -r '.[0].ModifyIndex' "$TMP/body")"
            CURRENT="$(jq -r '.[0].Value // "" | @base64d' "$TMP/body")"
            ;;
        404)
            EXISTS=0
            INDEX=0
            CURRENT=""
            ;;
        *) consul_failed "GET $KEY" ;;
    esac
}

case "$MODE" in
    write)
        for ((attempt = 1; attempt <= MAX_CAS_ATTEMPTS; attempt++)); do
            read_key
            if [[ $EXISTS == 1 && "$CURRENT" == "$VALUE_TO_WRITE" ]]; then
                echo "$KEY = $VALUE_TO_WRITE (unchanged)"
                exit 0
            fi
            consul_http PUT "$KEY_PATH?cas=$INDEX" "$VALUE_TO_WRITE"
            [[ "$STATUS" == 200 ]] || consul_failed "PUT $KEY"
            if [[ "$(tr -d '[:space:]' <"$TMP/body")" == true ]]; then
                if [[ $EXISTS == 1 ]]; then
                    echo "$KEY = $VALUE_TO_WRITE (was: $CURRENT)"
                else
                    echo "$KEY = $VALUE_TO_WRITE (new)"
                fi
                exit 0
            fi
            # Someone else changed the key between our read and write: read again.
            printf '%s: %s changed concurrently; retrying (%d/%d)\n' "$PROG" "$KEY" "$attempt" "$MAX_CAS_ATTEMPTS" >&2
            sleep 0.1
        done
        die "gave up writing $KEY after $MAX_CAS_ATTEMPTS check-and-set conflicts; another writer keeps changing it"
        ;;
    delete)
        for ((attempt = 1; attempt <= MAX_CAS_ATTEMPTS; attempt++)); do
            read_key
            if [[ $EXISTS == 0 ]]; then
                echo "$KEY does not exist; nothing to delete"
                exit 0
            fi
            # Never send `recurse` here: Consul treats its mere presence as "delete the prefix".
            consul_http DELETE "$KEY_PATH?cas=$INDEX"
            [[ "$STATUS" == 200 ]] || consul_failed "DELETE $KEY"
            if [[ "$(tr -d '[:space:]' <"$TMP/body")" == true ]]; then
                echo "deleted $KEY (was: $CURRENT)"
                exit 0
            fi
            printf '%s: %s changed concurrently; retrying (%d/%d)\n' "$PROG" "$KEY" "$attempt" "$MAX_CAS_ATTEMPTS" >&2
            sleep 0.1
        done
        die "gave up deleting $KEY after $MAX_CAS_ATTEMPTS check-and-set conflicts; another writer keeps changing it"
        ;;
    list)
        consul_http GET "/v1/kv/$(encode_key "$PREFIX")?recurse"
        case "$STATUS" in
            200)
                jq -r --arg p "$PREFIX" '
                    .[]
                    | select(.Key | startswith($p))
                    | (.Key[($p | length):]) as $id
                    | select($id != "")
                    | "\($id) -> \(.Value // "" | @base64d)"
                ' "$TMP/body"
                ;;
            404) echo "no mappings under '$PREFIX' at $BASE_URL" >&2 ;;
            *) consul_failed "GET $PREFIX?recurse" ;;
        esac
        ;;
esac
