#!/usr/bin/env bash
# Issue 18's GPU run as ONE command (<= 10 minutes on one H200), writing JSON into the folder it is given:
#   (a) the device-fixture tests on CUDA (`pytest -m device`: neutral gate = no gate, batch = one by one,
#       cached = uncached, layer 0 = peft PromptTuning, generation with cache = without, fp32 master copies)
#   (b) one paper-size paired cell: SmolLM2 (the real weights, joined from .gpu/parts), Dolly, baseline vs
#       MoPs, 2,000 steps at batch 8, seeds $CELL_SEEDS (default 0,1,2), bf16
#   (c) the throughput table (benchmarks/train_step.py), bf16, SmolLM2's shapes with random weights (from
#       .gpu/smollm2-config: no weights needed): every row eager at batch 1/8/32/128, then the rows the
#       targets name (MoPs cached, its baseline, prompts@0) compiled at batch 32 and 128
# Budget (600 s per call): tests 90 s, cell 250 s, eager table 120 s, compiled rows what is left; each table
# file is rewritten after every batch size, so a limit keeps what was measured.
#
#   bash benchmarks/gpu_prepare.sh            # here, once: wheels, tokenizer/config, the GGUF in parts
#   bash benchmarks/gpu_run.sh --stash        # on the GPU machine, once per part but the last (carry one part)
#   bash benchmarks/gpu_run.sh "$OUT"         # the run (carry .gpu/wheels, .gpu/smollm2-config, the last part)
#   bash benchmarks/gpu_run.sh OUT --dry-run  # here, on the CPU at tiny size (tests/test_benchmark.py)
#
# Every step runs under benchmarks/gpu_env.py, which refuses the packages the GPU image lacks, so the dry run
# fails where the GPU run would. Each step has its own time limit; OUT/run.json records each one's exit
# status and seconds, whatever happens to the others.
set -uo pipefail
STASH=/tmp/mops-gpu
if [ "${1:-}" = "--stash" ]; then
  mkdir -p "$STASH" && cp .gpu/parts/* "$STASH"/ && ls -l "$STASH"
  exit $?
fi
OUT=${1:?usage: gpu_run.sh OUT [--dry-run] | --stash}
DRY=0
[ "${2:-}" = "--dry-run" ] && DRY=1
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export MOPS_HOME=${MOPS_HOME:-/tmp/mops-home}
if [ -d .gpu/wheels ] && [ "$DRY" = 0 ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/mops-site .gpu/wheels/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/mops-site"
fi
RUN="$PY benchmarks/gpu_env.py"
STEPS=()
step() {  # step NAME LIMIT_S COMMAND...: run, record rc and seconds
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "== $name (limit ${limit}s): $*"
  timeout "$limit" "$@"
  local rc=$?
  STEPS+=("{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - t0))}")
}

if [ "$DRY" = 1 ]; then
  TINY=/tmp/mops-dry-tiny
  $PY -c "from tests.conftest import make_tiny_tokenizer, save_tiny_model; import shutil; shutil.rmtree('$TINY', True); save_tiny_model(__import__('pathlib').Path('$TINY'), make_tiny_tokenizer())"
  step device_tests 300 $RUN -m pytest -q -p no:cacheprovider -m device -k "trainable_parts" \
    --junitxml="$OUT/device_tests.xml" tests/test_mop_model.py tests/test_prefix_cache.py
  step cell 300 $RUN -m mops.cli.app train --model "$TINY" --data dolly --total 70 --max-length 48 --steps 2 -b 2 \
    --recovery-steps 1 --gate-pretrain-steps 2 --gate-pretrain-examples 14 --injection-layer 2 --seeds 0,1 \
    --method baseline,mops --checkpoint-every 0 -o /tmp/mops-dry-cell --overwrite
  step throughput 600 $RUN benchmarks/train_step.py --model "$TINY" --batch-sizes 2 --steps 2 --warmup 1 \
    --max-length 64 --modes eager,compiled --compile-backend eager --output "$OUT/throughput.json"
  CELL=/tmp/mops-dry-cell
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" 2>&1
  step device_tests 90 $RUN -m pytest -q -p no:cacheprovider -m device --junitxml="$OUT/device_tests.xml" \
    tests/test_mop_model.py tests/test_prefix_cache.py
  mkdir -p "$STASH"
  if [ -f .gpu/SHA256 ] && cp .gpu/parts/* "$STASH"/ 2>/dev/null; then
    (cd "$STASH" && cat $(awk '{print $2}' "$OLDPWD/.gpu/PARTS") > smollm2.gguf && sha256sum -c "$OLDPWD/.gpu/SHA256") \
      > "$OUT/weights.txt" 2>&1
  fi
  if grep -q ": OK" "$OUT/weights.txt" 2>/dev/null; then
    step cell 250 $RUN -m mops.cli.app train --model "$STASH/smollm2.gguf" --data dolly --steps 2000 -b 8 \
      --dtype bfloat16 --method baseline,mops --seeds "${CELL_SEEDS:-0,1,2}" --checkpoint-every 0 \
      -o /tmp/mops-cell --overwrite --note "issue 18: paper-size paired cell on a GPU"
  else
    STEPS+=("{\"step\": \"cell\", \"rc\": null, \"skipped\": \"the SmolLM2 weights did not arrive whole (weights.txt)\"}")
  fi
  BENCH="$RUN benchmarks/train_step.py --model .gpu/smollm2-config --random-init --dtype bfloat16"
  step throughput_eager 120 $BENCH --modes eager --output "$OUT/throughput_eager.json"
  step throughput_compiled $(( SECONDS < 500 ? 560 - SECONDS : 60 )) $BENCH --modes compiled --batch-sizes 32,128 \
    --configs cached,grouped,baseline_cached,prompts0 --output "$OUT/throughput_compiled.json"
  CELL=/tmp/mops-cell
fi
[ -d "$CELL" ] && tar czf "$OUT/cell.tgz" -C "$CELL" --exclude=stages --exclude=checkpoints --exclude=tensorboard \
  --exclude=adapter --exclude='*.safetensors' .
(IFS=,; echo "{\"dry_run\": $([ $DRY = 1 ] && echo true || echo false), \"steps\": [${STEPS[*]}]}") > "$OUT/run.json"
cat "$OUT/run.json"
