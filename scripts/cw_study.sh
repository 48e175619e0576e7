#!/usr/bin/env bash
# The C&W runs on the shipped MNIST ResNet-32s behind Attacks II's figures, one after another,
# each resumable: run this script again after a kill and every finished run is skipped, a run
# cut short continues from its last finished batch (`rcenp attack --resume`).
#
#   1. C&W-wb, both kernels, 100 images, stages 3 x 300 then 5 x 500 iterations: exactly the
#      `cpu` budget's Table 3 cells, written in its layout, so that
#      `rcenp reproduce --budget cpu --cells-from results/cw` uses them instead of recomputing;
#   2. C&W (kappa 0) and C&W-hc (kappa 10), 200 images, 9 binary steps x 1,000 iterations, in
#      batches of 25 (about 30 min each on one core: a session's end loses at most that);
#   3. the budget study: C&W on the first 20 images at 2,000 / 5,000 / 10,000 iterations per
#      binary step (9 steps), to show how far the reduced budget is from the paper's; its 1,000 row
#      is the first 20 images of run 2 (same targets, per-image results independent of the batch:
#      scripts/cw_study_tables.py, which prints both tables).
#
# Everything else as the paper: c0 1 (C&W-wb: 10, then 100), Adam lr 0.01, random targets
# (seed 0), abort-early per sample. One core: RCENP_HOST_THREADS=1 OPENBLAS_NUM_THREADS=1.
#
#   RCENP_DATA=../shared/data setsid nice -n 19 bash scripts/cw_study.sh > runs/cw_study.log 2>&1 &
#
# setsid gives the study its own session, whose share of the CPU the script then lowers to nice 19
# (/proc/self/autogroup; like scripts/runs.py's training runs): with Linux's autogroup scheduling,
# a process's nice only ranks it within its session, so a study started from an interactive shell
# took a whole core from the niced training runs whatever its own nice.
#
# A run's finished batches (results/.../partial/batch-NNNNN.{npz,jsonl,code.json}) and the
# snapshot of the batch in work (batch-NNNNN-state.npz, at most 5 minutes old) are tracked by git:
# commit them before a session ends, and the next session's run continues from them.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-$root/.venv/bin/python}"
if [[ "$(ps -o sid= -p $$ | tr -d ' ')" == "$$" && -w /proc/self/autogroup ]]; then
    echo 19 > /proc/self/autogroup   # only as a session leader: never lower the caller's own session
fi
export RCENP_HOST_THREADS=1 OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1

attack() {  # attack MODEL OUT ARGS...: one resumable run
    local model="$1" out="$2"
    shift 2
    if [[ -f "$out/summary.json" ]]; then
        echo "done already: $out"
        return
    fi
    echo "$(date -u '+%F %T') rcenp attack $model $* --out $out --resume"
    "$python" -m rcenp attack "$model" "$@" --out "$out" --resume
}

models=(mnist-resnet32-ce mnist-resnet32-rce)
for m in "${models[@]}"; do
    attack "$m" "results/cw/$m/cw-wb" --attack cw-wb --n 100 \
        --stage1-binary-steps 3 --stage1-iterations 300 --binary-steps 5 --max-iterations 500
    attack "$m" "results/cw/$m/cw-wb-detector" --attack cw-wb --kernel detector --n 100 \
        --stage1-binary-steps 3 --stage1-iterations 300 --binary-steps 5 --max-iterations 500
done
for a in cw cw-hc; do
    for m in "${models[@]}"; do
        attack "$m" "results/cw-9x1000/$m/$a" --attack "$a" --n 200 --batch-size 25 \
            --binary-steps 9 --max-iterations 1000
    done
done
for iterations in 2000 5000 10000; do
    for m in "${models[@]}"; do
        attack "$m" "results/cw-budget/$m/cw-$iterations" --attack cw --n 20 --batch-size 20 \
            --binary-steps 9 --max-iterations "$iterations"
    done
done
