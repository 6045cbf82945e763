#!/bin/bash
# One lent-GPU session in one call: the GPU checks, then the semantic benchmark's fast setting on the cached
# msrs/train and msrs/val, every step cut to the time left, everything packed into $OUT/res.tgz.
#
#   Here, once:  python benchmarks/device/make_cache.py            # .gpu/msrs240.npz (never committed)
#                wheels the device lacks in .whl/ (pytorch_wavelets, PyWavelets, setuptools<81; see
#                the device README)
#   Device call: LIMIT=540 bash benchmarks/device/session.sh       # carry: .gpu .whl
#
# Environment: LIMIT (seconds for the whole script, default 540), DEV (cuda), STEPS (900), SEEDS (5),
# KINDS ("ir vis max semantic-teacher semantic-student"), CHECKS (gpu_check steps, default
# "segmenter distill_repeat": the two that say whether a seed repeats a run on CUDA), NOWHL=1 to skip
# the wheels (e.g. trying the script on a CPU).
LIMIT=${LIMIT:-540}; DEV=${DEV:-cuda}; STEPS=${STEPS:-900}; SEEDS=${SEEDS:-5}
KINDS=${KINDS:-"ir vis max semantic-teacher semantic-student"}
CHECKS=${CHECKS:-"segmenter distill_repeat"}
OUT=${OUT:?set OUT to the folder whose files come back}
R=/tmp/res; rm -rf $R; mkdir -p $R

left() { echo $((LIMIT - SECONDS)); }
step() {  # step NAME MAX_SECONDS CMD...: run with min(MAX, time left - 20 s); log in $R/NAME.log
  local name=$1 max=$2; shift 2; local t=$(( $(left) - 20 )); (( t > max )) && t=$max
  if (( t < 20 )); then echo "SKIP $name: no time left" | tee -a $R/steps.txt; return; fi
  local t0=$SECONDS; timeout -s INT $t "$@" > $R/$name.log 2>&1; local rc=$?
  echo "$name rc=$rc ${t}s-limit took $((SECONDS - t0))s" | tee -a $R/steps.txt
}

if [ -z "$NOWHL" ] && ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2> /dev/null; nproc
  python3 -c "import sys, torch, timm, numpy; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__, 'numpy', numpy.__version__)"
} > $R/env.txt 2>&1
cat $R/env.txt

if [ -n "$CHECKS" ]; then
  step gpu_check 240 python3 benchmarks/gpu_check.py --steps $CHECKS --out $R/gpu_check --timeout 200
  tail -n 4 $R/gpu_check.log
  rm -rf $R/gpu_check/run_* 2> /dev/null  # the runs' exports: large, and the JSON holds the verdicts
fi
if [ -n "$KINDS" ]; then
  step segbench 600 python3 benchmarks/device/segbench_cached.py --device $DEV --steps $STEPS --kinds $KINDS \
    --seeds $SEEDS --json $R/segbench.json
  grep -h "seed [0-9]*: mIoU" $R/segbench.log | tail -n 30
fi
tar czf $OUT/res.tgz -C /tmp res
cat $R/steps.txt
