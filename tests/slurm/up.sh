#!/usr/bin/env bash
# Start a throw-away one-node SLURM cluster on localhost for the tests marked `slurm`
# (Debian 12, root, no systemd, no cgroups). Packages: tests/slurm/install.sh. Stop: down.sh.
#
# Everything lives in $SLURM_LOCAL_DIR (default /tmp/boltzbench-slurm): configs in etc/, state,
# spool, logs, our daemons' PIDs in pids/. The config is NOT in /etc: clients find it through
# SLURM_CONF, which this script prints as an export line on stdout (progress goes to stderr):
#     eval "$(tests/slurm/up.sh)"        # or: source tests/slurm/env.sh
# Idempotent: when the cluster of this dir is already up and answering, it only prints the line.
# A half-dead one (a daemon gone) is stopped and started afresh.
#
#   SLURM_LOCAL_DIR         working dir (wiped on a fresh start; must be ours or absent)
#   SLURM_LOCAL_ACCOUNTING  1 (default): MariaDB + slurmdbd, so `sacct` and submitit see job states
#                           (without it a cancelled job's result() waits forever)
#   SLURM_LOCAL_INSTALL     1: run install.sh first (default 0: fail with a message if missing)
#
# Fixed ports, so one cluster per machine: slurmctld 6817, slurmd 6818, slurmdbd 6819 and
# MariaDB 3307, on 127.0.0.1 (slurmctld/slurmd bind all interfaces; auth is munge).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
D=${SLURM_LOCAL_DIR:-/tmp/boltzbench-slurm}
ACCT=${SLURM_LOCAL_ACCOUNTING:-1}
export SLURM_CONF=$D/etc/slurm.conf
MARK=.boltzbench-slurm
T0=$(date +%s%N)
say() { echo "[slurm up +$(( ($(date +%s%N) - T0) / 1000000 )) ms] $*" >&2; }
die() { echo "[slurm up] error: $*" >&2; exit 1; }

case "$D" in
  /?*/?*) ;;
  *) die "SLURM_LOCAL_DIR=$D: give an absolute path at least two levels deep" ;;
esac
[ "$(id -u)" = 0 ] || die "needs root (the daemons run as root, munged as munge)"

if [ "${SLURM_LOCAL_INSTALL:-0}" = 1 ]; then bash "$HERE/install.sh"; fi
for cmd in slurmctld slurmd sinfo munged; do
  command -v "$cmd" >/dev/null || [ -x "/usr/sbin/$cmd" ] ||
    die "$cmd not found: run tests/slurm/install.sh (or SLURM_LOCAL_INSTALL=1)"
done
if [ "$ACCT" = 1 ]; then
  [ -x /usr/sbin/slurmdbd ] && [ -x /usr/sbin/mariadbd ] ||
    die "slurmdbd/mariadbd not found: run tests/slurm/install.sh (or SLURM_LOCAL_ACCOUNTING=0)"
fi

HOST=$(hostname -s)

# polls CMD every 0.2 s for up to SECONDS; on timeout names the command and the log to read
wait_for() {
  local secs=$1 log=$2; shift 2
  local i
  for i in $(seq 1 $((secs * 5))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "[slurm up] timed out after ${secs} s waiting for: $*" >&2
  [ -f "$log" ] && { echo "---- last lines of $log" >&2; tail -n 20 "$log" >&2; }
  return 1
}
node_ready() { sinfo -h -n "$HOST" -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; }
all_alive() {
  local f n=0
  for f in "$D"/pids/*.pid; do
    [ -s "$f" ] || continue
    kill -0 "$(cat "$f")" 2>/dev/null || return 1
    n=$((n + 1))
  done
  [ "$n" -gt 0 ]
}

# ---- already up? ---------------------------------------------------------------------------
if [ -f "$D/$MARK" ] && all_alive && node_ready &&
   { [ "$ACCT" != 1 ] || sacct -n -X -S now >/dev/null 2>&1; }; then
  say "already up ($D)"
  echo "export SLURM_CONF=$SLURM_CONF"
  exit 0
fi
if [ -d "$D/pids" ]; then
  say "stopping the earlier cluster of $D"
  SLURM_LOCAL_DIR=$D bash "$HERE/down.sh"
fi
if [ -e "$D" ] && [ ! -f "$D/$MARK" ]; then
  die "$D exists and was not made by this script; refusing to wipe it (set SLURM_LOCAL_DIR)"
fi
rm -rf "$D"
mkdir -p "$D"/{etc,state,spool,log,run,pids}
touch "$D/$MARK"
chmod 755 "$D" "$D/run"   # MariaDB runs as mysql and must reach its dirs below

# ---- munge ----------------------------------------------------------------------------------
# Debian's postinst writes /etc/munge/munge.key; make one only if it is missing.
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
fi
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  say "a munged is already running (not ours: left alone)"
else
  # no systemd here: nobody creates the socket dir, and munged refuses to run as root
  mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
  setsid setpriv --reuid=munge --regid=munge --clear-groups /usr/sbin/munged -F \
    >"$D/log/munged.log" 2>&1 &
  echo $! >"$D/pids/munged.pid"
  wait_for 10 "$D/log/munged.log" sh -c 'munge -n | unmunge'
  say "munged up"
fi

# ---- MariaDB + slurmdbd: job accounting, so that sacct (and submitit) see job states -------------
if [ "$ACCT" = 1 ]; then
  mkdir -p "$D/mysql" "$D/mysqlrun"
  chown mysql:mysql "$D/mysql" "$D/mysqlrun"
  SOCK=$D/mysqlrun/mysqld.sock
  # its own datadir, socket and port: never touches a system MariaDB
  cat >"$D/etc/my.cnf" <<EOF
[mysqld]
user=mysql
datadir=$D/mysql
socket=$SOCK
pid-file=$D/mysqlrun/mysqld.pid
bind-address=127.0.0.1
port=3307
skip-name-resolve
innodb_buffer_pool_size=128M
innodb_log_file_size=16M
innodb_lock_wait_timeout=900
innodb_flush_log_at_trx_commit=2
EOF
  mariadb-install-db --defaults-file="$D/etc/my.cnf" --auth-root-authentication-method=socket \
    --skip-test-db >"$D/log/mariadb-install.log" 2>&1 ||
    { tail -n 20 "$D/log/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
  setsid /usr/sbin/mariadbd --defaults-file="$D/etc/my.cnf" >"$D/log/mariadbd.log" 2>&1 &
  echo $! >"$D/pids/mariadbd.pid"
  wait_for 60 "$D/log/mariadbd.log" mariadb-admin --socket="$SOCK" ping
  mariadb --socket="$SOCK" -u root -e \
    "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmpw';
     GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
  say "mariadbd up"
  # slurmdbd reads slurmdbd.conf from the directory of $SLURM_CONF and refuses a readable one
  cat >"$D/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
LogFile=$D/log/slurmdbd.log
PidFile=$D/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3307
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$D/etc/slurmdbd.conf"
  ACCOUNTING="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux"
else
  ACCOUNTING="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi

# ---- slurm.conf ---------------------------------------------------------------------------
# The node line comes from `slurmd -C` (this machine's CPUs, sockets, cores, memory): larger
# values make the node "inval", smaller ones make `--mem` requests unsatisfiable.
NODE=$(slurmd -C | head -n 1)
# Job ids restart at 1 on a fresh cluster, and submitit trusts an existing <id>_result.pkl in a
# reused log folder (a stale result). Starting from a clock-derived id keeps ids unique across
# restarts (100 ids per second of wall time; below MaxJobId=67043328 until it wraps after 7 days).
FIRST_ID=$(( ($(date +%s) % 600000) * 100 + 1 ))
cat >"$SLURM_CONF" <<EOF
# written by tests/slurm/up.sh; a throw-away one-node cluster for tests
ClusterName=boltzbench
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job may start again only cred_expire s after the requeue (default 120 s)
AuthInfo=cred_expire=5
MpiDefault=none
# no cgroups in containers without systemd: plain process tracking, no task plugin
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobCompType=jobcomp/none
$ACCOUNTING
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# impossible requests (2 nodes, too much memory) fail at sbatch instead of pending forever
EnforcePartLimits=ALL
SchedulerType=sched/backfill
# schedule every 2 s (default 60 s), so a requeued job restarts within seconds
SchedulerParameters=sched_interval=2,bf_interval=1
ReturnToService=2
KillWait=5
MailProg=/bin/true
MinJobAge=300
FirstJobId=$FIRST_ID
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
$NODE NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

# ---- daemons: in the foreground (-D) behind '&' so that $! is the daemon itself, and under
# setsid so that a Ctrl-C or a kill of the caller's process group leaves them to down.sh
if [ "$ACCT" = 1 ]; then
  setsid /usr/sbin/slurmdbd -D >"$D/log/slurmdbd.out" 2>&1 &
  echo $! >"$D/pids/slurmdbd.pid"
  wait_for 30 "$D/log/slurmdbd.log" sacctmgr -n show cluster   # answers once slurmdbd serves RPCs
  say "slurmdbd up"
fi
setsid /usr/sbin/slurmctld -D -i >"$D/log/slurmctld.out" 2>&1 &
echo $! >"$D/pids/slurmctld.pid"
wait_for 30 "$D/log/slurmctld.log" scontrol ping
say "slurmctld up"
setsid /usr/sbin/slurmd -D -N "$HOST" >"$D/log/slurmd.out" 2>&1 &
echo $! >"$D/pids/slurmd.pid"
wait_for 60 "$D/log/slurmd.log" node_ready
if [ "$ACCT" = 1 ]; then
  # slurmctld registers the cluster with slurmdbd a moment after it starts
  wait_for 30 "$D/log/slurmdbd.log" sh -c \
    "sacctmgr -n -P show cluster format=cluster | grep -qx boltzbench && sacct -n -X -S now"
fi
say "node $HOST idle; cluster ready (logs in $D/log)"
echo "export SLURM_CONF=$SLURM_CONF"
