#!/usr/bin/env bash
# The real-Slurm tests: install Slurm + munge if missing, then run them against a throw-away
# one-node cluster. Every test must pass.
#
# One retry, only when every failure is the test cluster not starting (minicluster's
# SlurmStartError: a daemon exited or did not answer in time), which says nothing about the
# scripts under test; the reason is printed. A test that fails for any other reason fails the run.
set -uo pipefail
cd "$(dirname "$0")/../.."
bash tests/slurm/setup_slurm.sh || exit 1
export COSMOS_REQUIRE_SLURM=1
log=$(mktemp "${TMPDIR:-/tmp}/cosmos-slurm-tests.XXXXXX")
trap 'rm -f "$log"' EXIT

for attempt in 1 2; do
    python -m pytest -q -rfE -m slurm tests/test_slurm.py 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    [[ $rc -eq 0 ]] && exit 0
    # pytest's short summary: one "FAILED ..." or "ERROR ..." line per failing test.
    problems=$(grep -E '^(FAILED|ERROR) ' "$log" || true)
    if [[ -z $problems ]] || grep -qv 'SlurmStartError' <<<"$problems"; then
        echo "slurm tests failed (pytest exit $rc)"
        exit 1
    fi
    echo "slurm tests, attempt $attempt: the test cluster did not start (infrastructure, not a test failure):"
    echo "$problems"
done
echo "slurm tests failed: the test cluster did not start in 2 attempts"
exit 1
