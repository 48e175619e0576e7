#!/usr/bin/env bash
# The GPU checks of one session, as one command (for a machine with CuPy and a CUDA device):
# the whole suite with RCENP_DEVICE=cuda, the engine benchmark (ResNet-32 CIFAR shape, ResNet-56
# MNIST shape) against PyTorch on the same GPU, and the K-density benchmark. Logs and JSON go to
# $OUT (default runs/gpu). Each part has its own time limit so one hang cannot eat the others.
#   RCENP_DATA=... bash scripts/gpu_check.sh [tests|bench|attacks|all]
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-runs/gpu}"; mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
what="${1:-all}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import cupy, numpy, scipy; print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'scipy', scipy.__version__)"
if [ "$what" = tests ] || [ "$what" = all ]; then
  RCENP_DEVICE=cuda timeout "${TESTS_LIMIT:-200}" python3 -m pytest -q -p no:cacheprovider -rfE --timeout=90 \
    --durations=8 tests 2>&1 | tee "$out/pytest_cuda.log" | tail -n 60
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  RCENP_DEVICE=cuda timeout 100 python3 bench/bench_engine.py --repeats 10 --json "$out/engine_cuda_r32.json" \
    > /dev/null || echo "FAILED: bench_engine.py ResNet-32 (exit $?)"
  RCENP_DEVICE=cuda timeout 80 python3 bench/bench_engine.py --repeats 10 --depth 56 --shape 1x28x28 \
    --json "$out/engine_cuda_r56_mnist.json" > /dev/null || echo "FAILED: bench_engine.py ResNet-56 (exit $?)"
  timeout 70 python3 bench/bench_kd.py --repeats 5 --json "$out/kd.json" > /dev/null || echo "FAILED: bench_kd.py (exit $?)"
  for f in "$out"/*.json; do echo "== $f"; python3 -c "import json,sys; print(json.dumps(json.load(open(sys.argv[1])))[:1500])" "$f"; done
fi
if [ "$what" = attacks ] || [ "$what" = all ]; then
  RCENP_DEVICE=cuda timeout "${ATTACK_TESTS_LIMIT:-150}" python3 -m pytest -q -p no:cacheprovider -rfE --timeout=120 \
    tests/test_attacks_sign.py tests/test_attack_run.py tests/test_attacks_jsma.py tests/test_attacks_cw.py \
    2>&1 | tee "$out/pytest_attacks_cuda.log" | tail -n 30
  # Fig. 2a's cells on the GPU, JSMA first; whatever finishes inside SWEEP_LIMIT comes back
  sweep=/tmp/fig2a-cuda; mkdir -p "$sweep"; deadline=$((SECONDS + ${SWEEP_LIMIT:-300}))
  for attack in ${SWEEP_ATTACKS:-jsma bim ilcm fgsm}; do
    [ $((deadline - SECONDS)) -gt 5 ] || break
    timeout $((deadline - SECONDS)) python3 scripts/attack_sweep.py --attacks "$attack" --device cuda --batch-size 1000 \
      --out "$sweep" > "$sweep/$attack.log" 2>&1; tail -n 2 "$sweep/$attack.log"
  done
  (cd "$sweep" && find . -name summary.json -o -name samples.jsonl -o -name run.json -o -name '*.md' -o -name '*.log' \
     -o -name sweep.json | tar -cJf "$out/fig2a_cuda.tar.xz" -T -)
  ls -la "$out"
fi
exit 0
