# Sourced by nodes-stop.sh and redis-cluster-stop.sh: how both stop what
# they started, by pid file only (never by name, never another process).
#
# stop_pidfiles NAME TENTHS FILE...: the process of each pid file that is
# alive and really is NAME (its command line says so) gets SIGTERM, and the
# file goes; each then has TENTHS tenths of a second to end before SIGKILL.
# Sets STOPPED to how many processes were signalled.
stop_pidfiles() {
  local name=$1 tenths=$2 f pid
  shift 2
  local pids=()
  for f in "$@"; do
    [ -f "$f" ] || continue
    pid=$(cat "$f" 2>/dev/null) || continue
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
      grep -q "$name" "/proc/$pid/cmdline" 2>/dev/null; then
      kill "$pid" 2>/dev/null && pids+=("$pid")
    fi
    rm -f "$f"
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 "$tenths"); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  STOPPED=${#pids[@]}
}
