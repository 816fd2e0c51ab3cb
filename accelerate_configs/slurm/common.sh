# Sourced by the sbatch scripts here: run a command (srun ...) so that SLURM's warning signal stops it cleanly,
# then requeue the job if the run stopped on it. Needs: OUT (the run's --output-dir).
#
# SLURM sends SIGUSR1 to this batch shell 120 s before the time limit (--signal=B:USR1@120) and SIGTERM when the
# job is preempted. Either is passed on to srun as SIGTERM; srun hands it to its tasks (one `accelerate launch`
# per node), torchelastic to its workers, and the workers save a checkpoint at the next optimizer step and exit
# 75. results.json then says "status": "preempted", and the job is put back in the queue: when it starts again,
# --resume auto continues it exactly.

# torchelastic's wait for its workers after passing a signal on, before it SIGKILLs them (default 30 s): enough
# for one more step and a checkpoint of VGG16 (about 1 GB with its optimizer state) on slow shared storage.
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-100}

run_status() {
    python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get("status", ""))' "$OUT/results.json" \
        2>/dev/null || true
}

run_and_requeue() {
    "$@" &
    local child=$!
    SIGNALLED=0
    trap 'SIGNALLED=1; echo "$(date +%T) signal received: stopping the run at its next step" >&2
          kill -TERM "$child" 2>/dev/null' USR1 TERM
    local rc=0
    wait "$child" || rc=$?
    while kill -0 "$child" 2>/dev/null; do  # a trapped signal ends `wait` early: wait for the run itself
        rc=0
        wait "$child" || rc=$?
    done
    trap - USR1 TERM
    local status waited=0
    status=$(run_status)
    # A launcher that does not wait for its worker (one process) can end before the worker has written its
    # checkpoint and results.json (which a run in its first epoch does not have yet).
    while [ "$SIGNALLED" = 1 ] && { [ -z "$status" ] || [ "$status" = running ]; } && [ "$waited" -lt "$TORCH_ELASTIC_SHUTDOWN_TIMEOUT" ]; do
        sleep 1; waited=$((waited + 1)); status=$(run_status)
    done
    if [ "$status" = preempted ]; then
        echo "$(date +%T) the run saved a checkpoint and stopped: requeueing job $SLURM_JOB_ID" >&2
        scontrol requeue "$SLURM_JOB_ID"
        return 0
    fi
    return "$rc"
}
