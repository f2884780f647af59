#!/usr/bin/env bash
# Runs `lowrank bench train` (f32, f32 with activation checkpointing, bf16 products) and the PyTorch + PEFT baseline
# (scripts/bench_pytorch.py; f32, and the whole base model in bf16) on the
# same model and shape, alternating, REPEAT times each, and prints their JSON lines. Wait for an
# idle machine first: another busy process makes both numbers meaningless.
#   bash scripts/bench_compare.sh [TARGETS] [REPEAT]     e.g. q_proj,v_proj 3   or   all-linear 3
set -euo pipefail
cd "$(dirname "$0")/.."
TARGETS="${1:-q_proj,v_proj}"
REPEAT="${2:-3}"
MODEL="$(bash scripts/fetch_model.sh)"
cargo build --release --quiet -p lowrank-cli
for i in $(seq "$REPEAT"); do
  RAYON_NUM_THREADS=2 ./target/release/lowrank bench train --model "$MODEL" --batch 8 --seq 128 --rank 8 --targets "$TARGETS" --steps 5
  RAYON_NUM_THREADS=2 ./target/release/lowrank bench train --model "$MODEL" --batch 8 --seq 128 --rank 8 --targets "$TARGETS" --steps 5 --checkpoint
  RAYON_NUM_THREADS=2 ./target/release/lowrank bench train --model "$MODEL" --batch 8 --seq 128 --rank 8 --targets "$TARGETS" --steps 5 --dtype bf16
  python3 scripts/bench_pytorch.py --model "$MODEL" --batch 8 --seq 128 --rank 8 --targets "$TARGETS" --steps 5 --threads 2 2>/dev/null
  python3 scripts/bench_pytorch.py --model "$MODEL" --batch 8 --seq 128 --rank 8 --targets "$TARGETS" --steps 5 --threads 2 --dtype bf16 2>/dev/null
done
