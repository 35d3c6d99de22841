#!/usr/bin/env bash
# One node, all its GPUs, one torchrun (rendezvous on localhost). Extra arguments are Hydra overrides.
#
#   launch/single_node.sh model=7b_text2world prompts_file=prompts.jsonl parallel.cp_size=4 parallel.cfg_parallel=true
#
# NPROC defaults to the number of visible GPUs (1 on a machine without any).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
if [ -z "${NPROC:-}" ]; then
  NPROC=$(python -c "import torch; print(max(torch.cuda.device_count(), 1))")
fi
# NVLink multicast (NVLS) stays off; a timed-out collective aborts instead of hanging.
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
exec torchrun --standalone --nproc_per_node="$NPROC" "$here/generate.py" "$@"
