#!/usr/bin/env bash
# Here (CPU, with the venv): what benchmarks/gpu_run.sh needs on the GPU machine, under .gpu/ (git-ignored):
#   .gpu/wheels/            gguf for Python 3.12 (the GPU image lacks it; the other imports are there)
#   .gpu/smollm2-config/    SmolLM2's config and tokenizer (the throughput rows draw random weights)
#   .gpu/parts/NN + PARTS + SHA256   the SmolLM2 GGUF in parts that fit beside the working tree in one call
# and prints the device calls to make, in order. Each call carries at most 64 MiB with the tracked tree.
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
rm -rf .gpu && mkdir -p .gpu/wheels .gpu/parts
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform any -d .gpu/wheels "gguf==$($PY -c 'from importlib.metadata import version; print(version("gguf"))')"
MODEL=$($PY -c "from mops.models.loading import resolve_model_path; print(resolve_model_path('smollm2-135m'))")
mkdir -p .gpu/smollm2-config && cp "$MODEL"/{config.json,tokenizer.json,tokenizer_config.json,chat_template.jinja} .gpu/smollm2-config/
GGUF=$($PY -c "import pathlib, tempfile; from mops.models.registry import PACKAGED_MODELS; print(PACKAGED_MODELS['smollm2-135m'].locate_gguf(pathlib.Path(tempfile.mkdtemp())))")
TREE=$(git ls-files -z | xargs -0 stat -c %s | awk '{s += $1} END {print s}')  # xargs may split: sum every file
EXTRA=$(du -cb .gpu/wheels .gpu/smollm2-config | tail -1 | cut -f1)
PART=$(( 64 * 1048576 - TREE - 2 * 1048576 ))  # 2 MiB spare for files written before the run
[ "$PART" -gt 1048576 ] || { echo "error: the tracked tree ($TREE bytes) leaves no room for a part" >&2; exit 2; }
split -b "$PART" -d -a 2 "$GGUF" .gpu/parts/part-
LAST_SIZE=$(stat -c %s "$(ls .gpu/parts/part-* | tail -1)")
if [ $(( LAST_SIZE + EXTRA )) -gt "$PART" ]; then  # the last call also carries the wheels and the tokenizer
  rm -rf .gpu/parts && mkdir .gpu/parts
  PART=$(( PART - EXTRA ))
  split -b "$PART" -d -a 2 "$GGUF" .gpu/parts/part-
fi
(cd .gpu/parts && ls part-* | awk '{print NR, $1}') > .gpu/PARTS
(cd "$(dirname "$GGUF")" && sha256sum "$(basename "$GGUF")" | awk '{print $1 "  smollm2.gguf"}') > .gpu/SHA256
N=$(wc -l < .gpu/PARTS)
echo "tree $TREE bytes; $N parts of <= $PART bytes. Device calls, within the machine's 30 s warm window:"
for p in $(awk '{print $2}' .gpu/PARTS | head -n $((N - 1))); do
  echo "  run(carry=[\".gpu/parts/$p\"], command=\"bash benchmarks/gpu_run.sh --stash\")"
done
LAST=$(awk '{print $2}' .gpu/PARTS | tail -1)
echo "  run(carry=[\".gpu/wheels\", \".gpu/smollm2-config\", \".gpu/parts/$LAST\", \".gpu/PARTS\", \".gpu/SHA256\"], timeout_s=600,"
echo "      command=\"bash benchmarks/gpu_run.sh \$OUT\")"
