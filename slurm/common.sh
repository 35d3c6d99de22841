# Shared by slurm/generate_array.sbatch and slurm/generate_multinode.sbatch (sourced, not run).
# Expects: ROOT (the checkout), PYTHON. See docs/SLURM.md.

# The same NCCL defaults as launch/: no NVLink multicast; a timed-out collective aborts, never hangs.
export NCCL_NVLS_ENABLE="${NCCL_NVLS_ENABLE:-0}"
export TORCH_SYMM_MEM_DISABLE_MULTICAST="${TORCH_SYMM_MEM_DISABLE_MULTICAST:-1}"
export NVSHMEM_DISABLE_NVLS="${NVSHMEM_DISABLE_NVLS:-1}"
export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"

say() { echo "[$(date '+%F %T')] ${SCRIPT_NAME:-cosmos}: $*"; }
die() { echo "[$(date '+%F %T')] ${SCRIPT_NAME:-cosmos}: error: $*" >&2; exit 2; }

# parse_overrides "$@": read the few Hydra overrides this script needs; everything passes through.
parse_overrides() {
    NUM_SHARDS="" PROMPTS_FILE="" OUTPUT_DIR="outputs" CP=1 CFG=1 SHARD_ARG="" PROMPT_GIVEN=""
    local arg
    for arg in "$@"; do
        case $arg in
            num_shards=*) NUM_SHARDS=${arg#*=} ;;
            shard_index=*) SHARD_ARG=${arg#*=} ;;
            prompts_file=*) PROMPTS_FILE=${arg#*=} ;;
            prompt=*) PROMPT_GIVEN=1 ;;
            output_dir=*) OUTPUT_DIR=${arg#*=} ;;
            parallel.cp_size=*) CP=${arg#*=} ;;
            parallel.cfg_parallel=true|parallel.cfg_parallel=True) CFG=2 ;;
            parallel.cfg_parallel=*) CFG=1 ;;
            --multirun|-m) die "no --multirun inside a Slurm job: one run per element (docs/SLURM.md, sweeps)" ;;
        esac
    done
    [[ $CP =~ ^[0-9]+$ && $CP -ge 1 ]] || die "parallel.cp_size=$CP is not a positive integer"
}

# GPUs this node's ranks may use: SLURM_GPUS_ON_NODE, else CUDA_VISIBLE_DEVICES, else nvidia-smi, else 0.
count_gpus() {
    if [[ ${SLURM_GPUS_ON_NODE:-} =~ ^[0-9]+$ && ${SLURM_GPUS_ON_NODE} -gt 0 ]]; then
        echo "$SLURM_GPUS_ON_NODE"; return
    fi
    if [[ -n ${CUDA_VISIBLE_DEVICES:-} && ${CUDA_VISIBLE_DEVICES} != NoDevFiles ]]; then
        awk -F, '{print NF}' <<<"$CUDA_VISIBLE_DEVICES"; return
    fi
    if command -v nvidia-smi >/dev/null 2>&1; then
        local n
        n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
        if [[ $n -gt 0 ]]; then echo "$n"; return; fi
    fi
    echo 0
}

# ranks_per_node: COSMOS_NPROC_PER_NODE, else one per GPU, else 1 (CPU). Sets GPUS NPROC.
ranks_per_node() {
    GPUS=$(count_gpus)
    NPROC=${COSMOS_NPROC_PER_NODE:-$(( GPUS > 0 ? GPUS : 1 ))}
    [[ $NPROC =~ ^[0-9]+$ && $NPROC -ge 1 ]] || die "COSMOS_NPROC_PER_NODE=$NPROC is not a positive integer"
    if [[ -z ${OMP_NUM_THREADS:-} ]]; then
        local cpus=${SLURM_CPUS_ON_NODE:-$(nproc)}
        export OMP_NUM_THREADS=$(( cpus / NPROC > 0 ? cpus / NPROC : 1 ))
    fi
}

shard_tag() {
    if (( $2 > 10000 )); then
        "$PYTHON" -c "from cosmos_dist.pipeline.preemption import shard_tag; print(shard_tag($1, $2))"
    else
        printf 'shard-%04d-of-%04d' "$1" "$2"
    fi
}

# ---- stop requests: trap, forward, wait --------------------------------------------------------
# The ranks check $COSMOS_STOP_FILE (in the shared output folder) between samples; on a single
# node the torchrun workers also get the signal itself (SIGNAL_WORKERS=1).
STOP="" STOP_AT=0 CHILD="" SIGNAL_WORKERS=""

signal_workers() {
    [[ -n $CHILD ]] || return 0
    local pids
    # torchrun's direct children are the ranks (each in its own session): never the agent itself
    # (it exits on unexpected signals), never the ranks' children (ffmpeg dies on USR1).
    pids=$(pgrep -P "$CHILD" 2>/dev/null || ps -o pid= --ppid "$CHILD" 2>/dev/null || true)
    if [[ -n $pids ]]; then kill "-$1" $pids 2>/dev/null; fi
    return 0
}

on_signal() {
    local sig=$1
    [[ -n $STOP ]] && return 0
    STOP=$sig
    STOP_AT=$SECONDS
    say "received $sig: asking the ranks to stop after the sample in progress"
    touch "$COSMOS_STOP_FILE" 2>/dev/null || say "cannot create $COSMOS_STOP_FILE"
    if [[ -n $SIGNAL_WORKERS ]]; then signal_workers "$sig"; fi
}

install_traps() {
    trap 'on_signal USR1' USR1
    trap 'on_signal TERM' TERM
    trap 'on_signal INT' INT
}

# wait_child: wait for $CHILD through any number of trapped signals; sets RC.
# COSMOS_STOP_GRACE_S > 0: that long after a stop request, abandon the sample in progress.
wait_child() {
    local grace=${COSMOS_STOP_GRACE_S:-0} abandoned=""
    while kill -0 "$CHILD" 2>/dev/null; do
        sleep 1 &
        wait $! 2>/dev/null
        if [[ -n $STOP && $grace -gt 0 && -z $abandoned ]] && (( SECONDS - STOP_AT > grace )); then
            say "the sample in progress did not finish within COSMOS_STOP_GRACE_S=$grace s: abandoning it"
            abandoned=1
            abandon_child
        fi
    done
    wait "$CHILD"
    RC=$?
}

# ---- before the launcher: record the run's overrides (tools/shard_status.py reads them) ----------
# record_start "$@" (the overrides). A failure is only a warning: the run itself does not need it.
record_start() {
    [[ -n $PROMPTS_FILE ]] || return 0
    "$PYTHON" -m cosmos_dist.pipeline.preemption started --output-dir "$OUTPUT_DIR" --num-shards "$NUM_SHARDS" \
        -- "$@" >/dev/null || say "warning: could not record the run's overrides under $OUTPUT_DIR/.shards"
}

# ---- after the launcher: marker, then requeue on a stop warning ----------------------------------
# finish_run JOB_REF TAG "$@" (the overrides). Exits the script.
finish_run() {
    local job_ref=$1 tag=$2 mark=0 reason=$STOP
    shift 2
    if [[ -z $reason && $RC -ne 0 && $RC -ne 1 ]]; then reason="exit $RC"; fi
    if [[ -n $PROMPTS_FILE ]]; then
        "$PYTHON" -m cosmos_dist.pipeline.preemption mark --prompts-file "$PROMPTS_FILE" --output-dir "$OUTPUT_DIR" \
            --num-shards "$NUM_SHARDS" --shard-index "$SHARD" --reason "$reason" --exit-code "$RC" -- "$@"
        mark=$?
    elif [[ -n $STOP ]]; then
        mark=3   # a single prompt= run that was asked to stop: let the requeued run finish it
    fi
    rm -f "$COSMOS_STOP_FILE"

    if [[ $mark -eq 3 && $STOP == USR1 && -z ${COSMOS_NO_REQUEUE:-} && -n ${SLURM_JOB_ID:-} ]]; then
        if (( ${SLURM_RESTART_COUNT:-0} >= ${COSMOS_MAX_REQUEUES:-20} )); then
            say "not requeueing: restarted ${SLURM_RESTART_COUNT} times already (COSMOS_MAX_REQUEUES)"
            exit 3
        fi
        # An array element's SLURM_JOB_ID can equal the array's id, and requeueing that id
        # requeues every element: name an element as <array job id>_<task id>.
        say "requeueing $job_ref to continue $tag"
        # scontrol returns once slurmctld has requeued the job; the exit status of this run is not
        # recorded after that, so exiting at once is safe. Slurm then holds the element for its
        # credential lifetime (AuthInfo cred_expire, default 120 s; Reason=BeginTime). Do not cut
        # that hold short (scontrol update StartTime=now / release): a relaunch within the same
        # second as the requeue is refused by slurmd and the element ends FAILED (docs/SLURM.md).
        scontrol requeue "$job_ref" && exit 0
        say "scontrol requeue $job_ref failed: resubmit with tools/shard_status.py"
        exit 3
    fi
    case $mark in
        0) say "$tag finished"; exit "$RC" ;;
        3) exit $(( RC != 0 ? RC : 3 )) ;;   # samples pending: this run did not finish the shard
        *) say "could not write the shard marker (exit $mark)"; exit $(( RC != 0 ? RC : mark )) ;;
    esac
}
