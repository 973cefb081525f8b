#!/usr/bin/env bash
# What the GPU machine's image lacks, as wheels for its Python 3.12 (see /work/.library/device/README.md), into
# .whl/ (git-ignored through .git/info/exclude). Run here, where the package registry is reachable; then, on the
# device machine (carry: [".whl"]):
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
#     && PYTHONPATH=/tmp/site:$PWD DS_ACCELERATOR=cuda python3 bench/gpu.py --json $OUT/gpu.json
# The image has torch, accelerate, safetensors, tokenizers, pillow, numpy, pyarrow, msgpack, py-cpuinfo, psutil
# and ninja; transformers and peft are carried at the versions this project pins (requirements/constraints.txt).
# About 62 MB, under the 64 MiB a call may carry with the working tree; flash-attn has no wheel (its case is skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl
pin() { grep -i "^$1==" requirements/constraints.txt | head -1; }
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  "$(pin bitsandbytes)" "$(pin transformers)" "$(pin peft)" "$(pin webdataset)" braceexpand hjson \
  pydantic pydantic-core annotated-types typing-inspection
.venv/bin/pip wheel -q --no-deps --no-build-isolation -w .whl "$(pin deepspeed)"
du -sh .whl
