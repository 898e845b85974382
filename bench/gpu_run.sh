#!/usr/bin/env bash
# One device call: install carried wheels, check correctness on the GPU, then measure (writes under $OUT).
# Usage on the device tool: bash bench/gpu_run.sh   (carry .whl and .clips)
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, diffusers, av, pydantic; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'cuda', torch.cuda.get_device_name())"
# Correctness on the GPU: streaming DiT vs diffusers (fp32), and the mask vs its scipy reference if scipy exists.
python3 bench/gpu_checks.py 2>&1 | tee "$OUT/checks.txt"
python3 -m lipar_core.bench --clips .clips --out "$OUT/bench.json" --blocks "${BLOCKS:-8}" 2>&1 | tee "$OUT/bench.log" | grep -v "^variants"
