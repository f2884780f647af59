#!/usr/bin/env bash
# The seeds' translation demo: BLEU of FLAN-T5 on Multi30k test_2016 (English→German) before
# and after a LoRA fine-tune (configs/multi30k-flan-t5.toml). No FLAN-T5 weights ship in the
# package registries this project can reach, so pass a local checkout of a T5 / FLAN-T5 folder
# (config.json, model.safetensors, tokenizer.json), e.g. one saved with transformers'
# `save_pretrained`. Extra arguments go to `lowrank train` (e.g. --set train.epochs=0.2).
#   bash scripts/demo_translation.sh path/to/flan-t5-small
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:?usage: bash scripts/demo_translation.sh path/to/flan-t5-small [lowrank train options]}"
shift
run="${LOWRANK_RUN:-runs/multi30k-flan-t5}"
limit="${LOWRANK_EVAL_LIMIT:-0}"   # 0: all 1,000 test sentences
cargo build --release --quiet -p lowrank-cli
bin=./target/release/lowrank
evaluate() { # $1 output folder, then extra options
  local out="$1"; shift
  "$bin" eval --model "$model" "$@" \
    --data data/multi30k/test_2016_flickr.en.gz --data-target data/multi30k/test_2016_flickr.de.gz \
    --template "translate English to German: {prompt}" --metrics sacrebleu --beam 4 --max-new-tokens 96 \
    --limit "$limit" --output "$out"
}
echo "== BLEU before fine-tuning"
evaluate "$run/eval-base"
echo "== LoRA fine-tune"
"$bin" train --config configs/multi30k-flan-t5.toml --model "$model" --output "$run" "$@"
echo "== BLEU after fine-tuning"
evaluate "$run/eval-tuned" --adapter "$run/adapter"
echo
echo "before: $(cat "$run/eval-base/scores.json" | tr -d '\n' | sed 's/  */ /g')"
echo "after:  $(cat "$run/eval-tuned/scores.json" | tr -d '\n' | sed 's/  */ /g')"
