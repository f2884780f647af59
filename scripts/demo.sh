#!/usr/bin/env bash
# The main job: fetch SmolLM2-135M-Instruct if absent, build lowrank, LoRA-fine-tune it on E2E,
# and print base and tuned outputs side by side. Extra arguments go to `lowrank train`
# (e.g. --set train.steps=40).
set -euo pipefail
cd "$(dirname "$0")/.."
export LOWRANK_CACHE="${LOWRANK_CACHE:-$HOME/.cache/lowrank}"
bash scripts/fetch_model.sh >/dev/null
cargo build --release --quiet -p lowrank-cli
exec ./target/release/lowrank train --config configs/e2e-smollm2.toml "$@"
