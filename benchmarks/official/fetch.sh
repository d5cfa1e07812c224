#!/usr/bin/env bash
# Write the official StarGAN (v1) and StarGAN v2 model/solver files into benchmarks/official/src/
# (git-ignored: NEVER commit them, and never copy them into the stargan package: v2 is CC BY-NC 4.0),
# for stargan/bench/official.py, which times their training iteration beside ours.
#
# Run it on a machine with the git mirrors (the GPU machine has no internet), then carry the folder:
#   bash benchmarks/official/fetch.sh
# Mirrors (bare git dirs): $V1_GIT (default /work/.mirror/yunjey+stargan/repo) and $V2_GIT (default
# /work/.mirror/clovaai+stargan-v2/repo); where one is missing, it is cloned bare from GitHub
# (needs internet). Pinned commits: yunjey/stargan 94dd002, clovaai/stargan-v2 875b70a.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT_DIR:-$HERE/src}
V1_GIT=${V1_GIT:-/work/.mirror/yunjey+stargan/repo}
V2_GIT=${V2_GIT:-/work/.mirror/clovaai+stargan-v2/repo}
V1_REV=${V1_REV:-94dd002}
V2_REV=${V2_REV:-875b70a}

mirror() {  # mirror GIT_DIR URL: the bare repository, cloned when absent
  if [ ! -d "$1" ]; then
    echo "fetch.sh: no mirror at $1; cloning $2" >&2
    git clone -q --bare "$2" "$1"
  fi
}
mirror "$V1_GIT" https://github.com/yunjey/stargan.git
mirror "$V2_GIT" https://github.com/clovaai/stargan-v2.git

put() {  # put GIT_DIR REV PATH DEST
  mkdir -p "$(dirname "$4")"
  git --git-dir="$1" show "$2:$3" > "$4.tmp"
  mv "$4.tmp" "$4"
}
rm -rf "$OUT.tmp" && mkdir -p "$OUT.tmp"
for f in model.py solver.py LICENSE; do put "$V1_GIT" "$V1_REV" "$f" "$OUT.tmp/stargan_v1/$f"; done
for f in core/__init__.py core/model.py core/solver.py core/wing.py LICENSE NOTICE; do
  put "$V2_GIT" "$V2_REV" "$f" "$OUT.tmp/stargan_v2/$f"
done
cat > "$OUT.tmp/SOURCE.txt" <<TXT
Official code, written by benchmarks/official/fetch.sh; not part of this project. Do not commit.
stargan_v1: https://github.com/yunjey/stargan at $(git --git-dir="$V1_GIT" rev-parse "$V1_REV") (MIT, see stargan_v1/LICENSE)
stargan_v2: https://github.com/clovaai/stargan-v2 at $(git --git-dir="$V2_GIT" rev-parse "$V2_REV") (CC BY-NC 4.0, see stargan_v2/LICENSE)
TXT
rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
echo "fetch.sh: wrote $(find "$OUT" -type f | wc -l) files to $OUT ($(du -sh "$OUT" | cut -f1))"
