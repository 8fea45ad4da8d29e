#!/usr/bin/env bash
# GPU throughput, printed as images/s: pretraining on one GPU, the end-to-end neural head on one GPU, and pretraining
# with DDP on every GPU present (torchrun, NCCL; the same global batch). Exits with a message where there is no GPU.
#
#   bench/gpu.sh                       # uses .venv/bin/python if present, else python3
#   PYTHON=/path/python BATCH=512 PX=32 STEPS=30 bench/gpu.sh
#
# Each figure is one line from bench/gpu.py (random images of the model's shape; see its docstring).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
BATCH=${BATCH:-256}
HEAD_BATCH=${HEAD_BATCH:-32}
PX=${PX:-32}
STEPS=${STEPS:-20}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! command -v "$PY" >/dev/null 2>&1; then
  echo "bench/gpu.sh: no python at $PY (set PYTHON=...)"; exit 1
fi
N=$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null || echo 0)
if [ "${N:-0}" -lt 1 ]; then
  echo "bench/gpu.sh: no CUDA GPU visible to torch ($PY); nothing to measure"
  exit 0
fi
"$PY" -c 'import torch; print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s): {torch.cuda.get_device_name(0)}")'

fail=0
run() { echo "+ $*" >&2; "$@" || { echo "bench/gpu.sh: failed: $*"; fail=1; }; }

run "$PY" bench/gpu.py pretrain --batch "$BATCH" --px "$PX" --steps "$STEPS"
run "$PY" bench/gpu.py pretrain --batch "$BATCH" --px "$PX" --steps "$STEPS" --amp
run "$PY" bench/gpu.py head --batch "$HEAD_BATCH" --px "$PX" --steps "$STEPS"
run "$PY" bench/gpu.py head --batch "$HEAD_BATCH" --px "$PX" --steps "$STEPS" --amp
# DDP on all GPUs (also with one: the cost of the process group, SyncBatchNorm and the gather)
if [ $((BATCH % N)) -ne 0 ]; then
  echo "bench/gpu.sh: BATCH=$BATCH is not divisible by the $N GPUs; skipping DDP"; fail=1
else
  run "$PY" -m torch.distributed.run --standalone --nproc_per_node "$N" bench/gpu.py pretrain \
    --batch "$BATCH" --px "$PX" --steps "$STEPS"
fi
exit $fail
