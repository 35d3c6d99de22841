#!/usr/bin/env bash
# Install what the Slurm tests need (Debian/Ubuntu): slurmctld, slurmd, slurm-client, munge.
# Idempotent: does nothing when the programs are already there. Needs root (or passwordless sudo).
# The tests start their own throw-away cluster (tests/slurm/minicluster.py); nothing here
# configures or starts the system's Slurm or munge services.
set -euo pipefail

need=()
for prog in munged slurmctld slurmd sbatch squeue scontrol scancel sinfo; do
    command -v "$prog" >/dev/null 2>&1 || [[ -x /usr/sbin/$prog ]] || need+=("$prog")
done
if [[ ${#need[@]} -eq 0 ]]; then
    echo "setup_slurm: slurm and munge are installed ($(/usr/sbin/slurmd -V 2>/dev/null || slurmd -V 2>/dev/null || echo "version unknown"))"
    exit 0
fi
echo "setup_slurm: missing ${need[*]}; installing slurmctld slurmd slurm-client munge"

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "setup_slurm: error: installing packages needs root (or passwordless sudo)" >&2
        exit 1
    fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup_slurm: error: no apt-get here; install Slurm (slurmctld, slurmd, client commands) and munge by hand" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# Package scripts may try to start the system services; that is not needed and may fail harmlessly.
$SUDO apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge
echo "setup_slurm: installed $(/usr/sbin/slurmd -V)"
