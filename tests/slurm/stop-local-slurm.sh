#!/usr/bin/env bash
# Stop the daemons tests/slurm/start-local-slurm.sh started (docs/cluster.md): exactly the PIDs
# recorded in $MEDMARK_SLURM_STATE (default /tmp/medmark-slurm), each only if it still runs the
# program it was recorded for (a reused PID is left alone). A munged that was already running
# before the start script (no munged.pid) is not touched. Idempotent; exit 0 when nothing is left.
set -euo pipefail

STATE="${MEDMARK_SLURM_STATE:-/tmp/medmark-slurm}"
say() { echo "stop-local-slurm: $*"; }

stop_one() { # stop_one NAME
  local pidfile="$STATE/$1.pid" pid i
  [[ -s "$pidfile" ]] || return 0
  pid=$(<"$pidfile")
  if [[ "$(ps -o comm= -p "$pid" 2>/dev/null)" != "$1" ]]; then
    say "$1 ($pid) is not running"
    rm -f "$pidfile"
    return 0
  fi
  kill -TERM "$pid"
  for i in $(seq 100); do
    [[ "$(ps -o comm= -p "$pid" 2>/dev/null)" == "$1" ]] || break
    sleep 0.1
  done
  if [[ "$(ps -o comm= -p "$pid" 2>/dev/null)" == "$1" ]]; then
    say "$1 ($pid) ignored SIGTERM for 10 s; SIGKILL"
    kill -KILL "$pid"
  fi
  say "stopped $1 ($pid)"
  rm -f "$pidfile"
}

# slurmd first (it reports to slurmctld), munged last (both Slurm daemons authenticate with it).
stop_one slurmd
stop_one slurmctld
stop_one munged
