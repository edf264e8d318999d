#!/usr/bin/env bash
# The checks run on a lent CUDA machine (an H200 here), in one call: see docs/devices.md.
# Needs lm-eval and its pure-Python dependencies as wheels in .whl/ (the machine has torch, transformers,
# pandas, matplotlib, jinja2, pyarrow, scipy and statsmodels). Writes its logs and JSON under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/device-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
step() { echo "=== $1"; shift; local t0=$SECONDS; timeout "$@"; echo "=== rc=$? in $((SECONDS - t0)) s"; }
{
if [ "${ONLY_SWEEP:-0}" != 1 ]; then
step env 60 python3 -c "import torch, transformers, lm_eval, quantsweep; print(torch.__version__, transformers.__version__, lm_eval.__version__, torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
step cuda-tests 120 python3 -m pytest -q -p no:cacheprovider -m cuda -rA tests/core/test_device.py
step rotation-cuda 120 python3 benchmarks/rotation_cuda_check.py
step generation-bf16 200 python3 benchmarks/generation.py --device cuda --dtype bfloat16 --skip-families --out "$OUT/generation_cuda_bf16.json"
step generation-fp32 200 python3 benchmarks/generation.py --device cuda --dtype float32 --skip-families --out "$OUT/generation_cuda_fp32.json"
fi
step sweep-bf16 300 python3 -m quantsweep run --model toy --device cuda --dtype bfloat16 --recipe w8-rtn --recipe w4-rtn \
    --recipe w4a4-smoothquant --recipe w4a4-rotate-rtn --recipe w4a4kv4-rotate-gptq --tasks toy_mc4,toy_ppl,toy_gen \
    --limit 100 --aa-control --out /tmp/sweep-bf16
cp /tmp/sweep-bf16/results.jsonl "$OUT/sweep_cuda_bf16_results.jsonl" 2>/dev/null
} 2>&1 | tee "$OUT/device_check.log"
