#!/usr/bin/env bash
# The suite's GPU checks and benchmark in one run on a bare CUDA machine that has torch and lightning:
#   OUT=results bash scripts/gpu_check.sh
# Wheels of what such a machine lacks (hydra-core, omegaconf, antlr4-python3-runtime, nibabel, monai,
# monai-generative, flow-matching) are installed from .whl/ when that folder exists (docs/performance.md, "On a GPU").
# Each stage has its own time limit; results go to $OUT: gpu_check.json/.log (scripts/gpu_check.py) and the
# benchmark's <date>-cuda*.json/.md (python -m motfm.bench bench=gpu reference=true).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
export WANDB_MODE=offline HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
CHECK_S=${CHECK_S:-330}
BENCH_S=${BENCH_S:-200}
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python3 -c "import torch; print(torch.__version__)"; } \
  > "$OUT/gpu_check.log" 2>&1
timeout "$CHECK_S" python3 scripts/gpu_check.py --out "$OUT" >> "$OUT/gpu_check.log" 2>&1
echo "gpu_check exit $?" >> "$OUT/gpu_check.log"
timeout "$BENCH_S" python3 -m motfm.bench bench=gpu device=cuda reference=true 'nfe=[1,10]' sample_repeats=2 \
  peak_matmul_size=8192 "out_dir=$PWD/$OUT" hydra.run.dir=/tmp/motfm_bench > /tmp/bench.log 2>&1
echo "bench exit $?" >> "$OUT/gpu_check.log"
tail -80 /tmp/bench.log >> "$OUT/gpu_check.log"
grep -E "^==|^--|exit" "$OUT/gpu_check.log" | cut -c1-300
