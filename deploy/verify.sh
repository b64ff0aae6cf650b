#!/usr/bin/env bash
# verify.sh — check the systemd units in deploy/ with `systemd-analyze verify`.
#
# The binaries are not installed where the units expect them (/usr/local/bin) on a build
# machine, so the units are checked in a temp copy whose ExecStart points at a stand-in
# executable; every other directive is checked as written. Exits non-zero on any warning.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
command -v systemd-analyze >/dev/null ||
    { echo "verify.sh: systemd-analyze not found (Debian: apt-get install systemd)" >&2; exit 2; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
stand_in="$(command -v true)"
for unit in "$here"/*.service; do
    sed "s|/usr/local/bin/ec-[a-z]*|$stand_in|" "$unit" >"$tmp/$(basename "$unit")"
done
out="$(cd "$tmp" && systemd-analyze verify ./*.service 2>&1)" || true
if [[ -n "$out" ]]; then
    echo "$out" >&2
    exit 1
fi
echo "verify.sh: $(cd "$tmp" && ls ./*.service | wc -l) units verified"
