#!/usr/bin/env bash
# The one script to run when a GPU (or a Mac) is at hand (issue #19): setup, the device self-test, `timnet
# devices` for the EMO-DB and IEMOCAP shapes, and benchmarks/bench_gpu.py; everything it prints goes to
# ${OUT:-device_check}/ as well. Usage: tools/device_check.sh [cuda|cuda:1|mps]   (about 8-10 minutes)
set -uo pipefail
DEVICE=${1:-cuda}
OUT=${OUT:-device_check}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
if ! python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() or torch.backends.mps.is_available() else 1)" 2>/dev/null; then
  echo "no accelerator torch yet: installing the requirements (PyPI's Linux torch wheel is the CUDA build)"
fi
python3 -m pip install -q -r requirements.txt 2>&1 | tail -3
python3 -m pip install -q --no-deps -e . 2>&1 | tail -1
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.device_count(), 'mps', torch.backends.mps.is_available())" | tee "$OUT/torch.txt"
nvidia-smi 2>/dev/null | head -15 | tee "$OUT/nvidia-smi.txt"
timeout 300 python3 -m pytest -q -m device --device "$DEVICE" -p no:cacheprovider 2>&1 | tail -40 | tee "$OUT/selftest.txt"
# every fast path against the reference model, the packed and captured checks on this device included
timeout 300 python3 -m pytest -q -n 0 -p no:cacheprovider tests/test_model_variants.py 2>&1 | tail -20 | tee "$OUT/variants.txt"
for dataset in EMODB IEMOCAP; do
  timeout 120 timnet devices --dataset "$dataset" --seconds 3 2>&1 | tee "$OUT/devices_$dataset.txt"
done
timeout 420 python3 benchmarks/bench_gpu.py --device "$DEVICE" --seconds 10 2>&1 | tee "$OUT/bench_gpu.txt"
cp benchmarks/results/bench_gpu.csv "$OUT/" 2>/dev/null
