#!/usr/bin/env bash
# lowrank (candle's CUDA backend) against PyTorch + PEFT on one NVIDIA GPU, side by side in one run:
# the LoRA training step (q,v and all-linear; f32 and bf16 base weights, f32 adapters and AdamW) and
# greedy generation. Each benchmark runs alone on the GPU while nvidia-smi samples the card's used
# memory every 20 ms; its peak over the idle reading is reported beside PyTorch's own peak figures.
#
#   bash scripts/bench_gpu_compare.sh LOWRANK_BINARY MODEL.gguf OUT_DIR [ROUNDS]
#
# GPU_BENCH_RUNS ("targets dtype batch seq [tf32];...": tf32 runs both sides with TF32 f32 products) and GPU_BENCH_GENERATE ("merged unmerged"; empty: none) pick
# the runs; GPU_BENCH_LABEL, GPU_BENCH_PYTORCH=0 and GPU_BENCH_APPEND=1 add a second build's runs
# to the same results file. LOWRANK_BINARY: built with `cargo build --release -p lowrank-cli --features cuda` (CUDA toolkit
# at build time). PyTorch, transformers, peft and gguf must import. Writes OUT_DIR/gpu_results.jsonl
# (one JSON line per run, with "label", "round" and "gpu_mem_peak_mib") and prints a median table.
set -uo pipefail
bin=${1:?lowrank binary}; model=${2:?model .gguf}; out=${3:?output folder}; rounds=${4:-3}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
results="$out/gpu_results.jsonl"
[ "${GPU_BENCH_APPEND:-0}" = 1 ] || : >"$results"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee "$out/gpu.txt"
idle=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)

# run LABEL ROUND CMD...: runs one benchmark with the memory sampler, appends its JSON line.
run() {
    local label=$1 round=$2; shift 2
    local samples="$out/mem_${label}_${round}.txt" used
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 20 >"$samples" 2>/dev/null &
    local sampler=$!
    local line
    line=$("$@" 2>"$out/last_stderr.log" | tail -1)
    local rc=$?
    cat "$out/last_stderr.log" >>"$out/stderr.log"
    kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
    used=$(sort -n "$samples" | tail -1); rm -f "$samples"
    if [ $rc -ne 0 ] || [ -z "$line" ]; then
        echo "FAILED: $label ($*):" | tee -a "$out/stderr.log"
        tr '\r' '\n' <"$out/last_stderr.log" | grep -v 'it/s' | tail -3
        return
    fi
    python3 - "$label" "$round" "${used:-}" "$idle" "$line" >>"$results" <<'EOF'
import json, sys
label, rnd, used, idle, line = sys.argv[1:]
rec = json.loads(line)
rec.update(label=label, round=int(rnd), gpu_mem_peak_mib=(int(used) - int(idle)) if used.strip().isdigit() else None)
print(json.dumps(rec))
EOF
}

py="python3 $here/bench_pytorch.py --model $model --device cuda"
label=${GPU_BENCH_LABEL:-lowrank}          # our runs' label (to compare two builds in one results file)
with_pytorch=${GPU_BENCH_PYTORCH:-1}       # 0: our runs only
# Training runs: "targets dtype batch seq" each; GPU_BENCH_RUNS overrides the list.
runs=${GPU_BENCH_RUNS:-"q_proj,v_proj f32 8 128;all-linear f32 8 128;q_proj,v_proj f32 16 512;all-linear f32 16 512;q_proj,v_proj bf16 8 128;all-linear bf16 8 128;q_proj,v_proj bf16 16 512;all-linear bf16 16 512"}
for round in $(seq 1 "$rounds"); do
    IFS=';' read -ra entries <<<"$runs"
    for entry in "${entries[@]}"; do
        set -- $entry
        [ -z "${1:-}" ] && continue
        targets=$1 dtype=$2 batch=$3 seq=$4 tf32=${5:-}
        steps=20; [ $((batch * seq)) -gt 2048 ] && steps=10
        tag="${targets%%,*}-$dtype-${batch}x$seq"
        ours=(); theirs=()
        if [ "$tf32" = tf32 ]; then tag="$tag-tf32"; ours=(--tf32); theirs=(--tf32); fi
        run "$label-$tag" "$round" "$bin" --device cuda "${ours[@]}" bench train --model "$model" --batch "$batch" --seq "$seq" --targets "$targets" --dtype "$dtype" --steps $steps
        [ "$with_pytorch" = 1 ] && run "pytorch-$tag" "$round" $py --steps $steps --batch "$batch" --seq "$seq" --targets "$targets" --dtype "$dtype" "${theirs[@]}"
    done
    for adapter in ${GPU_BENCH_GENERATE-merged unmerged}; do
      for gb in ${GPU_BENCH_GEN_BATCHES:-1}; do
        flag=""; [ $adapter = unmerged ] && flag="--unmerged"
        pflag=""; [ $adapter = merged ] && pflag="--merged"
        run "$label-generate-$adapter-b$gb" "$round" "$bin" --device cuda bench generate --model "$model" $flag --repeats 5 --batch "$gb"
        [ "$with_pytorch" = 1 ] && run "pytorch-generate-$adapter-b$gb" "$round" $py --steps 5 --generate $pflag --gen-batch "$gb"
      done
    done
done

python3 - "$results" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
labels = sorted({r["label"] for r in rows}, key=lambda l: (l.split("-", 1)[1], l))
print(f"{'run':40} {'tokens/s (median, min-max)':>30} {'GPU MiB':>8} {'first loss':>11}")
for label in labels:
    rs = [r for r in rows if r["label"] == label]
    tps = [r["tokens_per_s"] for r in rs]
    mem = max((r["gpu_mem_peak_mib"] or 0) for r in rs)
    fl = rs[0].get("first_loss")
    fl = f"{fl:.5f}" if fl is not None else ""
    print(f"{label:40} {statistics.median(tps):10.1f} ({min(tps):8.1f}-{max(tps):8.1f}) {mem:8} {fl:>11}")
EOF
