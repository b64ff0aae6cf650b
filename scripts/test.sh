#!/usr/bin/env bash
# test.sh — the one test command for users and CI: format check, clippy, the whole test suite.
#
# Runs from the repo root whatever the caller's directory. Consul tests need a real agent
# binary: scripts/install-consul.sh provides one and its path is exported as EC_CONSUL_BIN
# for ec-testkit. Extra arguments go to `cargo test` (e.g. `scripts/test.sh -p ec-node`).
# Stops at the first failing step with that step's exit code.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

section() {
    printf '\n==== %s ====\n' "$*"
}

# The scripts and their tests use curl, jq and xz. They ship with most Debian machines; on a
# fresh one without them, install them from Debian's archive when we are allowed to.
missing=()
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v jq >/dev/null 2>&1 || missing+=(jq)
command -v xz >/dev/null 2>&1 || missing+=(xz-utils)
if [[ ${#missing[@]} -gt 0 ]]; then
    section "installing ${missing[*]}"
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    else
        echo "test.sh: missing ${missing[*]}; install them (e.g. sudo apt-get install ${missing[*]}) and rerun" >&2
        exit 1
    fi
fi

section "consul binary (scripts/install-consul.sh)"
consul_bin="$(scripts/install-consul.sh | tail -n 1)"
if [[ -z "$consul_bin" || ! -x "$consul_bin" ]]; then
    echo "test.sh: scripts/install-consul.sh did not produce a consul binary; see its messages above" >&2
    exit 1
fi
export EC_CONSUL_BIN="$consul_bin"
echo "EC_CONSUL_BIN=$EC_CONSUL_BIN"

section "cargo fmt --all -- --check"
cargo fmt --all -- --check

section "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

section "cargo test --workspace $*"
cargo test --workspace "$@"

section "README screenshots match the console snapshots"
if command -v python3 >/dev/null 2>&1; then
    python3 scripts/render-screenshots.py --check
else
    echo "python3 not found; skipped (the screenshots are checked where it exists)"
fi

section "all checks passed"
