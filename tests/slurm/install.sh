#!/usr/bin/env bash
# Install the Debian packages of the throw-away single-node SLURM cluster of tests/slurm/up.sh:
# Slurm 22.05 (Debian 12) + munge, and MariaDB + slurmdbd so that `sacct` reports job states.
# Idempotent and quiet: does nothing when every package is already there. Needs root and apt-get.
#   SLURM_LOCAL_ACCOUNTING=0  leave out slurmdbd and MariaDB (no sacct: submitit sees no states)
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

pkgs="slurmctld slurmd slurm-client munge"
if [ "${SLURM_LOCAL_ACCOUNTING:-1}" = 1 ]; then pkgs="$pkgs slurmdbd mariadb-server"; fi

# shellcheck disable=SC2086
if dpkg -s $pkgs >/dev/null 2>&1; then
  echo "[slurm install] packages already present" >&2
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "[slurm install] cannot install: needs root and apt-get (Debian/Ubuntu)" >&2
  exit 1
fi
t0=$(date +%s)
log=$(mktemp)
# --no-install-recommends matters: the recommends (and the slurm-wlm metapackage) pull ~40
# packages (hdf5, rrdtool, ipmi, ...) that a one-node test cluster never uses. Where
# /usr/sbin/policy-rc.d exits 101 (container images) postinst starts no service; where it does
# start munge, up.sh reuses that munged, and a system MariaDB on 3306 does not clash with ours.
# shellcheck disable=SC2086
if ! { apt-get update -qq &&
       apt-get install -y -qq --no-install-recommends $pkgs; } >"$log" 2>&1; then
  cat "$log" >&2; rm -f "$log"
  echo "[slurm install] apt-get failed" >&2
  exit 1
fi
rm -f "$log"
echo "[slurm install] installed $pkgs in $(( $(date +%s) - t0 )) s" >&2
