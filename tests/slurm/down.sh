#!/usr/bin/env bash
# Stop the cluster of tests/slurm/up.sh: cancel its jobs, then stop the daemons it started, by the
# PIDs it recorded in $SLURM_LOCAL_DIR/pids (never by process name). Safe to run twice, or when
# nothing is up. Leaves $SLURM_LOCAL_DIR (logs) in place; up.sh wipes it on the next start.
set -u
D=${SLURM_LOCAL_DIR:-/tmp/boltzbench-slurm}
export SLURM_CONF=$D/etc/slurm.conf
T0=$(date +%s%N)
say() { echo "[slurm down +$(( ($(date +%s%N) - T0) / 1000000 )) ms] $*" >&2; }

pid_of() { [ -s "$D/pids/$1.pid" ] && cat "$D/pids/$1.pid"; }
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

if [ ! -d "$D/pids" ]; then
  say "nothing to stop in $D"
  exit 0
fi

# 1. cancel every job while slurmctld and slurmd still run, so that their steps and processes end
if alive "$(pid_of slurmctld)" && alive "$(pid_of slurmd)"; then
  scancel --user="$(id -un)" --full >/dev/null 2>&1 || true
  for _ in $(seq 1 50); do
    [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
    sleep 0.2
  done
fi

# 2. SIGTERM each daemon we started, compute nodes first and the database last; SIGKILL after 15 s
pids=""
for d in slurmd slurmctld slurmdbd mariadbd munged; do
  p=$(pid_of "$d") || continue
  if alive "$p"; then kill "$p" 2>/dev/null && pids="$pids $p"; fi
done
left=$pids
for _ in $(seq 1 75); do
  left=""
  for p in $pids; do alive "$p" && left="$left $p"; done
  [ -z "$left" ] && break
  sleep 0.2
done
for p in $left; do
  say "PID $p still alive 15 s after SIGTERM: SIGKILL"
  kill -9 "$p" 2>/dev/null
done

# 3. a step whose slurmd died first lives on as an orphan slurmstepd: end those that belong to
# this cluster (their environment names our SLURM_CONF), by PID
for p in $(ps -eo pid=,comm= | awk '$2 == "slurmstepd" {print $1}'); do
  if tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "SLURM_CONF=$SLURM_CONF"; then
    kill "$p" 2>/dev/null; sleep 0.5; alive "$p" && kill -9 "$p" 2>/dev/null
  fi
done
rm -f "$D"/pids/*.pid
rmdir "$D/pids" 2>/dev/null
say "stopped:${pids:- nothing was running}"
exit 0
