#!/usr/bin/env bash
# install-consul.sh — make a real Consul binary available for Event Catcher's tests.
#
# Prints the absolute path of a working `consul` binary as the LAST line of stdout;
# all progress goes to stderr, so callers can do `EC_CONSUL_BIN=$(scripts/install-consul.sh | tail -n1)`.
#
# Lookup order (first that works wins; the script is idempotent):
#   1. $EC_CONSUL_BIN, if set and executable;
#   2. `consul` on PATH;
#   3. <repo>/.tools/consul, if it exists and `consul version` runs;
#   4. download Debian bullseye's `consul` package (Consul 1.8.7) from the Debian mirror
#      this machine's own apt configuration already uses, verify its SHA256 against the
#      archive's Packages index, and extract usr/bin/consul to <repo>/.tools/consul.
#
# The mirror host is read from apt's configuration on purpose: this script never names a
# host, so it only reaches whatever package archive the machine is already set up to use.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
TOOLS_DIR="$REPO_ROOT/.tools"
TARGET="$TOOLS_DIR/consul"
SUITE="bullseye"
PACKAGE="consul"

log() { printf 'install-consul: %s\n' "$*" >&2; }

fail() {
    log "ERROR: $*"
    cat >&2 <<'EOF'
install-consul: other ways to provide Consul (any one is enough):
  - set EC_CONSUL_BIN=/absolute/path/to/consul (tests use it directly);
  - put a `consul` binary on PATH (e.g. `apt-get install consul` where available);
  - download HashiCorp's release zip for your platform (consul_<version>_linux_<arch>.zip
    from HashiCorp's releases site), unzip it and copy `consul` to .tools/consul in the repo.
EOF
    exit 1
}

# Runs `consul version` so we only ever hand out a binary that actually executes here.
runs() {
    "$1" version >/dev/null 2>&1
}

found() {
    log "using $1"
    "$1" version 2>/dev/null | head -n1 >&2 || true
    printf '%s\n' "$1"
    exit 0
}

# 1. Explicit override.
if [[ -n "${EC_CONSUL_BIN:-}" ]]; then
    if [[ -x "$EC_CONSUL_BIN" ]]; then
        found "$(cd "$(dirname "$EC_CONSUL_BIN")" && pwd)/$(basename "$EC_CONSUL_BIN")"
    fi
    log "EC_CONSUL_BIN=$EC_CONSUL_BIN is not an executable file; looking elsewhere"
fi

# 2. Already on PATH.
if on_path="$(command -v consul 2>/dev/null)" && [[ -n "$on_path" ]]; then
    found "$(cd "$(dirname "$on_path")" && pwd)/$(basename "$on_path")"
fi

# 3. Installed by an earlier run.
if [[ -x "$TARGET" ]] && runs "$TARGET"; then
    found "$TARGET"
fi

# 4. Download from the machine's Debian mirror.
command -v curl >/dev/null 2>&1 || fail "curl is not installed (needed to download the consul package)"
command -v dpkg >/dev/null 2>&1 || fail "dpkg is not available: this download path only works on Debian/Ubuntu"
command -v xz >/dev/null 2>&1 || fail "xz is not installed (needed to read the Packages.xz index)"

ARCH="$(dpkg --print-architecture)" || fail "could not determine the architecture with dpkg --print-architecture"

# A suite name counts as Debian's when its codename is one of Debian's releases; this keeps
# third-party repositories (nodesource, cloud SDKs, ...) and Ubuntu suites out.
is_debian_suite() {
    local s="${1%%-*}"
    case "$s" in
        buster | bullseye | bookworm | trixie | forky | duke | sid | stable | testing | unstable | oldstable | oldoldstable)
            return 0
            ;;
    esac
    return 1
}

# Prints candidate mirror URIs (main archive first, never -security), one per line.
mirror_candidates() {
    local f line key value uris suites u s ok
    shopt -s nullglob
    for f in /etc/apt/sources.list.d/*.sources; do
        # deb822: stanzas separated by blank lines; collect URIs/Suites per stanza.
        uris=""
        suites=""
        while IFS= read -r line || [[ -n "$line" ]]; do
            if [[ -z "${line//[[:space:]]/}" ]]; then
                emit_stanza
                uris=""
                suites=""
                continue
            fi
            [[ "$line" =~ ^[[:space:]]*# ]] && continue
            if [[ "$line" =~ ^([A-Za-z-]+):[[:space:]]*(.*)$ ]]; then
                key="${BASH_REMATCH[1]}"
                value="${BASH_REMATCH[2]}"
                case "${key,,}" in
                    uris) uris="$value" ;;
                    suites) suites="$value" ;;
                esac
            fi
        done <"$f"
        emit_stanza
    done
    if [[ -f /etc/apt/sources.list ]]; then
        # One-line format: deb [options] URI SUITE COMPONENTS...
        while IFS= read -r line || [[ -n "$line" ]]; do
            line="${line%%#*}"
            read -r -a words <<<"$line" || true
            [[ "${#words[@]}" -ge 3 && "${words[0]}" == "deb" ]] || continue
            local i=1
            if [[ "${words[1]}" == \[* ]]; then
                while [[ $i -lt ${#words[@]} && "${words[$i]}" != *\] ]]; do i=$((i + 1)); done
                i=$((i + 1))
            fi
            u="${words[$i]:-}"
            s="${words[$((i + 1))]:-}"
            [[ -n "$u" && -n "$s" ]] || continue
            [[ "$s" == *-security || "$u" == *security* ]] && continue
            is_debian_suite "$s" && printf '%s\n' "${u%/}"
        done </etc/apt/sources.list
    fi
}

emit_stanza() {
    [[ -n "$uris" && -n "$suites" ]] || return 0
    ok=0
    for s in $suites; do
        [[ "$s" == *-security ]] && continue
        if is_debian_suite "$s"; then ok=1; fi
    done
    [[ $ok -eq 1 ]] || return 0
    for u in $uris; do
        [[ "$u" == *security* ]] && continue
        printf '%s\n' "${u%/}"
    done
}

mapfile -t MIRRORS < <(mirror_candidates | awk '!seen[$0]++')
[[ ${#MIRRORS[@]} -gt 0 ]] || fail "found no Debian archive mirror in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list"

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

CURL=(curl --fail --silent --show-error --location --retry 3 --connect-timeout 20)

MIRROR=""
for m in "${MIRRORS[@]}"; do
    index_url="$m/dists/$SUITE/main/binary-$ARCH/Packages.xz"
    log "fetching package index $index_url"
    if "${CURL[@]}" -o "$TMP/Packages.xz" "$index_url"; then
        MIRROR="$m"
        break
    fi
    log "could not fetch the index from $m; trying the next mirror"
done
[[ -n "$MIRROR" ]] || fail "could not download dists/$SUITE/main/binary-$ARCH/Packages.xz from any configured Debian mirror (${MIRRORS[*]})"

xz -dc "$TMP/Packages.xz" >"$TMP/Packages" || fail "could not decompress the $SUITE Packages index"

# Pick the stanza whose Package: is exactly "consul" and read its Filename/SHA256/Version.
read -r FILENAME SHA256 VERSION < <(awk -v pkg="$PACKAGE" '
    /^$/ { if (p == pkg && f != "") { print f, s, v; exit } p = ""; f = ""; s = ""; v = ""; next }
    /^Package: / { p = $2 }
    /^Filename: / { f = $2 }
    /^SHA256: / { s = $2 }
    /^Version: / { v = $2 }
    END { if (p == pkg && f != "") print f, s, v }
' "$TMP/Packages") || true
[[ -n "${FILENAME:-}" && -n "${SHA256:-}" ]] || fail "no '$PACKAGE' package for $ARCH in Debian $SUITE's index at $MIRROR"

log "downloading $PACKAGE $VERSION ($FILENAME)"
DEB="$TMP/consul.deb"
"${CURL[@]}" -o "$DEB" "$MIRROR/$FILENAME" || fail "could not download $MIRROR/$FILENAME"

actual="$(sha256sum "$DEB" | awk '{print $1}')"
[[ "$actual" == "$SHA256" ]] || fail "SHA256 mismatch for $FILENAME: index says $SHA256, downloaded file is $actual"
log "sha256 verified ($SHA256)"

EXTRACT="$TMP/root"
mkdir -p "$EXTRACT"
if command -v dpkg-deb >/dev/null 2>&1; then
    dpkg-deb -x "$DEB" "$EXTRACT" || fail "dpkg-deb could not extract $DEB"
else
    command -v ar >/dev/null 2>&1 || fail "neither dpkg-deb nor ar is available to unpack the .deb"
    (cd "$TMP" && ar x "$DEB") || fail "ar could not unpack $DEB"
    data="$(ls "$TMP"/data.tar.* 2>/dev/null | head -n1)"
    [[ -n "$data" ]] || fail "no data.tar.* member in $DEB"
    tar -xf "$data" -C "$EXTRACT" || fail "tar could not extract $data"
fi

[[ -f "$EXTRACT/usr/bin/consul" ]] || fail "the package has no usr/bin/consul"
mkdir -p "$TOOLS_DIR"
# Copy to a temp name then rename, so a concurrent reader never sees a half-written binary.
cp "$EXTRACT/usr/bin/consul" "$TARGET.tmp.$$"
chmod 0755 "$TARGET.tmp.$$"
mv -f "$TARGET.tmp.$$" "$TARGET"

runs "$TARGET" || fail "$TARGET was installed but \`consul version\` does not run on this machine"
log "installed $PACKAGE $VERSION to $TARGET"
found "$TARGET"
