#!/usr/bin/env bash
# Issue 19: two GPUs of one host (the device tool's nvidia-h200-x2), one call. Two servers start side by side on
# the random-weight 1.3B preset: a one-GPU server (LIPAR_DEVICES=cuda:0, port 8001) and the two-GPU server
# (LIPAR_DEVICES=cuda:0,cuda:1, port 8000), both admitting N+1 sessions per worker. The one-GPU server is measured
# first (N and N+1 webcam sessions) and stopped; then the two-GPU server with 1, 2, N, N+2, 2N and 2N+2 sessions. While one server
# is measured the other holds its models on the GPUs but runs nothing. Each run also saves the server's /readyz
# and the worker lines of /metrics half-way through (per-GPU sessions, busy, device memory).
#
# Carry .whl and .clips (python bench/make_clips.py .clips: the webcam kind is what runs). Writes under $OUT:
# two-gpu-test.txt (tests/gpu/test_two_gpus.py, run first), table.md (every run), smi.csv (per-GPU utilisation),
# runs.tgz (each run's JSON, markdown, readyz, metrics), server-8000.log and server-8001.log (tails).
#   N=4 ONE_RUNS="..." TWO_RUNS="..." bash bench/gpu_two.sh   (RUNS specs as in bench/gpu_loadtest.sh)
set -uo pipefail
N=${N:-4}
here=$(dirname "$0")
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader
export PYTHONPATH=/tmp/site:$PWD
# the library on the second GPU while the first is current (tests/gpu/test_two_gpus.py), before the servers load
timeout "${TEST_S:-150}" python3 -m pytest -m gpu tests/gpu/test_two_gpus.py -p no:cacheprovider -v -o addopts="" \
  2>&1 | tee "$OUT/two-gpu-test.txt" | tail -n 5
common=(PRESET="${PRESET:-self-forcing-1.3b-random}" GPU_TESTS=0 SESSIONS_PER_WORKER="$((N + 1))")
env "${common[@]}" PLAN=start DEVICES=cuda:0 PORT=8001 bash "$here/gpu_loadtest.sh" > /tmp/start-8001.txt 2>&1 &
env "${common[@]}" PLAN=start DEVICES=cuda:0,cuda:1 PORT=8000 bash "$here/gpu_loadtest.sh" > /tmp/start-8000.txt 2>&1
wait
cat /tmp/start-8001.txt /tmp/start-8000.txt
ONE_RUNS=${ONE_RUNS:-"g1s$N:$N:webcam:on:30 g1s$((N + 1)):$((N + 1)):webcam:on:20"}
TWO_RUNS=${TWO_RUNS:-"g2s1:1:webcam:on:20 g2s2:2:webcam:on:20 g2s$N:$N:webcam:on:20 \
g2s$((N + 2)):$((N + 2)):webcam:on:20 g2s$((2 * N)):$((2 * N)):webcam:on:60 g2s$((2 * N + 2)):$((2 * N + 2)):webcam:on:20"}
env "${common[@]}" PLAN=runs PORT=8001 RUNS="$ONE_RUNS" bash "$here/gpu_loadtest.sh"
env "${common[@]}" PLAN=stop PORT=8001 bash "$here/gpu_loadtest.sh"
env "${common[@]}" PLAN=runs PORT=8000 RUNS="$TWO_RUNS" bash "$here/gpu_loadtest.sh"
