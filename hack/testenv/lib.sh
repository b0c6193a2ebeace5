# Shared helpers of hack/testenv/{up,down,agent,smoke}; sourced, not run.
# shellcheck shell=bash
# shellcheck source=versions.sh
source "$(dirname "${BASH_SOURCE[0]}")/versions.sh"

TESTENV_HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN="${KOMPRESS_TESTENV_BIN:-$(testenv_bin_dir)}"
RUN="${KOMPRESS_TESTENV_DIR:-$TESTENV_HERE/.run}"
KUBECONFIG_ADMIN="$RUN/kubeconfig"

log() { echo "testenv: $*" >&2; }

# testenv_lock: serialize up/down/agent on one state dir (parallel test processes may all
# call `up`). The holder exports KOMPRESS_TESTENV_LOCKED so the scripts it runs (up runs
# down) do not wait for it. Without flock (util-linux) there is no locking.
testenv_lock() {
  [ -n "${KOMPRESS_TESTENV_LOCKED:-}" ] && return 0
  command -v flock >/dev/null || return 0
  mkdir -p "$(dirname "$RUN")"
  exec 9>"$RUN.lock"
  flock 9
  export KOMPRESS_TESTENV_LOCKED=1
}
die() { echo "testenv: ERROR: $*" >&2; exit 1; }

# alive NAME: the component's pid file names a running process
alive() {
  local f="$RUN/pids/$1.pid"
  [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null
}

# stop_pid_file FILE: SIGTERM, then SIGKILL after 10s
stop_pid_file() {
  local f=$1 pid
  pid=$(cat "$f" 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

# kill_pod_processes STATE_DIR: SIGKILL the process groups an agent left (pid files of its pods)
kill_pod_processes() {
  local f pgid
  for f in "$1"/pids/*; do
    [ -f "$f" ] || continue
    pgid=$(cat "$f")
    if [ -n "$pgid" ]; then kill -KILL -- "-$pgid" 2>/dev/null || true; fi
    rm -f "$f"
  done
}

# start_agent NODE_NAME [agent flags...]: starts a kompress-nodeagent in the background and
# waits until its Node is Ready. PATH for the pods' executables: KOMPRESS_TESTENV_AGENT_PATH
# is put in front of the caller's PATH.
start_agent() {
  local node=$1; shift
  local name="agent-$node"
  if alive "$name"; then log "$name already running"; return; fi
  mkdir -p "$RUN/agents/$node" "$RUN/logs" "$RUN/pids"
  local path="$PATH"
  [ -n "${KOMPRESS_TESTENV_AGENT_PATH:-}" ] && path="$KOMPRESS_TESTENV_AGENT_PATH:$PATH"
  PATH="$path" nohup "$BIN/kompress-nodeagent" --kubeconfig "$KUBECONFIG_ADMIN" --node-name "$node" \
    --state-dir "$RUN/agents/$node" "$@" > "$RUN/logs/$name.log" 2>&1 < /dev/null 9>&- &
  echo $! > "$RUN/pids/$name.pid"
  local deadline=$((SECONDS + ${KOMPRESS_TESTENV_TIMEOUT:-120}))
  until "$BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" get node "$node" >/dev/null 2>&1; do
    alive "$name" || die "$name exited; see $RUN/logs/$name.log:
$(tail -n 20 "$RUN/logs/$name.log")"
    [ $SECONDS -lt $deadline ] || die "node $node not registered in time; see $RUN/logs/$name.log"
    sleep 0.2
  done
  "$BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" wait --for=condition=Ready "node/$node" \
    --timeout="$((deadline - SECONDS))s" >/dev/null || die "node $node not Ready; see $RUN/logs/$name.log"
  log "$name ready (log $RUN/logs/$name.log, pod logs under $RUN/agents/$node/logs)"
}

# free_port: a free loopback port for a component (PICKED holds those already taken).
# Picked below the kernel's ephemeral range, so that outgoing connections (apiserver to
# etcd, ...) cannot take a port between the pick and the bind.
PICKED=" "
read -r EPHEMERAL_LOW _ < /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || EPHEMERAL_LOW=32768
PORT_LO=10000 PORT_HI=$EPHEMERAL_LOW
[ "$PORT_HI" -gt 12000 ] || { PORT_LO=20000 PORT_HI=50000; }
free_port() {
  local p
  while :; do
    p=$(( PORT_LO + (RANDOM * 32768 + RANDOM) % (PORT_HI - PORT_LO) ))
    case "$PICKED" in *" $p "*) continue ;; esac
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && [ -z "$(ss -Htln "sport = :$p" 2>/dev/null)" ]; then
      PICKED="$PICKED$p "; echo "$p"; return
    fi
  done
}
