#!/usr/bin/env bash
# Every GPU check of the project in one call, for a session lent one H100/H200 (~10 min):
#   forward TFLOP/s at the LLaDA-8B shape (target >= 550 at batch 8 x 320, bf16),
#   sampler ms/step at 8B batch 1 / 8 and 1B batch 1 (targets <= 15 ms and <= 5 ms, exact mode),
#   fast modes' speed-up, and the llada-1b train step's MFU at seq 2048 (target >= 45%).
# Each part has its own time limit, so one slow part does not hide the others' numbers.
# Output: JSON lines and tables on stdout, copies under $OUT (when set).
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu_checks}"; mkdir -p "$OUT"
PY="${PYTHON:-python}"   # the GPU image has jax in its system python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" XLA_PYTHON_CLIENT_MEM_FRACTION=.92
"$PY" -c "import jax; print(jax.__version__, jax.devices())"
part() { local name=$1 limit=$2; shift 2; echo "== $name"; timeout "$limit" "$@" 2>&1 | grep -v Warning | tee "$OUT/$name.txt" | tail -25; }
part forward_8b 120 "$PY" benchmarks/forward.py --config configs/llada-8b.yaml --batch 1 8 --length 320 --iters 10
part sampler_8b_b1 150 "$PY" benchmarks/sampler.py --config llada-8b --batch 1 --modes exact,dual,threshold+dual --repeats 1
part sampler_8b_b8 90 "$PY" benchmarks/sampler.py --config llada-8b --batch 8 --modes exact --repeats 1
part sampler_1b_b1 90 "$PY" benchmarks/sampler.py --config llada-1b --batch 1 --modes exact,prefix,dual,threshold --repeats 2
part train_1b 120 "$PY" benchmarks/train_step.py --config configs/llada-1b.yaml --steps 5 train.seq_len=2048 train.batch_size=8
# Serving (issue 15): the scheduler in-process (no HTTP: the image lacks starlette/uvicorn/openai) at the
# LLaDA-8B shape, random bf16 weights, concurrency 1/8/32 against sequential lj.generate and static batches.
# The HTTP stack, when wheels are shipped in .whl/, goes to /tmp/site (PYTHONPATH) for `llada-jax serve`.
if [ -d .whl ] && ! "$PY" -c "import starlette, uvicorn, prometheus_client" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --find-links .whl --target /tmp/site starlette uvicorn prometheus-client openai httpx \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
part serving_8b 240 "$PY" benchmarks/serving.py --engine --config llada-8b --dtype bfloat16 --concurrency 1 8 32 \
  --requests 32 --requests-per-client 1 --min-requests 2 --baseline-requests 2 --rate 0 \
  --prompt-lengths 64 --max-tokens 128 --steps 128 --block-length 32 --json-out "$OUT/serving_8b.json"
