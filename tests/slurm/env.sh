# shellcheck shell=bash
# Source this to talk to the cluster of tests/slurm/up.sh (its config lives outside /etc).
export SLURM_CONF="${SLURM_LOCAL_DIR:-/tmp/boltzbench-slurm}/etc/slurm.conf"
