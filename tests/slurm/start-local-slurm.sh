#!/usr/bin/env bash
# Start a real one-node Slurm on this machine for the cluster tests (docs/cluster.md).
#
# Installs slurm-wlm + munge from the Debian packages when missing, writes a one-node
# /etc/slurm/slurm.conf (+ gres.conf with two simulated GPUs on files this script creates, so
# GPU rules are scheduled with a real gres:gpu allocation), starts munged, slurmctld and slurmd
# and waits until the node is idle. No slurmdbd: the Snakemake profile queries job status with
# squeue (docs/cluster.md). The PIDs of the daemons this script started are written to
# $MEDMARK_SLURM_STATE (default /tmp/medmark-slurm); tests/slurm/stop-local-slurm.sh stops
# exactly those. Idempotent: a second call with the daemons still up only re-checks the node.
#
# Exit status: 0 = node idle; 77 = this machine cannot run the daemons (not root, or not a
# Debian/apt system and Slurm absent), reason on stderr; anything else = a real failure, with
# the daemon logs printed.
set -euo pipefail

STATE="${MEDMARK_SLURM_STATE:-/tmp/medmark-slurm}"
PARTITION="${MEDMARK_LOCAL_SLURM_PARTITION:-debug}"
TIMEOUT="${MEDMARK_SLURM_START_TIMEOUT:-60}"
CONF_DIR=/etc/slurm
MARKER="# written by medmark tests/slurm/start-local-slurm.sh"
LOG_DIR=/var/log/slurm
export PATH="$PATH:/usr/sbin:/sbin"
t0=$(date +%s.%N)

say() { echo "start-local-slurm: $*"; }
cannot() { echo "start-local-slurm: cannot run Slurm daemons here: $*" >&2; exit 77; }
die() { # print the reason and the daemon logs, stop what this run started, exit 1
  echo "start-local-slurm: ERROR: $*" >&2
  dump_logs
  bash "$(dirname "$0")/stop-local-slurm.sh" >&2 || true
  exit 1
}
dump_logs() {
  local f
  for f in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" "$STATE/munged.out" \
    "$STATE/slurmctld.out" "$STATE/slurmd.out"; do
    [[ -s "$f" ]] && { echo "----- tail $f" >&2; tail -n 30 "$f" >&2; }
  done
  return 0
}
alive() { # alive NAME: the PID recorded for NAME runs a process called NAME
  local pidfile="$STATE/$1.pid" pid
  [[ -s "$pidfile" ]] || return 1
  pid=$(<"$pidfile")
  [[ "$(ps -o comm= -p "$pid" 2>/dev/null)" == "$1" ]]
}
running() { # running NAME: the PID recorded for NAME exists (it may not have exec'd NAME yet)
  [[ -s "$STATE/$1.pid" ]] && kill -0 "$(<"$STATE/$1.pid")" 2>/dev/null
}
node_state() { sinfo -h -N -n "$NODE" -o '%t' 2>/dev/null | head -n 1 || true; }
wait_until() { # wait_until CMD...: retry CMD every 0.2 s for up to $TIMEOUT s (slow when loaded)
  local end=$(($(date +%s) + TIMEOUT))
  until "$@"; do
    (($(date +%s) < end)) || return 1
    sleep 0.2
  done
}
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

[[ "$(id -u)" -eq 0 ]] || cannot "needs root (writes $CONF_DIR, runs slurmd as root); uid=$(id -u)"
mkdir -p "$STATE"
NODE="$(hostname -s)"

# --- idempotent re-entry -------------------------------------------------------------------
if alive slurmctld && alive slurmd && [[ "$(node_state)" =~ ^(idle|mix|alloc) ]]; then
  say "already running (slurmctld $(<"$STATE/slurmctld.pid"), slurmd $(<"$STATE/slurmd.pid")); node $NODE $(node_state)"
  exit 0
fi
if alive slurmctld || alive slurmd || alive munged; then
  say "a previous start is half up; stopping it first"
  bash "$(dirname "$0")/stop-local-slurm.sh"
fi

# --- install ---------------------------------------------------------------------------------
need_install() {
  local b
  for b in munged slurmctld slurmd sbatch sinfo squeue scontrol; do
    command -v "$b" >/dev/null 2>&1 || return 0
  done
  return 1
}
if need_install; then
  command -v apt-get >/dev/null 2>&1 || cannot "Slurm is not installed and apt-get is missing (not Debian/Ubuntu)"
  ti=$(date +%s)
  # Keep package scripts from starting the distribution's own services: this script starts
  # (and later stops) its own daemons with its own config.
  policy_created=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    policy_created=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-cache show slurm-wlm >/dev/null 2>&1; then
    say "package lists lack slurm-wlm: apt-get update"
    apt-get update -qq
  fi
  say "installing slurm-wlm munge"
  install_ok=1
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >"$STATE/apt.log" 2>&1 ||
    install_ok=0
  [[ $policy_created -eq 1 ]] && rm -f /usr/sbin/policy-rc.d
  [[ $install_ok -eq 1 ]] || { tail -n 20 "$STATE/apt.log" >&2; die "apt-get install failed"; }
  need_install && die "installed slurm-wlm munge but a binary is still missing"
  say "installed in $(($(date +%s) - ti)) s: $(slurmctld -V)"
fi

# --- host name must resolve ------------------------------------------------------------------
if ! getent hosts "$NODE" >/dev/null; then
  say "adding $NODE to /etc/hosts"
  echo "127.0.1.1 $NODE" >>/etc/hosts
fi

# --- munge -----------------------------------------------------------------------------------
if ! id munge >/dev/null 2>&1; then die "user munge missing after install"; fi
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
chown munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 700 /etc/munge
if [[ ! -s /etc/munge/munge.key ]]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
fi
if munge_ok; then
  say "using the munged already running on this machine"
  rm -f "$STATE/munged.pid"
else
  # -F: stay in the foreground, so $! is the daemon's PID.
  setsid runuser -u munge -- munged -F --force </dev/null >"$STATE/munged.out" 2>&1 &
  runuser_pid=$!
  # runuser forks; record the munged process itself (child of that runuser).
  wait_until pgrep -P "$runuser_pid" -x munged >/dev/null || die "munged did not start"
  munged_pid=$(pgrep -P "$runuser_pid" -x munged)
  echo "$munged_pid" >"$STATE/munged.pid"
  wait_until munge_ok || die "munged is not answering"
fi

# --- config ----------------------------------------------------------------------------------
for f in slurm.conf gres.conf; do
  if [[ -e "$CONF_DIR/$f" ]] && ! grep -qF "$MARKER" "$CONF_DIR/$f"; then
    die "$CONF_DIR/$f exists and was not written by this script; refusing to overwrite it"
  fi
done
CPUS=$(nproc)
MEM_TOTAL=$(free -m | awk '/^Mem:/ {print $2}')
REAL_MEM=$((MEM_TOTAL * 9 / 10))
mkdir -p "$CONF_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd
# Two simulated GPUs: gres.conf needs one device file per GPU (a Count= line alone is rejected,
# the node goes INVAL). Character devices with /dev/null's numbers (1:3) keep slurmd's device
# check quiet; where mknod is not allowed, plain files work too (slurmd logs an error per file).
GPU_DEV=/dev/medmark-gpu
for i in 0 1; do
  if [[ ! -c "$GPU_DEV$i" ]] && ! mknod -m 666 "$GPU_DEV$i" c 1 3 2>/dev/null; then
    GPU_DEV="$STATE/gpu"
    : >"$GPU_DEV$i"
  fi
done
[[ "$GPU_DEV" == /dev/* ]] || say "mknod not allowed: simulated GPUs are plain files $GPU_DEV[0-1]"
cat >"$CONF_DIR/slurm.conf" <<EOF
$MARKER
ClusterName=medmark-local
SlurmctldHost=$NODE
SlurmUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# keep finished jobs visible to `scontrol show job` for an hour (default 300 s): the tests read
# the GPU allocation of every job after a tiny-preset run that takes longer than that
MinJobAge=3600
ReturnToService=2
SlurmctldPidFile=/run/medmark-slurmctld.pid
SlurmdPidFile=/run/medmark-slurmd.pid
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
GresTypes=gpu
NodeName=$NODE CPUs=$CPUS RealMemory=$REAL_MEM Gres=gpu:2 State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
cat >"$CONF_DIR/gres.conf" <<EOF
$MARKER
AutoDetect=off
NodeName=$NODE Name=gpu File=$GPU_DEV[0-1]
EOF

# --- slurmctld, slurmd (foreground mode -D, so $! is the daemon's PID) -------------------------
for f in slurmctld.log slurmd.log; do # keep one old log; dump_logs then shows this run's
  [[ -e "$LOG_DIR/$f" ]] && mv -f "$LOG_DIR/$f" "$LOG_DIR/$f.1"
done
setsid slurmctld -D -c </dev/null >"$STATE/slurmctld.out" 2>&1 &
echo $! >"$STATE/slurmctld.pid"
ctld_up() {
  running slurmctld || die "slurmctld exited"
  scontrol ping 2>/dev/null | grep -q 'is UP'
}
wait_until ctld_up || die "slurmctld does not answer scontrol ping after ${TIMEOUT} s"
setsid slurmd -D </dev/null >"$STATE/slurmd.out" 2>&1 &
echo $! >"$STATE/slurmd.pid"
printf 'MEDMARK_SLURM_PARTITION=%s\nNODE=%s\nCPUS=%s\nREAL_MEM=%s\n' \
  "$PARTITION" "$NODE" "$CPUS" "$REAL_MEM" >"$STATE/env"

# --- wait for the node -----------------------------------------------------------------------
deadline=$(($(date +%s) + TIMEOUT))
state=""
while (($(date +%s) < deadline)); do
  running slurmctld || die "slurmctld exited"
  running slurmd || die "slurmd exited"
  state=$(node_state)
  [[ "$state" == idle* ]] && break
  if [[ "$state" == inval* ]]; then
    scontrol show node "$NODE" >&2 || true
    die "node $NODE rejected its configuration (state $state)"
  fi
  sleep 0.5
done
if [[ "$state" != idle* ]]; then
  scontrol show node "$NODE" >&2 || true
  die "node $NODE is '${state:-absent}', not idle, after ${TIMEOUT} s"
fi
say "node $NODE idle (CPUs=$CPUS RealMemory=$REAL_MEM Gres=gpu:2, partition $PARTITION);" \
  "slurmctld $(<"$STATE/slurmctld.pid"), slurmd $(<"$STATE/slurmd.pid")," \
  "munged ${munged_pid:-external}; $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}') s"
