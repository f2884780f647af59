#!/usr/bin/env bash
# Greedy generation (batch 1, 32-token prompt, 64 new tokens, 2 threads) of SmolLM2-135M with a
# LoRA adapter: lowrank in f32 and with quantized frozen weights, merged and unmerged, and the
# PyTorch + PEFT baseline, alternating REPEAT times; one JSON line each. Wait for an idle machine.
#   bash scripts/bench_generate_compare.sh [REPEAT]
set -euo pipefail
cd "$(dirname "$0")/.."
REPEAT="${1:-2}"
MODEL="$(bash scripts/fetch_model.sh)"
cargo build --release --quiet -p lowrank-cli
export RAYON_NUM_THREADS=2
for i in $(seq "$REPEAT"); do
  for q in none q8_0 q4_0; do
    ./target/release/lowrank bench generate --model "$MODEL" --quantize "$q" --repeats 3
    ./target/release/lowrank bench generate --model "$MODEL" --quantize "$q" --repeats 3 --unmerged
  done
  python3 scripts/bench_pytorch.py --model "$MODEL" --generate --steps 3 --threads 2 2>/dev/null
  python3 scripts/bench_pytorch.py --model "$MODEL" --generate --merged --steps 3 --threads 2 2>/dev/null
done
