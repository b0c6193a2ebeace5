# shellcheck shell=bash
# Shared helpers for hack/s3/{build,up,down,start,stop}. Sourced, not executed.
#
# Env (all optional):
#   KOMPRESS_S3_DIR       state dir (config, data, logs, env file); default hack/s3/.run
#   KOMPRESS_S3_CACHE     where hack/s3/build caches the garage binary; default ~/.cache/kompress-s3
#   KOMPRESS_S3_GARAGE    use this garage binary instead of the cached build
#   KOMPRESS_S3_NO_BUILD=1  exit 3 instead of building garage when it is not built yet
#   KOMPRESS_S3_BUCKETS   buckets to create on `up` (space separated); default "models datasets"
#   KOMPRESS_S3_KEY_ID / KOMPRESS_S3_SECRET   override the fixed TEST-ONLY access key
#   KOMPRESS_S3_REGION    s3_region written into garage.toml; default us-east-1
#   KOMPRESS_S3_WAIT      seconds to wait for the server to become healthy; default 60
#   KOMPRESS_S3_LOCK_WAIT seconds to wait for another up/start/stop/down on the same dir; default 2400
#   KOMPRESS_S3_STOP_GRACE  seconds `stop`/`down` wait after SIGTERM before SIGKILL; default 20

set -euo pipefail

S3_HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
GARAGE_VERSION=2.5.0
# How hack/s3/build compiles Garage: only what the tests use. One db engine (sqlite, the
# `db_engine` written into garage.toml below; bundled so no system libsqlite3 is needed); no
# lmdb, k2v or metrics. opt-level 1: a loopback test server needs no -O3, and the build is the
# slowest step of a cold `make test`.
GARAGE_FEATURES=sqlite,bundled-libs
GARAGE_OPT_LEVEL=1
# The cache key: a different version or build setting gets a new folder (never a stale binary).
GARAGE_BUILD_ID="$GARAGE_VERSION-$(printf 'garage %s features=%s opt-level=%s' "$GARAGE_VERSION" "$GARAGE_FEATURES" "$GARAGE_OPT_LEVEL" | sha256sum | cut -c1-10)"
S3_CACHE="${KOMPRESS_S3_CACHE:-$HOME/.cache/kompress-s3}"
GARAGE_CACHED_BIN="$S3_CACHE/garage-$GARAGE_BUILD_ID/bin/garage"
S3_DIR="${KOMPRESS_S3_DIR:-$S3_HACK_DIR/.run}"
S3_CONF="$S3_DIR/garage.toml"
S3_STATE="$S3_DIR/state"
S3_PIDFILE="$S3_DIR/garage.pid"
S3_LOG="$S3_DIR/garage.log"
S3_ENVFILE="$S3_DIR/env"
S3_WAIT="${KOMPRESS_S3_WAIT:-60}"

# TEST-ONLY credentials. They are public (committed to this repo) and must never
# protect anything: the server only listens on 127.0.0.1 and holds throwaway data.
# Key id format follows Garage's own: "GK" + 24 hex chars ("kompresstest" in hex).
S3_KEY_ID="${KOMPRESS_S3_KEY_ID:-GK6b6f6d707265737374657374}"
S3_SECRET="${KOMPRESS_S3_SECRET:-831ea933a73d01348c031a3b1038b87f289163ef339cb38a6da2b7bbfc58dbd6}"

log() { echo "hack/s3: $*" >&2; }
die() { log "error: $*"; exit 1; }

# Path of the garage binary (builds it on first use: the slowest step of a cold test run).
garage_bin() {
  if [[ -n "${KOMPRESS_S3_GARAGE:-}" ]]; then
    echo "$KOMPRESS_S3_GARAGE"
    return
  fi
  local cached="$GARAGE_CACHED_BIN"
  if [[ -x "$cached" ]]; then
    echo "$cached"
    return
  fi
  if [[ "${KOMPRESS_S3_NO_BUILD:-}" == 1 ]]; then
    log "garage $GARAGE_VERSION is not built ($cached) and KOMPRESS_S3_NO_BUILD=1; run hack/s3/build"
    exit 3
  fi
  log "garage $GARAGE_VERSION not built yet; running hack/s3/build (a cold build takes minutes: see hack/s3/README.md)"
  "$S3_HACK_DIR/build" | tail -n 1
}

garage() { "$GARAGE" -c "$S3_CONF" "$@"; }

# A free TCP port on 127.0.0.1 (the kernel picks it).
free_port() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
  else
    local p
    while :; do
      p=$((20000 + RANDOM % 40000))
      port_in_use "$p" || { echo "$p"; return; }
    done
  fi
}

rand_hex() { # $1 = bytes
  if command -v openssl >/dev/null 2>&1; then
    openssl rand -hex "$1"
  else
    python3 -c "import secrets,sys; print(secrets.token_hex(int(sys.argv[1])))" "$1"
  fi
}

# HTTP status code of a GET (000 if no answer).
http_code() {
  if command -v curl >/dev/null 2>&1; then
    curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" || true
  else
    python3 - "$1" <<'PY' || echo 000
import sys, urllib.request, urllib.error
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=2).status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception:
    print("000")
PY
  fi
}

load_state() {
  [[ -f "$S3_STATE" ]] || die "no $S3_STATE: the server was never set up (run hack/s3/up)"
  # shellcheck disable=SC1090
  . "$S3_STATE"
}

# pid of the running server, or empty.
running_pid() {
  [[ -f "$S3_PIDFILE" ]] || return 0
  local pid
  pid="$(cat "$S3_PIDFILE")"
  [[ -n "$pid" ]] || return 0
  # Make sure the pid is still *our* garage (pids get reused).
  local cmd
  cmd="$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")" || return 0
  if [[ "$cmd" == *"-c $S3_CONF server"* ]]; then
    echo "$pid"
  fi
}

# Wait until the admin /health endpoint says the cluster can serve requests.
wait_healthy() {
  local deadline=$((SECONDS + S3_WAIT)) code pid
  while :; do
    pid="$(running_pid)"
    [[ -n "$pid" ]] || { tail -n 30 "$S3_LOG" >&2 || true; die "garage exited during startup (log: $S3_LOG)"; }
    code="$(http_code "http://127.0.0.1:$ADMIN_PORT/health")"
    [[ "$code" == 200 ]] && return 0
    ((SECONDS < deadline)) || { tail -n 30 "$S3_LOG" >&2 || true; die "garage not healthy after ${S3_WAIT}s (last /health: $code; log: $S3_LOG)"; }
    sleep 0.2
  done
}

# Wait until the RPC side answers the CLI (needed before layout commands).
wait_rpc() {
  local deadline=$((SECONDS + S3_WAIT))
  until garage status >/dev/null 2>&1; do
    [[ -n "$(running_pid)" ]] || { tail -n 30 "$S3_LOG" >&2 || true; die "garage exited during startup (log: $S3_LOG)"; }
    ((SECONDS < deadline)) || die "garage RPC not answering after ${S3_WAIT}s (log: $S3_LOG)"
    sleep 0.2
  done
}

port_in_use() { # $1 = port; true if something listens on 127.0.0.1:$1
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Start the server process on the existing config (same ports, same data).
start_server() {
  local p
  for p in "$S3_PORT" "$RPC_PORT" "$ADMIN_PORT"; do
    port_in_use "$p" && die "port 127.0.0.1:$p is taken by another process; cannot (re)start garage with its recorded ports (hack/s3/down then hack/s3/up picks new ones)"
  done
  echo "---- start $(date -u +%FT%TZ) ----" >>"$S3_LOG"
  # setsid: own session, so the server outlives the calling shell / test process
  # and is not hit by its Ctrl-C. Non-interactive bash does not make background
  # jobs group leaders, so setsid execs in place and $! is garage's pid.
  # --single-node: Garage assigns and applies the one-node layout itself (first run only).
  # --default-access-key: imports GARAGE_DEFAULT_ACCESS_KEY / _SECRET_KEY if missing
  #   (what `garage key import --yes` does), and refuses to start if that id exists
  #   with another secret.
  NO_COLOR=1 RUST_LOG="${RUST_LOG:-garage=info}" \
    GARAGE_DEFAULT_ACCESS_KEY="$S3_KEY_ID" GARAGE_DEFAULT_SECRET_KEY="$S3_SECRET" \
    setsid "$GARAGE" -c "$S3_CONF" server --single-node --default-access-key \
    </dev/null >>"$S3_LOG" 2>&1 9>&- &
  local pid=$!
  echo "$pid" >"$S3_PIDFILE"
  # Until setsid has exec'd, /proc/$pid still shows the forked shell.
  local deadline=$((SECONDS + 10))
  while [[ -z "$(running_pid)" ]]; do
    kill -0 "$pid" 2>/dev/null || { tail -n 30 "$S3_LOG" >&2 || true; die "garage exited at once (log: $S3_LOG)"; }
    ((SECONDS < deadline)) || die "garage (pid $pid) did not start"
    sleep 0.05
  done
}

# True while $1 runs. A zombie counts as gone: it holds no ports or files any
# more, and some init processes reap orphans only every second or so.
alive() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [[ "${stat:0:1}" != Z ]]
}

# Stop the server. $1 = TERM (graceful, default) or KILL (simulated crash).
stop_server() {
  local sig="${1:-TERM}" pid
  pid="$(running_pid)"
  if [[ -z "$pid" ]]; then
    rm -f "$S3_PIDFILE"
    return 0
  fi
  kill "-$sig" "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + ${KOMPRESS_S3_STOP_GRACE:-20}))
  while alive "$pid"; do
    if ((SECONDS >= deadline)); then
      log "garage (pid $pid) did not exit after SIG$sig; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      deadline=$((SECONDS + 10))
    fi
    sleep 0.1
  done
  rm -f "$S3_PIDFILE"
}

write_env() {
  local endpoint="http://127.0.0.1:$S3_PORT" tmp k v bs
  tmp="$(mktemp "$S3_DIR/env.XXXXXX")"
  {
    echo "# Written by hack/s3/up. TEST-ONLY credentials for a throwaway Garage on loopback."
    echo "# KEY=value lines, unquoted (a value with unusual characters is shell-escaped)."
    echo "# In a shell: set -a; . hack/s3/.run/env; set +a"
    for k in AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION AWS_DEFAULT_REGION \
      AWS_ENDPOINT_URL AWS_ENDPOINT_URL_S3 AWS_ALLOW_HTTP AWS_EC2_METADATA_DISABLED \
      KOMPRESS_S3_ENDPOINT KOMPRESS_S3_REGION KOMPRESS_S3_BUCKETS KOMPRESS_S3_DIR \
      KOMPRESS_S3_ADMIN_ENDPOINT KOMPRESS_S3_PID; do
      case "$k" in
        AWS_ACCESS_KEY_ID) v="$S3_KEY_ID" ;;
        AWS_SECRET_ACCESS_KEY) v="$S3_SECRET" ;;
        AWS_REGION | AWS_DEFAULT_REGION | KOMPRESS_S3_REGION) v="$S3_REGION" ;;
        AWS_ENDPOINT_URL | AWS_ENDPOINT_URL_S3 | KOMPRESS_S3_ENDPOINT) v="$endpoint" ;;
        AWS_ALLOW_HTTP | AWS_EC2_METADATA_DISABLED) v=true ;;
        KOMPRESS_S3_BUCKETS) read -ra bs <<<"$S3_BUCKETS"; v="$(IFS=,; echo "${bs[*]}")" ;; # comma-separated
        KOMPRESS_S3_DIR) v="$S3_DIR" ;;
        KOMPRESS_S3_ADMIN_ENDPOINT) v="http://127.0.0.1:$ADMIN_PORT" ;;
        KOMPRESS_S3_PID) v="$(cat "$S3_PIDFILE")" ;;
      esac
      if [[ "$v" =~ ^[A-Za-z0-9_./:,@+=-]*$ ]]; then
        printf '%s=%s\n' "$k" "$v"
      else
        printf '%s=%q\n' "$k" "$v" # e.g. a KOMPRESS_S3_DIR with spaces
      fi
    done
  } >"$tmp"
  mv -f "$tmp" "$S3_ENVFILE"
}

# Serialize up/down/start/stop on one state dir (parallel test processes).
take_lock() {
  mkdir -p "$S3_DIR"
  exec 9>"$S3_DIR/.lock"  # (closed for the server process: see start_server)
  if ! flock -w 5 9; then
    log "waiting for the lock on $S3_DIR (another up/start/stop/down, or a build, is running)"
    flock -w "${KOMPRESS_S3_LOCK_WAIT:-2400}" 9 || die "timed out waiting for $S3_DIR/.lock"
  fi
}
