#!/usr/bin/env bash
# The second device call (after the GPTQ-on-CUDA fix): the suite's cuda tests and the bf16 sweep again.
set -uo pipefail
OUT=${OUT:-/tmp/device-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
{
echo "=== cuda tests"; timeout 200 python3 -m pytest -q -p no:cacheprovider -m cuda -rA tests/core/test_device.py tests/methods/test_cuda_methods.py; echo "rc=$?"
ONLY_SWEEP=1 bash benchmarks/device_check.sh | grep -v "cells:\|Tokenizing\|it/s\]"
} 2>&1 | tee "$OUT/device_check_final.log"
