#!/usr/bin/env bash
# Build here (no GPU needed) everything `bash benchmarks/device_run.sh round2` needs on the GPU machine,
# which has no internet (see benchmarks/README.md, "Round two"):
#   1. benchmarks/official/src          the official StarGAN / StarGAN v2 files (benchmarks/official/fetch.sh)
#   2. benchmarks/round2/shards/celeba  JPEG shards of ../shared/data/celeba-sample at 128 px, built by the
#                                       project's own download -> align -> shard stages
#   3. benchmarks/round2/wheels         albumentations and the packages it needs that the GPU image lacks
#                                       (python 3.12 manylinux wheels; the image has torch, numpy, opencv,
#                                       pyarrow, pyyaml, scipy; typing_extensions is carried at the
#                                       version pydantic needs)
# All three are git-ignored. Carry: ["benchmarks/official/src", "benchmarks/round2"]; with the tracked
# tree (~5 MiB) the whole transfer must stay under 64 MiB (checked at the end).
#   CELEBA=../shared/data/celeba-sample QUALITY=90 bash benchmarks/round2_prepare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python3}
CELEBA=$(cd "${CELEBA:-../shared/data/celeba-sample}" && pwd)
QUALITY=${QUALITY:-90}
R2=$REPO/benchmarks/round2

echo "== 1. official code"
bash benchmarks/official/fetch.sh

echo "== 2. CelebA-sample shards (128 px, JPEG quality $QUALITY)"
if [ -f "$R2/shards/celeba/manifest.json" ] && [ -z "${REBUILD:-}" ]; then
  echo "kept $R2/shards/celeba (REBUILD=1 rebuilds it)"
else
  WORK=$(mktemp -d /tmp/round2_celeba.XXXXXX)      # a throw-away project: params.yaml + data/
  "$PY" - "$REPO/params.yaml" "$WORK/params.yaml" "$CELEBA" "$QUALITY" <<'PYEOF'
import sys, yaml
src, dst, celeba, quality = sys.argv[1:]
p = yaml.safe_load(open(src))
p["data"]["datasets"] = {"celeba": {"source": "local", "path": celeba, "layout": "celeba", "aligned": True,
                                    "attributes": ["Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young"]}}
p["align"]["image_size"] = 128
p["shard"].update({"image_format": "jpeg", "jpeg_quality": int(quality)})
p["train"].update({"datasets": ["celeba"], "image_size": 128})
yaml.safe_dump(p, open(dst, "w"), sort_keys=False)
PYEOF
  for stage in download align shard; do
    (cd "$WORK" && "$PY" "$REPO/pipelines/$stage.py" --params params.yaml) | tail -n 3
  done
  rm -rf "$R2/shards/celeba" && mkdir -p "$R2/shards"
  cp -r "$WORK/data/shards/celeba" "$R2/shards/celeba"
  rm -rf "$WORK"
fi

echo "== 3. wheels for the GPU image (python 3.12)"
mkdir -p "$R2/wheels"
# albumentations 2.0.8's own needs that the GPU image does not hold; versions = this project's pins
WHEELS="albumentations==2.0.8 albucore==0.0.24 pydantic==2.14.3 pydantic_core==2.50.4 annotated-types==0.8.0 \
typing-inspection==0.4.5 typing_extensions==4.16.0 stringzilla==5.3.2 simsimd==6.5.16"
for w in $WHEELS; do
  ls "$R2/wheels/$(echo "${w%%==*}" | tr - _)"-* >/dev/null 2>&1 && continue
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d "$R2/wheels" "$w"
done

echo "== sizes"
du -sh benchmarks/official/src "$R2/shards" "$R2/wheels"
tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
untracked=$(git ls-files -z --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
carried=$(du -sb benchmarks/official/src "$R2" | awk '{s+=$1} END {print s}')
total=$(( tracked + ${untracked:-0} + carried ))
echo "transfer: tracked $((tracked / 1048576)) MiB + untracked $((${untracked:-0} / 1048576)) MiB + carried $((carried / 1048576)) MiB = $((total / 1048576)) MiB (limit 64)"
[ "$total" -lt $((64 * 1048576)) ] || { echo "over the 64 MiB transfer limit: lower QUALITY or drop files" >&2; exit 1; }
