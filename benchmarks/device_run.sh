#!/usr/bin/env bash
# What ran on the GPU machine for benchmarks/results/ (see benchmarks/README.md).
#   bash benchmarks/device_run.sh bench1   # v1 lever ablation + v2 eager levers
#   bash benchmarks/device_run.sh bench2   # v2 compiled fast path (+ single levers off it)
#   bash benchmarks/device_run.sh real     # short real-data fit_local runs (needs carried shards + wheels)
# OUT: folder for the JSON/PNG/log results (default benchmarks/results/new).
set -uo pipefail
OUT=${OUT:-benchmarks/results/new}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
stage=${1:-bench1}
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null | tee "$OUT/gpu-$stage.txt"

case $stage in
bench1)
  $PY -m stargan.cli bench train --model v1 --variants eager,bf16,bf16_cl,bf16_cl_ops,fast,fast_fp32 \
      --out "$OUT/train-v1-h100.json" 2>&1 | grep -v Warning
  $PY -m stargan.cli bench train --model v2 --variants eager,bf16,bf16_cl,bf16_cl_ops --iters 20 --warmup 4 \
      --out "$OUT/train-v2-h100-eager-levers.json" 2>&1 | grep -v Warning
  ;;
bench2)
  $PY -m stargan.cli bench train --model v2 --variants eager,fast --iters 12 --warmup 3 \
      --out "$OUT/train-v2-h100.json" 2>&1 | grep -v Warning
  ;;
real)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=$PYTHONPATH:/tmp/site
  P=data/gpu_celeba/params.yaml
  V1_ITERS=${V1_ITERS:-3000} V2_ITERS=${V2_ITERS:-1500} KNOBS=${KNOBS:-"-S train.tf32=true -S train.amp_bf16=true -S train.channels_last=true -S train.fast_ops=true"}
  [ -n "${SKIP_V1:-}" ] || $PY -m stargan.cli train --local --params $P $KNOBS -S train.model=v1 -S train.image_size=128 -S train.batch_size=16 \
      -S train.v1.g_conv_dim=64 -S train.v1.d_conv_dim=64 -S train.v1.g_repeat_num=6 -S train.v1.d_repeat_num=6 \
      -S train.num_iters=$V1_ITERS -S train.v1.num_iters_decay=0 -S train.loader_workers=6 -S train.log_every=250 \
      -S train.sample_every=$V1_ITERS -S train.checkpoint_every=$V1_ITERS -S train.output_dir=models/v1 2>&1 \
      | grep -v Warning | tee "$OUT/real-v1.log" | tail -n 6
  [ -n "${SKIP_V1:-}" ] || cp data/gpu_celeba/models/v1/samples/*.png "$OUT/real-v1-samples.png" 2>/dev/null
  $PY -m stargan.cli train --local --params $P $KNOBS -S train.model=v2 -S train.image_size=128 -S train.batch_size=8 \
      -S 'train.v2.domains=[Male]' -S train.v2.style_dim=64 -S train.v2.latent_dim=16 -S train.v2.max_conv_dim=512 \
      -S train.v2.mapping_hidden=512 -S train.num_iters=$V2_ITERS -S train.v2.ds_iter=100000 -S train.loader_workers=6 \
      -S train.log_every=250 -S train.sample_every=$V2_ITERS -S train.checkpoint_every=$V2_ITERS \
      -S train.output_dir=models/v2 2>&1 | grep -v Warning | tee "$OUT/real-v2.log" | tail -n 6
  cp data/gpu_celeba/models/v2/samples/*.png "$OUT/real-v2-samples.png" 2>/dev/null
  ;;
esac
ls -la "$OUT"
