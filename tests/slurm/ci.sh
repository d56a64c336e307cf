#!/usr/bin/env bash
# CI entry point for the real-SLURM tests (tests/test_slurm.py):
#   tests/slurm/ci.sh up     install the packages if missing, start the cluster, wait until ready
#   tests/slurm/ci.sh down   stop it (cancel jobs, stop our daemons by PID)
# then, in the same shell as pytest: source tests/slurm/env.sh (exports SLURM_CONF). Both are safe
# to repeat. For example, in .ci/run:
#   tests/slurm/ci.sh up || echo "no SLURM cluster: the slurm tests will skip and say why"
#   trap 'tests/slurm/ci.sh down || true' EXIT
#   source tests/slurm/env.sh
#   python -m pytest -m "not slow"
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
case "${1:-up}" in
  up)
    t0=$(date +%s%N)
    bash "$HERE/install.sh"
    t1=$(date +%s%N)
    bash "$HERE/up.sh" >/dev/null
    t2=$(date +%s%N)
    echo "[slurm ci] install $(( (t1 - t0) / 1000000 )) ms, start $(( (t2 - t1) / 1000000 )) ms;" \
         "source tests/slurm/env.sh for SLURM_CONF" >&2
    ;;
  down)
    bash "$HERE/down.sh"
    ;;
  *)
    echo "usage: $0 up|down" >&2
    exit 2
    ;;
esac
