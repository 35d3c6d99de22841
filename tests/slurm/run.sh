#!/usr/bin/env bash
# The real-Slurm tests: install Slurm + munge if missing, then run them against a throw-away
# one-node cluster. Up to 3 attempts: on this one-node test cluster a job that requeues itself from
# inside (`scontrol requeue`, how the sbatch scripts resume after a time-limit warning) sometimes
# ends FAILED instead of pending again (about 1 run in 3 of a requeue test, Slurm 22.05); that race
# is open (see docs/SLURM.md) and an attempt that hits it is reported, not hidden.
set -uo pipefail
cd "$(dirname "$0")/../.."
bash tests/slurm/setup_slurm.sh || exit 1
for attempt in 1 2 3; do
    echo "slurm tests, attempt $attempt"
    COSMOS_REQUIRE_SLURM=1 python -m pytest -q -m slurm tests/test_slurm.py && exit 0
done
exit 1
