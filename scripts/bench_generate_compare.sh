#!/usr/bin/env bash
# Greedy generation (batch 1, 32-token prompt, 64 new tokens, 2 threads) of SmolLM2-135M with a
# LoRA adapter, merged and unmerged: lowrank's CPU decoder with the weights as loaded (the GGUF's
# Q4_1 blocks, f32 activations: exact) and with 8-bit activations (`--quantize q4_1`: the Q4_1
# blocks as stored; the merged q, v rounded to Q4_1), the candle path it replaced (`--engine
# candle`), and the PyTorch + PEFT baseline (f32), alternating REPEAT times; one JSON line each.
# Wait for an idle machine.
#   bash scripts/bench_generate_compare.sh [REPEAT]
set -euo pipefail
cd "$(dirname "$0")/.."
REPEAT="${1:-2}"
MODEL="$(bash scripts/fetch_model.sh)"
cargo build --release --quiet -p lowrank-cli
export RAYON_NUM_THREADS=2
for i in $(seq "$REPEAT"); do
  for q in none q4_1; do
    ./target/release/lowrank bench generate --model "$MODEL" --quantize "$q" --repeats 5
    ./target/release/lowrank bench generate --model "$MODEL" --quantize "$q" --repeats 5 --unmerged
  done
  ./target/release/lowrank bench generate --model "$MODEL" --quantize none --repeats 3 --engine candle
  ./target/release/lowrank bench generate --model "$MODEL" --quantize q4_0 --repeats 3 --unmerged --engine candle
  python3 scripts/bench_pytorch.py --model "$MODEL" --generate --steps 3 --threads 2 2>/dev/null
  python3 scripts/bench_pytorch.py --model "$MODEL" --generate --merged --steps 3 --threads 2 2>/dev/null
done
