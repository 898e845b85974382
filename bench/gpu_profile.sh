#!/usr/bin/env bash
# Device call: install the carried wheels, then bench/gpu_profile.py (writes under $OUT).
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 bench/gpu_profile.py 2>&1 | tee "$OUT/profile.log" | tail -60
