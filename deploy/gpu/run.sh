#!/usr/bin/env bash
# One GPU session in one call (the device tool: 64 MiB carried, no network, ~10 min a call): install the carried
# wheels (make gpu-wheels), write a ~1B random checkpoint and the embedding model's, probe the ~1B and ~8B shapes'
# decode (perfkit gpu-probe), then every stage's smoke path (perfkit gpu-check) in the time left.
# Needs .whl/ (make gpu-wheels), .gpu/tokenizer and .gpu/embedding-tokenizer (the two models' tokenizer files).
#   deploy/gpu/run.sh [SECONDS]   # the whole call's budget, default 570; results go to $OUT (default /tmp/perfkit-gpu)
set -uo pipefail
budget=${1:-570}
start=$(date +%s)
out=${OUT:-/tmp/perfkit-gpu}
mkdir -p "$out"
left() { echo $(( budget - ($(date +%s) - start) )); }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$out/nvidia-smi.csv"
models=/tmp/perfkit-models
python3 -m perfkit model random --config llama-1b --out $models/llama-1b --tokenizer .gpu/tokenizer --device cuda
python3 -m perfkit model random --config minilm-l6 --out $models/minilm-l6 --tokenizer .gpu/embedding-tokenizer --device cuda
echo "models written at $(( $(date +%s) - start )) s"
timeout 85 python3 -m perfkit gpu-probe --model $models/llama-1b --out "$out/probe-llama-1b.json"
timeout 100 python3 -m perfkit gpu-probe --shape llama-8b --tokenizer .gpu/tokenizer --out "$out/probe-llama-8b.json"
echo "probes done at $(( $(date +%s) - start )) s; gpu-check gets $(( $(left) - 15 )) s"
python3 -m perfkit gpu-check --model $models/llama-1b --embedding $models/minilm-l6 --budget-s $(( $(left) - 15 )) \
  --cap-s 80 --out "$out/gpu-check.json"
tar -czf "$out/logs.tgz" -C /tmp/perfkit-gpu-check logs
echo "done at $(( $(date +%s) - start )) s"
