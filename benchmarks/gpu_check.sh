#!/usr/bin/env bash
# One prepared run for a GPU machine (no network): the gpu-marked tests and the GPU overhead
# benchmark. Usage: OUT=results_dir bash benchmarks/gpu_check.sh   (run from the repository root)
set -uo pipefail
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
OUT="${OUT:-gpu-check}"
mkdir -p "$OUT"
nvidia-smi -L | tee "$OUT/device.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/device.txt"
python3 -m pytest -p no:cacheprovider -m gpu tests/test_gpu.py tests/test_checkpoints.py 2>&1 | tee "$OUT/gpu_tests.log"
python3 benchmarks/pipeline.py --device cuda --skip-mlp --skip-memory --layers none --bounds none --json "$OUT/bench_penultimate.json" 2>&1 | tee "$OUT/bench.log"
python3 benchmarks/pipeline.py --device cuda --skip-mlp --skip-memory --json "$OUT/bench_all.json" 2>&1 | tee -a "$OUT/bench.log"
