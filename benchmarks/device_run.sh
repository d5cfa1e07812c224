#!/usr/bin/env bash
# What ran on the GPU machine for benchmarks/results/ (see benchmarks/README.md).
#   bash benchmarks/device_run.sh bench1   # v1 lever ablation + v2 eager levers
#   bash benchmarks/device_run.sh bench2   # v2 compiled fast path (+ single levers off it)
#   bash benchmarks/device_run.sh real     # short real-data fit_local runs (needs carried shards + wheels)
#   bash benchmarks/device_run.sh round2   # issue #17 round two, prepared, not yet run (README "Round two")
# OUT: folder for the JSON/PNG/log results (default benchmarks/results/new).
set -uo pipefail
OUT=${OUT:-benchmarks/results/new}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
stage=${1:-bench1}
PY=${PYTHON:-python3}
GPU_TXT="$OUT/gpu-$stage.txt"
[ "$stage" = round2 ] && GPU_TXT="$OUT/round2.log"     # round2: at most 8 files come back from $OUT
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null | tee "$GPU_TXT"

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
round2)
  # Carry ["benchmarks/official/src", "benchmarks/round2"] (built on the CPU machine by
  # benchmarks/round2_prepare.sh). Parts run in this order, each under `timeout` with
  # min(its cap, what is left of BUDGET_S), so one slow part cannot starve the others or the call:
  #   check      tests/test_v1_graph_step.py: CUDA capture replays the uncaptured step; NaN skipped
  #   v1         random data: official, eager, fast, graphs, fast_graphs (128 px, batch 16)
  #   v2         random data: official, eager, bf16_cl_ops (256 px, batch 8) + kernel profile of each
  #   v1_shards  data included: eager, graphs, fast_graphs fed by the JPEG-shard loader
  #   parity     2,000 v1 iterations eager vs fast_graphs on the shards, every step's losses to a CSV
  #   v2_blocks  v2 regional compilation (whatever time is left)
  # Files back (8 at most): round2.log, train-v1-round2.json, train-v2-round2.json, profile-v2.json,
  # train-v1-shards.json, parity-v1-celeba.{csv,json}, train-v2-blocks.json.
  # TINY=1: the same parts at CPU sizes (tests this script without a GPU; compilation off unless
  # TORCHDYNAMO_DISABLE=0, since inductor on a 2-core CPU takes minutes; caps x CAP_SCALE, default 4
  # there, as paper-width v2 takes ~9 s an iteration on 2 CPU cores; v2's bf16 variants are swapped
  # for fp32 ones, since bf16 convolutions at v2's widths took 154 s an iteration on that CPU).
  # PARTS="v1 parity": a subset. V2_VARIANTS, BLOCKS_VARIANTS: the v2 parts' variant lists.
  # DRY_RUN=1: print each part's command instead of running it.
  R2=${R2:-benchmarks/round2}
  SHARDS=${SHARDS:-$R2/shards/celeba}
  LOG="$OUT/round2.log"
  PARTS=${PARTS:-check v1 v2 v1_shards parity v2_blocks}
  if [ -z "${DRY_RUN:-}" ] && ls "$R2"/wheels/*.whl >/dev/null 2>&1 && ! "$PY" -c "import albumentations" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "$R2"/wheels/*.whl || exit 1
    export PYTHONPATH=$PYTHONPATH:/tmp/site
  fi
  export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$PWD/.cache/inductor}   # later parts reuse kernels
  if [ -n "${TINY:-}" ]; then
    export TORCHDYNAMO_DISABLE=${TORCHDYNAMO_DISABLE:-1}
    CAP_SCALE=${CAP_SCALE:-4} BUDGET_S=${BUDGET_S:-2400}
    V1="--image-size 16 --batch-size 4 --iters 10 --warmup 2"; V2="--image-size 32 --batch-size 1 --iters 1 --warmup 1"
    PAR="--iters 20 --image-size 16 --batch-size 4"; PROF_IT=1; WORKERS=1
    V2_VARIANTS=${V2_VARIANTS:-official,eager} BLOCKS_VARIANTS=${BLOCKS_VARIANTS:-fp32_blocks}
  else
    V1="--iters 150 --warmup 30"; V2="--iters 12 --warmup 3"; PAR="--iters 2000"; PROF_IT=2; WORKERS=6
  fi
  part() {  # part NAME CAP_S COMMAND...
    local name=$1 cap=$2 left t start rc; shift 2
    case " $PARTS " in *" $name "*) ;; *) return 0 ;; esac
    if [ -n "${DRY_RUN:-}" ]; then echo "$*"; return 0; fi
    cap=$((cap * CAP_SCALE)); left=$((BUDGET_S - SECONDS)); t=$(( cap < left ? cap : left ))
    if [ "$t" -lt 20 ]; then echo "[round2] $name: skipped, ${left} s of BUDGET_S left" | tee -a "$LOG"; return 0; fi
    echo "[round2] $name: cap ${t} s, ${SECONDS} s elapsed: $*" | tee -a "$LOG"
    start=$SECONDS
    timeout -k 10 "$t" "$@" 2>&1 | grep --line-buffered -v -e Warning -e USDT -e 'warnings.warn' >> "$LOG"
    rc=${PIPESTATUS[0]}
    echo "[round2] $name: rc $rc after $((SECONDS - start)) s" | tee -a "$LOG"
  }
  CAP_SCALE=${CAP_SCALE:-1} BUDGET_S=${BUDGET_S:-540}
  V2_VARIANTS=${V2_VARIANTS:-official,eager,bf16_cl_ops} BLOCKS_VARIANTS=${BLOCKS_VARIANTS:-blocks}
  B="$PY -m stargan.cli bench"
  part check 60 "$PY" -m pytest -q -p no:cacheprovider tests/test_v1_graph_step.py
  part v1 200 $B train --model v1 --variants official,eager,fast,graphs,fast_graphs $V1 \
      --out "$OUT/train-v1-round2.json"
  part v2 170 $B train --model v2 --variants $V2_VARIANTS $V2 --profile "$OUT/profile-v2.json" \
      --profile-iters $PROF_IT --out "$OUT/train-v2-round2.json"
  part v1_shards 100 $B train --model v1 --variants eager,graphs,fast_graphs $V1 --shards "$SHARDS" \
      --loader-workers $WORKERS --out "$OUT/train-v1-shards.json"
  part parity 160 $B parity --shards "$SHARDS" $PAR --variants eager,fast_graphs --loader-workers $WORKERS \
      --out "$OUT/parity-v1-celeba.csv"
  part v2_blocks 600 $B train --model v2 --variants $BLOCKS_VARIANTS $V2 --out "$OUT/train-v2-blocks.json"
  [ -n "${DRY_RUN:-}" ] && exit 0
  echo "[round2] done after ${SECONDS} s" | tee -a "$LOG"
  ;;
esac
ls -la "$OUT"
