#!/usr/bin/env bash
# The GPU checks of one session, as one command for a machine with CuPy and a CUDA device (the
# device machine lends about 10 usable minutes a session, one command at most 10). Logs, JUnit XML
# and JSON go to $OUT (default runs/gpu). Each stage runs under its own limit, and is stopped with
# SIGINT, so that pytest still prints its summary (failures, durations) when a stage is cut short.
#   RCENP_DATA=... bash scripts/gpu_check.sh [tests|bench|suite|sweep|all]
#   tests: 1. every explicit CuPy case (pytest -m gpu: ops, autograd, conv/BN, K-density with its
#          fused kernel, JSMA, the checks), then 2. the paths that reach the GPU only through
#          RCENP_DEVICE=cuda: run_attack (FGSM, BIM, ILCM, C&W, C&W-wb, transfer), C&W's snapshots,
#          the detector, training and its resume                                   (at most 5 min)
#   bench: bench_engine (ResNet-32, 3x32x32) against PyTorch on the same GPU, and bench_kd (about 2 min)
#   all:   tests, then bench: one command of about 8 minutes at most (stage limits 450 s, each + 15 s to stop)
#   suite: the whole suite with RCENP_DEVICE=cuda (longer than one command's limit: a later call)
#   sweep: Fig. 2a's cells on the GPU (data, not a check)
#   paper: `rcenp reproduce --budget paper` on the GPU for PAPER_LIMIT seconds (default 480), the
#          parts PAPER_ARGS names (default MNIST's Table 2), into PAPER_OUT (default $OUT/reproduce-paper,
#          too deep to come back from the device tool as it is: PACK below packs it); a later call
#          with that folder in place (carried, and named by PAPER_OUT) resumes it
#   PACK=FILE: at the end, every file under $OUT but the ε cells' adversarial.npz (as .gitignore
#          keeps results/) in one tar.xz, FILE, which the device tool brings back whole
# What travels: the device tool sends tracked files and at most 64 MiB in all, and results/ alone
# is more, so a session untracks it for its calls and tracks it again after (the files stay put):
#   printf '/results/\n/.gpu-data/\n/.gpu-carry/\n' >> .git/info/exclude; git rm -r -q --cached results
#   mkdir -p .gpu-data && cp -r "$RCENP_DATA"/mnist .gpu-data/   # MNIST, 11 MB (CIFAR's 18 MB does not fit too)
#   python scripts/gpu_paper.py slim results/reproduce-paper .gpu-carry/reproduce-paper   # 4 MB: the run to go on
#   ... calls with carry [".gpu-data", ".gpu-carry"], RCENP_DATA=$PWD/.gpu-data, PYTHONPATH=$PWD,
#       PAPER_OUT=.gpu-carry/reproduce-paper, PACK=$OUT/NAME.tar.xz ...
#   git reset -q -- results; sed -i '/^\/results\/$/d' .git/info/exclude   # (commit nothing before this)
#   mkdir BACK && tar -C BACK -xJf /work/.device/K/NAME.tar.xz   # the call's files_at
#   python scripts/gpu_paper.py merge BACK/reproduce-paper results/reproduce-paper, then --report
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-runs/gpu}"; mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
what="${1:-all}"
limited() {  # limited SECONDS COMMAND...: SIGINT at the limit (pytest then reports), SIGKILL 15 s later
  local seconds="$1"; shift
  timeout -s INT -k 15 "$seconds" "$@"
}

# 0. preflight: what the stages need, so that a missing package costs seconds, not the session
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "
import cupy, numpy, scipy, PIL, hypothesis, pytest
print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'scipy', scipy.__version__, 'pytest', pytest.__version__)
print('CUDA devices:', cupy.cuda.runtime.getDeviceCount())
import rcenp.backend as b
assert b.cuda_available(), 'rcenp sees no CUDA device'
" || { echo "PREFLIGHT FAILED: see above"; exit 1; }
pytest_args=(-q -p no:cacheprovider -rfE --durations=10 --continue-on-collection-errors)
status=0  # non-zero when a stage fails (pipefail: pytest's status, not tail's), the script's exit status

if [ "$what" = tests ] || [ "$what" = all ]; then
  RCENP_DEVICE=cuda limited "${GPU_CASES_LIMIT:-150}" python3 -m pytest "${pytest_args[@]}" -m gpu \
    --junitxml="$out/gpu_cases.xml" tests 2>&1 | tee "$out/pytest_gpu_cases.log" | tail -n 40 || status=1
  RCENP_DEVICE=cuda limited "${DEVICE_PATHS_LIMIT:-150}" python3 -m pytest "${pytest_args[@]}" -m "not gpu" \
    --junitxml="$out/device_paths.xml" tests/test_attack_run.py tests/test_attack_runfiles.py \
    tests/test_attack_transfer.py tests/test_attacks_cw_snapshot.py tests/test_detector.py tests/test_train.py \
    2>&1 | tee "$out/pytest_device_paths.log" | tail -n 40 || status=1
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  RCENP_DEVICE=cuda limited 90 python3 bench/bench_engine.py --repeats 5 --json "$out/engine_cuda_r32.json" \
    > /dev/null || { echo "FAILED: bench_engine.py ResNet-32 (exit $?)"; status=1; }
  limited 60 python3 bench/bench_kd.py --repeats 5 --json "$out/kd.json" > /dev/null \
    || { echo "FAILED: bench_kd.py (exit $?)"; status=1; }
  for f in "$out"/*.json; do echo "== $f"; python3 -c "import json,sys; print(json.dumps(json.load(open(sys.argv[1])))[:1500])" "$f"; done
fi
if [ "$what" = suite ]; then
  RCENP_DEVICE=cuda limited "${SUITE_LIMIT:-540}" python3 -m pytest "${pytest_args[@]}" --junitxml="$out/suite.xml" \
    tests 2>&1 | tee "$out/pytest_cuda.log" | tail -n 60 || status=1
fi
if [ "$what" = sweep ]; then
  # Fig. 2a's cells on the GPU, JSMA first; whatever finishes inside SWEEP_LIMIT comes back
  sweep=/tmp/fig2a-cuda; mkdir -p "$sweep"; deadline=$((SECONDS + ${SWEEP_LIMIT:-300}))
  for attack in ${SWEEP_ATTACKS:-jsma bim ilcm fgsm}; do
    [ $((deadline - SECONDS)) -gt 5 ] || break
    limited $((deadline - SECONDS)) python3 scripts/attack_sweep.py --attacks "$attack" --device cuda --batch-size 1000 \
      --out "$sweep" > "$sweep/$attack.log" 2>&1 || status=1; tail -n 2 "$sweep/$attack.log"
  done
  (cd "$sweep" && find . -name summary.json -o -name samples.jsonl -o -name run.json -o -name '*.md' -o -name '*.log' \
     -o -name sweep.json | tar -cJf "$out/fig2a_cuda.tar.xz" -T -)
fi
if [ "$what" = paper ]; then
  # shellcheck disable=SC2086  # PAPER_ARGS is a list of options
  RCENP_DEVICE=cuda limited "${PAPER_LIMIT:-480}" python3 -m rcenp reproduce --budget paper --device cuda \
    --out "${PAPER_OUT:-$out/reproduce-paper}" --resume ${PAPER_ARGS:---only table2 --datasets mnist} > "$out/reproduce-paper.log" 2>&1
  rc=$?  # 130: stopped at the limit (SIGINT), its finished cells kept; anything else but 0 is a failure
  [ "$rc" -eq 0 ] || [ "$rc" -eq 130 ] || status=1
  tail -n 20 "$out/reproduce-paper.log"
fi
ls -la "$out"
if [ -n "${PACK:-}" ]; then
  if [ -n "${PAPER_OUT:-}" ] && [ -d "$PAPER_OUT" ] && [ ! -e "$out/$(basename "$PAPER_OUT")" ]; then
    cp -r "$PAPER_OUT" "$out/"  # a carried run goes back beside the logs
  fi
  pack="$(realpath -m "$PACK")"; packing="$(mktemp /tmp/pack.XXXXXX)"  # not under $out while written
  (cd "$out" && find . -type f ! -path "./$(basename "$pack")" ! \( -name adversarial.npz ! -path '*/cw-wb*' \) \
     | tar -cJf "$packing" -T -) && mv "$packing" "$pack" || { echo "FAILED: packing $out into $PACK"; status=1; }
  ls -la "$pack"
fi
exit "$status"
