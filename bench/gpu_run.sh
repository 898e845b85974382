#!/usr/bin/env bash
# One device call: install carried wheels, check correctness on the GPU, then measure (writes under $OUT).
# Usage on the device tool: bash bench/gpu_run.sh   (carry .whl and .clips)
#   STEPS (default bench,mem320,sessions; also checks, before, before_tree) picks the steps; each step has its own time
#   limit so that the call always returns what it measured. CHECKS (comma list of bench/gpu_checks.py steps),
#   VARIANTS and BENCH_ARGS (extra lipar-bench arguments, e.g. --fp8) narrow or change them.
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/run.log"
python3 -c "import torch, diffusers, av, pydantic; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'cuda', torch.cuda.get_device_name())"
STEPS=",${STEPS:-bench,mem320,sessions},"
if [[ $STEPS == *,checks,* ]]; then
  # Correctness on the GPU (streaming DiT vs diffusers, compiled vs eager, graphs vs eager), micro-timings.
  timeout "${CHECKS_S:-330}" python3 bench/gpu_checks.py >> "$OUT/run.log" 2>&1
  echo "checks rc=$?"; grep -E "rel_err|bit_exact|_ms_|first_run|error" "$OUT/checks.json" | head -80
fi
if [[ $STEPS == *,bench,* ]]; then
  timeout "${BENCH_S:-330}" python3 -m lipar_core.bench --clips .clips --out "$OUT/bench.json" --blocks "${BLOCKS:-8}" \
    --variants "${VARIANTS:-window,self_forcing,naive,lipar}" ${BENCH_ARGS:-} >> "$OUT/run.log" 2>&1
  echo "bench rc=$?"; cat "$OUT/bench.md"
fi
if [[ $STEPS == *,before,* ]]; then
  # The hot path without compiled layers, same run, for the before/after table.
  timeout 200 python3 -m lipar_core.bench --clips .clips --out "$OUT/bench-before.json" --blocks "${BLOCKS:-8}" \
    --variants window,lipar --no-compile-layers >> "$OUT/run.log" 2>&1
  echo "before rc=$?"; cat "$OUT/bench-before.md"
fi
if [[ $STEPS == *,before_tree,* && -d .before/lipar_core ]]; then
  # An earlier version of the library, same machine and run, for a before/after comparison: made here with
  #   mkdir -p .before && git archive <rev> lipar_core | tar -x -C .before   (carry .before; never committed)
  (cd .before && PYTHONPATH=/tmp/site:$PWD timeout 200 python3 -m lipar_core.bench --clips ../.clips \
    --out "$OUT/bench-before.json" --blocks "${BLOCKS:-8}" --variants "${VARIANTS:-window,lipar}") >> "$OUT/run.log" 2>&1
  echo "before_tree rc=$?"; cat "$OUT/bench-before.md"
fi
if [[ $STEPS == *,mem320,* ]]; then
  # Peak memory and speed at the second resolution of issue 7 (576x320).
  timeout 150 python3 -m lipar_core.bench --clips .clips --out "$OUT/bench-320x576.json" --blocks 4 \
    --height 320 --width 576 --variants window,lipar >> "$OUT/run.log" 2>&1
  echo "mem320 rc=$?"; cat "$OUT/bench-320x576.md"
fi
if [[ $STEPS == *,sessions,* ]]; then
  # Sessions per GPU (round-robin, overlapped or not), time to first frame, profile of a LIPAR block.
  timeout 200 python3 bench/gpu_profile.py >> "$OUT/run.log" 2>&1
  echo "sessions rc=$?"; cat "$OUT/sessions.json"
fi
