#!/usr/bin/env bash
# bench/gpu.py on a GPU machine without the Hub and without bitsandbytes, trl or datasets: install the wheels that
# `make gpu-wheels` put in .whl/ (carried with the working tree), run section 6, and write RESULTS.md into $OUT
# (or bench/ when OUT is unset). Ends within 8 minutes: the run starts no recipe after 7, and timeout stops it at 7.5.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
out="${OUT:-bench}"
cp bench/RESULTS.md "$out/RESULTS.md" 2>/dev/null || true
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
timeout 450 python3 -m bench.gpu --out "$out/RESULTS.md" --deadline 300
