#!/usr/bin/env bash
# The learning engine's CUDA checks, prepared as one run for a session that is lent a GPU machine (issue 3):
# the CUDA tests of tests/test_learning.py and benchmarks/bench_learning.py --device cuda, everything written to
# $OUT. That machine has python3 with torch, numpy and scikit-learn but no internet and no Fashion-MNIST, so the
# four IDX files travel in .devdata/ (ignored by git). Here, once:
#   mkdir -p .devdata && cp /usr/share/datasets/fashion-mnist/*.gz .devdata/ && echo /.devdata/ >> .git/info/exclude
# then call the device tool's run with carry [".devdata"] and the command `bash benchmarks/device_check.sh`
# (timeout_s 540: the tests take ~1-2 min there, the benchmark ~2-4 min).
set -uo pipefail
OUT=${OUT:-/tmp/simfl-device}
mkdir -p "$OUT"
export SIMFL_DATA="$PWD/.devdata" PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
  nproc
} 2>&1 | tee "$OUT/machine.txt"
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_learning.py 2>&1 | tee "$OUT/pytest_learning.txt"
timeout 300 python3 benchmarks/bench_learning.py --device cuda 2>&1 | tee "$OUT/bench_cuda.txt"
echo "done: $(ls "$OUT")"
