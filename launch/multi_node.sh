#!/usr/bin/env bash
# Several nodes: run this once per node (srun does it in slurm/generate_multinode.sbatch).
# Rendezvous endpoint from the environment:
#   MASTER_ADDR (the head node address), MASTER_PORT (default 29500), NNODES, NODE_RANK (optional with c10d),
#   NPROC (GPUs per node, default: all visible), RDZV_ID (default: a job id).
#
#   MASTER_ADDR=node001 NNODES=2 launch/multi_node.sh model=14b_text2world prompt="..." parallel.cp_size=16
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
: "${MASTER_ADDR:?set MASTER_ADDR to the head node address}"
: "${NNODES:?set NNODES to the number of nodes}"
MASTER_PORT="${MASTER_PORT:-29500}"
if [ -z "${NPROC:-}" ]; then
  NPROC=$(python -c "import torch; print(max(torch.cuda.device_count(), 1))")
fi
RDZV_ID="${RDZV_ID:-${SLURM_JOB_ID:-cosmos-dist}}"
export NCCL_NVLS_ENABLE="${NCCL_NVLS_ENABLE:-0}"
export TORCH_SYMM_MEM_DISABLE_MULTICAST="${TORCH_SYMM_MEM_DISABLE_MULTICAST:-1}"
export NVSHMEM_DISABLE_NVLS="${NVSHMEM_DISABLE_NVLS:-1}"
export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"
# Threads per rank from the machine: the CPUs this process may use / ranks on this node, at least 1.
if [ -z "${OMP_NUM_THREADS:-}" ]; then
  cpus=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
  OMP_NUM_THREADS=$(( cpus / NPROC > 0 ? cpus / NPROC : 1 ))
fi
export OMP_NUM_THREADS
exec torchrun --nnodes="$NNODES" --nproc_per_node="$NPROC" \
  --rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv_id="$RDZV_ID" \
  "$here/generate.py" "$@"
