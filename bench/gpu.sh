#!/usr/bin/env bash
# The GPU numbers in BENCHMARKS.md, as one script (about 5 minutes on one H200):
#   bash bench/gpu.sh [OUT_DIR]
# MAE ViT-B/16 at 224 in bf16 at the largest batch that fits (MAE_BATCH=N times
# batch N instead of searching), then Barlow Twins ResNet-50 at 224 in bf16. Results are appended to OUT_DIR/gpu.jsonl. If a folder
# .whl of wheels is beside this repository's files (a machine without network),
# they are installed first into /tmp/site.
set -uo pipefail
out=${1:-${OUT:-.}}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.95
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
status=0
mae_batch=(--config.input.batch_size=1024 --max_batch)
[ -n "${MAE_BATCH:-}" ] && mae_batch=(--config.input.batch_size="$MAE_BATCH")
timeout 240 python3 bench/train_step.py --config configs/ssl/mae_imagenet.py:model=vit_b \
  --config.precision=bfloat16 "${mae_batch[@]}" \
  --steps 10 --json "$out/gpu.jsonl" || status=$?
timeout 150 python3 bench/train_step.py \
  --config configs/ssl/barlow_twins_imagenet.py:model=resnet50 \
  --config.precision=bfloat16 --config.input.batch_size=512 \
  --steps 10 --json "$out/gpu.jsonl" || status=$?
exit $status
