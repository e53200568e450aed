#!/usr/bin/env bash
# The GPU check of the group fits, as one device call (about 5 minutes on an H200 machine).
#
# The device machine has torch with CUDA, numpy, scipy, typer, rich, matplotlib and pytest, but not
# polars. Before the call, in the repository root of the development machine:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl polars==2.1.0 polars-runtime-32==2.1.0
#
# then run `bash benchmarks/gpu_check.sh` there with `.whl` carried and a limit of about 540 s.
# It runs the tests marked gpu (CUDA results equal CPU results: single fits, every group-fit path), then
# benchmarks/batched.py on CUDA (float64 at K = 100,000 and 1,000,000; float32 at 1,000,000), and
# leaves the logs and the JSON tables in $OUT (or /tmp/gpu-check).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda available:', torch.cuda.is_available())"; } | tee "$out/device.txt"
timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$out/tests.log"
timeout 240 python3 benchmarks/batched.py --device cuda --scipy 0 --sizes 100000,1000000 \
    --json "$out/batched-cuda-float64.json" 2>&1 | tee "$out/batched-cuda-float64.txt"
timeout 90 python3 benchmarks/batched.py --device cuda --scipy 0 --sizes 1000000 --dtype float32 \
    --json "$out/batched-cuda-float32.json" 2>&1 | tee "$out/batched-cuda-float32.txt"
