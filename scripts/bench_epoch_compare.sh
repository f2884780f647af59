#!/usr/bin/env bash
# Real work: LoRA fine-tuning of SmolLM2-135M on the first N examples of the E2E dev set (one epoch
# over them; N = 0: all 4,672), lowrank with its default batching (length-bucketed) against a plain
# PyTorch + PEFT loop that pads each batch to its longest member (scripts/bench_epoch_pytorch.py).
# Same template, masking, LoRA settings, batch 8, 2 threads. Wait for an idle machine first.
#   bash scripts/bench_epoch_compare.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-800}"
export LOWRANK_CACHE="${LOWRANK_CACHE:-$HOME/.cache/lowrank}"
MODEL="$(bash scripts/fetch_model.sh)"
cargo build --release --quiet -p lowrank-cli
out="$(mktemp -d)"
# lowrank in f32, then with bf16 products (f32 with a warning on a CPU without AVX512-BF16).
for DTYPE in f32 bf16; do
  RAYON_NUM_THREADS=2 ./target/release/lowrank train --config configs/e2e-smollm2.toml --output "$out/run-$DTYPE" \
    --set train.steps=0 --set train.epochs=1 --set data.train_limit="$N" --set train.eval_every=0 \
    --set train.save_every=0 --set report.samples=0 --set data.valid_limit=1 --set "model.dtype=\"$DTYPE\"" 2>"$out/err" >/dev/null \
    || { tail -1 "$out/err" >&2; exit 1; }
  python3 - "$out/run-$DTYPE" "$DTYPE" <<'PY'
import json, sys
s = json.load(open(sys.argv[1] + "/summary.json"))
tokens = sum(json.loads(l)["tokens"] for l in open(sys.argv[1] + "/metrics.jsonl"))
print(json.dumps({"bench": "epoch", "impl": "lowrank", "dtype": sys.argv[2], "steps": s["steps"], "tokens": tokens, "seconds": s["seconds"],
                  "tokens_per_s": tokens / s["seconds"], "last_loss": s["final_loss"]}))
PY
  grep -E "peak|done" "$out/err" | tail -1 >&2 || true
done
python3 scripts/bench_epoch_pytorch.py --model "$MODEL" --limit "$N" --threads 2 2>/dev/null
rm -rf "$out"
