#!/usr/bin/env bash
# The paper-preset MNIST ResNet-32 runs (CE and RCE, 20,000 steps each) behind the shipped models.
# They take hours on a CPU, so they are resumable across sessions:
#
#   bash scripts/paper_runs.sh start    # restore saved progress (if any) into runs/, train both in the background
#   bash scripts/paper_runs.sh save     # copy the latest checkpoints to rcenp/models/pretrained/in-progress/
#   bash scripts/paper_runs.sh status   # last progress line of each run
#   bash scripts/paper_runs.sh finish   # both done: ship them as mnist-resnet32-{ce,rce}, fit and
#                                       # calibrate their detectors, write runs/detection-*.json
#
# The two runs share the machine with one host worker and one BLAS thread each; results do not
# depend on the worker count. Each continues bit for bit from its last checkpoint (every 250 steps).
# They train with the code of one pinned commit ($saved/CODE_COMMIT, checked out as a git worktree
# in .paper-code, whose runs/ links to this checkout's), so later changes to the engine's arithmetic
# cannot make a resumed run a mix of two versions; the checkpoints and shipped manifests record
# that commit and the plain command (--out runs/paper-mnist-*).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
saved="rcenp/models/pretrained/in-progress"
export RCENP_DATA="${RCENP_DATA:-$(cd "$root/.." && pwd)/shared/data}"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
code="$root/.paper-code"

checkout_pinned_code() {
  local commit
  commit="$(cat "$saved/CODE_COMMIT" 2>/dev/null || git rev-parse HEAD)"
  git worktree prune
  if [ ! -d "$code" ]; then
    git worktree add --detach "$code" "$commit" >/dev/null
  fi
  ln -sfn ../runs "$code/runs"
  if [ "$(git -C "$code" rev-parse HEAD)" != "$commit" ] || [ -n "$(git -C "$code" status --porcelain --untracked-files=no)" ]; then
    echo "$code is not a clean checkout of the pinned commit $commit; remove it (git worktree remove --force $code) and start again" >&2
    exit 1
  fi
  echo "training code: commit $commit in $code"
}

case "${1:-}" in
  start)
    checkout_pinned_code
    for objective in ce rce; do
      run="runs/paper-mnist-$objective"
      if [ ! -f "$run/checkpoint.json" ] && [ -f "$saved/paper-mnist-$objective/checkpoint.json" ]; then
        mkdir -p "$run" && cp "$saved/paper-mnist-$objective/"* "$run/"
      fi
      mkdir -p "$run"
      (cd "$code" && RCENP_HOST_THREADS=1 OPENBLAS_NUM_THREADS=1 PYTHONPATH="$code" nohup python3 -m rcenp train \
        --dataset mnist --objective "$objective" --preset paper --depth 32 --seed 0 --checkpoint-every 250 \
        --resume --out "$run" >> "$root/$run/stdout.log" 2>&1 &)
      echo "started $run"
    done ;;
  save)
    [ -d "$code" ] && git -C "$code" rev-parse HEAD > "$saved/CODE_COMMIT"
    for objective in ce rce; do
      run="runs/paper-mnist-$objective"
      [ -f "$run/checkpoint.json" ] || continue
      mkdir -p "$saved/paper-mnist-$objective"
      cp "$run/checkpoint.npz" "$run/checkpoint.json" "$run/config.json" "$run/train.log" "$saved/paper-mnist-$objective/"
      python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print(sys.argv[1], 'step', m['step'])" "$run/checkpoint.json"
    done ;;
  status)
    for objective in ce rce; do tail -n 1 "runs/paper-mnist-$objective/train.log" 2>/dev/null || true; done ;;
  finish)
    for objective in ce rce; do
      run="runs/paper-mnist-$objective" name="mnist-resnet32-$objective"
      [ -f "$run/metrics.json" ] || { echo "$run has not finished (no metrics.json)" >&2; exit 1; }
      python3 scripts/ship_model.py "$run" "$name"
      python3 -m rcenp detect "$name" --fit
      python3 scripts/detection_report.py "$name" --json "runs/detection-$name.json"
    done ;;
  *) sed -n '2,12p' "$0"; exit 2 ;;
esac
