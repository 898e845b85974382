#!/usr/bin/env bash
# The served-path measurement on one GPU (issue 13): the real lipar-server on the random-weight 1.3B preset,
# real aiortc clients from lipar-loadtest (several processes), 30 fps input, 832x480, webcam-like and
# moving-camera clips (bench/make_clips.py), LIPAR on and off per session. Writes under $OUT.
#
# On the device tool, carrying .whl (wheels: diffusers, av, aiortc and its needs, fastapi, uvicorn, pydantic;
# the list is in bench/NOTES.md) and .clips (python bench/make_clips.py .clips):
#   PLAN=start  bash bench/gpu_loadtest.sh   install, `pytest -m gpu`, start the server (setsid: it outlives
#                                            the call and keeps its warm graphs for the next call), wait ready
#   PLAN=runs RUNS="name:sessions:kind:lipar:seconds[:prompt_change_at] ..." bash bench/gpu_loadtest.sh
#                                            load tests against the running server (kind: webcam | incar |
#                                            moving; lipar: on | off); then the table
#   PLAN=stop   bash bench/gpu_loadtest.sh   stop the server (PRESET=... PLAN=start starts another)
# BENCH=1 with PLAN=start also runs lipar-bench (window, paper_mask, lipar; BENCH_BLOCKS blocks per clip, default
# 4) once the server is ready and idle. WARMUP (default 1) is the loadtest's --warmup: the steady window starts
# this long after a session's first frame.
# DEVICES=cuda:0,cuda:1 (default cuda:0) starts one worker per GPU (issue 19: on nvidia-h200-x2, runs of 1..2N
# webcam sessions with SESSIONS_PER_WORKER=N, beside the one-GPU figure measured in the same call).
# Each call returns: server.log (tail), runs.tgz (every run's JSON and markdown), table.md, smi.csv.
set -uo pipefail
export PYTHONUNBUFFERED=1
RC=0
PRESET=${PRESET:-self-forcing-1.3b-random}
PORT=${PORT:-8000}
URL=http://127.0.0.1:$PORT
LOG=/tmp/server-$PORT.log  # one server per port: bench/gpu_two.sh runs a one-GPU and a two-GPU server side by side
RUNS_DIR=/tmp/loadtest-runs
mkdir -p "$RUNS_DIR"
if [ ! -d /tmp/site/aiortc ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD
LOADTEST=(python3 -m server.loadtest.cli)

ready() { python3 - "$URL" <<'EOF'
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1] + "/readyz", timeout=2)
except Exception:
    sys.exit(1)
EOF
}

case "${PLAN:-runs}" in
start)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, diffusers, av, aiortc, fastapi; print('torch', torch.__version__, torch.cuda.get_device_name())"
  # The server first: its warm-up (compilation, graph capture) overlaps the GPU tests.
  LIPAR_CONFIG=$PRESET LIPAR_DEVICES=${DEVICES:-cuda:0} LIPAR_SESSIONS_PER_WORKER=${SESSIONS_PER_WORKER:-8} \
    LIPAR_HOST=127.0.0.1 LIPAR_PORT=$PORT LIPAR_RTC_HOST_ADDRESSES=127.0.0.1 LIPAR_WORKER_START_TIMEOUT_S=500 \
    LIPAR_IDLE_TIMEOUT_S=30 LIPAR_READYZ_DETAILS_PUBLIC=true setsid python3 -m server.main > "$LOG" 2>&1 < /dev/null &
  echo $! > "/tmp/server-$PORT.pid"
  echo "server pid $! ($PRESET on ${DEVICES:-cuda:0}, port $PORT)"
  if [ "${GPU_TESTS:-1}" = 1 ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu-tests.txt"
    LIPAR_TEST_CLIPS=.clips/moving timeout "${GPU_TESTS_S:-300}" python3 -m pytest -m gpu tests/gpu -p no:cacheprovider \
      -v -o addopts="" --timeout=280 2>&1 | tee -a "$OUT/gpu-tests.txt" | tail -n 15
    [ "${PIPESTATUS[0]}" = 0 ] || { echo "GPU TESTS FAILED (see gpu-tests.txt)"; RC=1; }
  fi
  for _ in $(seq 1 "${READY_S:-400}"); do ready && break; sleep 1; done
  ready && echo "server ready" || echo "server NOT ready"
  grep -E "warm|graphs|ready|Error|error" "$LOG" | tail -n 20
  if [ "${BENCH:-0}" = 1 ]; then
    timeout "${BENCH_S:-240}" python3 -m lipar_core.bench --clips .clips --out "$OUT/bench.json" \
      --blocks "${BENCH_BLOCKS:-4}" --variants window,paper_mask,lipar > "$OUT/bench.log" 2>&1
    echo "bench rc=$?"; cat "$OUT/bench.md"
  fi
  ;;
runs)
  nvidia-smi --query-gpu=timestamp,index,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 \
    >> "$OUT/smi.csv" 2>/dev/null &
  SMI=$!
  for spec in ${RUNS:?}; do
    IFS=: read -r name n kind lip secs pc <<< "$spec"
    extra=()
    [ "$lip" = off ] && extra+=(--lipar-json '{"enabled": false}')
    [ -n "${pc:-}" ] && extra+=(--prompt-change-at "$pc")
    echo "== $name: $n sessions, $kind clips, LIPAR $lip, $secs s"
    # the server's per-worker view (sessions, busy, device memory) half-way through the run
    (sleep $((secs / 2 + n / 2 + 3)); python3 - "$URL" "$RUNS_DIR/$name" <<'SNAP' ) &
import sys, urllib.request
for path, suffix in (("/readyz", ".readyz.txt"), ("/metrics", ".metrics.txt")):
    try:
        body = urllib.request.urlopen(sys.argv[1] + path, timeout=5).read()
    except Exception as e:
        body = repr(e).encode()
    open(sys.argv[2] + suffix, "wb").write(body)
SNAP
    timeout $((secs + 90)) "${LOADTEST[@]}" "$URL" --clips ".clips/$kind" --sessions "$n" --seconds "$secs" \
      --fps 30 --warmup "${WARMUP:-1}" --out "$RUNS_DIR/$name.json" --label "$name $PRESET $kind LIPAR-$lip" \
      "${extra[@]}" \
      > "$RUNS_DIR/$name.log" 2>&1
    echo "rc=$?"; tail -n "$((n + 6))" "$RUNS_DIR/$name.log"
  done
  kill "$SMI" 2>/dev/null
  wait
  python3 bench/loadtest_table.py "$RUNS_DIR" --smi "$OUT/smi.csv" --server-log "$LOG" \
    --out "$OUT/table.md" && cat "$OUT/table.md"
  ;;
stop)
  if [ -f "/tmp/server-$PORT.pid" ]; then  # this port's server (its process group: the workers too)
    kill -- "-$(cat "/tmp/server-$PORT.pid")" 2>/dev/null; sleep 3; kill -9 -- "-$(cat "/tmp/server-$PORT.pid")" 2>/dev/null
    rm -f "/tmp/server-$PORT.pid"
  else
    pkill -f "server.main" ; sleep 3; pkill -9 -f "server.main"
  fi
  echo stopped
  ;;
esac
tail -n 300 "$LOG" > "$OUT/server-$PORT.log" 2>/dev/null
tar czf "$OUT/runs.tgz" -C "$RUNS_DIR" . 2>/dev/null
exit "${RC:-0}"  # 1 when the GPU tests failed (the server still started: later calls can measure)
