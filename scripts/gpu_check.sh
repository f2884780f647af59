#!/usr/bin/env bash
# Everything a lent GPU machine is needed for, in one call: the GPU tests, a 100-step E2E training
# run on the GPU (f32 and bf16) to compare with the same run on the CPU, and lowrank against
# PyTorch + PEFT side by side (scripts/bench_gpu_compare.sh). Built on a machine without a GPU by
# scripts/build_cuda.sh; the device machine needs the NVIDIA driver, CUDA 13 libraries (cuBLAS,
# NVRTC, cuRAND: a CUDA toolkit or PyTorch's wheels) and, for the comparison, PyTorch +
# transformers + PEFT + numpy + safetensors.
#
#   bash scripts/gpu_check.sh BIN_DIR OUT_DIR [STAGES]
#
# BIN_DIR: lowrank, cuda_ops, cuda_training (each may be .xz-compressed), optionally
# lowrank-before (an earlier build, benchmarked beside this one), tokenizer.json (SmolLM2's) and
# cpu-e2e.jsonl (the CPU run's metrics to compare with); LOWRANK_BUILT_ROOT: the checkout the
# test binaries were built in (default /work/main; linked to this one). The model is SmolLM2-135M's architecture
# with deterministic pseudo-random weights (scripts/make_random_smollm2.py: the same weights on
# every machine), since the pretrained file is too large to carry. STAGES (default all):
# tests,e2e,bench,extra (also: training = the training test alone, quick = a short benchmark
# round). Each stage has a time limit; everything goes to OUT_DIR as it happens:
# log.txt, e2e-f32.jsonl, e2e-bf16.jsonl and bench/ (scripts/bench_gpu_compare.sh's files).
set -uo pipefail
bins=${1:?folder with the binaries}; out=${2:?output folder}; stages=${3:-tests,e2e,bench,extra}
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out" /tmp/lowrank-gpu
work=/tmp/lowrank-gpu
for f in "$bins"/*; do
    case "$f" in
        *.xz) python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$f" "$work/$(basename "${f%.xz}")" ;;
        *) cp "$f" "$work/" ;;
    esac
done
chmod +x "$work"/lowrank* "$work"/cuda_* 2>/dev/null
# The CUDA 13 libraries the binaries open at run time.
for lib in libcublas.so.13 libnvrtc.so.13 libcurand.so.10 libcublasLt.so.13; do
    dir=$(find /usr/local/cuda*/ /usr/lib /opt -name "$lib" -print -quit 2>/dev/null | xargs -r dirname)
    [ -n "$dir" ] && case ":${LD_LIBRARY_PATH:-}:" in *":$dir:"*) ;; *) export LD_LIBRARY_PATH="$dir:${LD_LIBRARY_PATH:-}" ;; esac
done
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}" | tee "$out/log.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee -a "$out/log.txt"
grep -m1 "model name" /proc/cpuinfo | tee -a "$out/log.txt"
# The test binaries find their fixtures under the checkout they were built in.
built_root=${LOWRANK_BUILT_ROOT:-/work/main}
if [ ! -e "$built_root/tests/fixtures" ]; then
    mkdir -p "$(dirname "$built_root")" && ln -sfn "$root" "$built_root"
fi
has() { case ",$stages," in *",$1,"*) return 0 ;; esac; return 1; }
lr="$work/lowrank"
model="$work/smollm2-random"

if has tests; then
    echo "== GPU tests" | tee -a "$out/log.txt"
    timeout 150 "$work/cuda_ops" --test-threads=1 --nocapture 2>&1 | grep -v "^$" | tee -a "$out/log.txt"
fi
if has tests || has training; then
    timeout 150 "$work/cuda_training" --test-threads=1 --nocapture 2>&1 | grep -v "^$" | tee -a "$out/log.txt"
fi

if has e2e || has bench || has extra || has quick; then
    python3 "$root/scripts/make_random_smollm2.py" "$model" --tokenizer "$work/tokenizer.json" | tee -a "$out/log.txt"
    md5sum "$model/model.safetensors" | tee -a "$out/log.txt"
fi

if has e2e; then
    # configs/e2e-smollm2.toml (100 steps, LoRA q,v, dropout 0.05) on the GPU, f32 and bf16.
    for dtype in f32 bf16; do
        rm -rf "$work/e2e-$dtype"
        ( cd "$root" && timeout 100 "$lr" --device cuda train --config configs/e2e-smollm2.toml --model "$model" \
            --set report.samples=0 --set model.dtype=$dtype --output "$work/e2e-$dtype" ) >"$work/e2e-$dtype.log" 2>&1
        tr '\r' '\n' <"$work/e2e-$dtype.log" | grep -v "^$" | tail -3 | tee -a "$out/log.txt"
        cp "$work/e2e-$dtype/metrics.jsonl" "$out/e2e-$dtype.jsonl" 2>/dev/null
    done
    if [ -f "$work/cpu-e2e.jsonl" ]; then
        python3 - "$work/cpu-e2e.jsonl" "$out"/e2e-f32.jsonl "$out"/e2e-bf16.jsonl <<'EOF' | tee -a "$out/log.txt"
import json, sys
def losses(p):
    try:
        rows = [json.loads(l) for l in open(p)]
    except OSError:
        return {}, {}
    tr = {r["step"]: r["loss"] for r in rows if "loss" in r and "step" in r}
    va = {r["step"]: r["val_loss"] for r in rows if r.get("val_loss") is not None}
    return tr, va
cpu_t, cpu_v = losses(sys.argv[1])
for p in sys.argv[2:]:
    t, v = losses(p)
    if not t:
        print(f"{p}: no metrics"); continue
    common = sorted(set(t) & set(cpu_t))
    worst = max(abs(t[s] - cpu_t[s]) / abs(cpu_t[s]) for s in common)
    last = common[-1]
    print(f"{p.split('/')[-1]}: step {last} loss {t[last]:.5f} vs CPU {cpu_t[last]:.5f} ({(t[last]-cpu_t[last])/cpu_t[last]:+.3%}); worst step {worst:.3%} over {len(common)} steps")
    for s in sorted(set(v) & set(cpu_v)):
        print(f"   validation loss at {s}: {v[s]:.5f} vs CPU {cpu_v[s]:.5f} ({(v[s]-cpu_v[s])/cpu_v[s]:+.3%})")
EOF
    fi
fi

bench() { timeout "$1" bash "$root/scripts/bench_gpu_compare.sh" "${@:2}" 2>&1 | grep -v "^$" >>"$out/log.txt"; }
if has bench; then
    mkdir -p "$out/bench"
    GPU_BENCH_GENERATE="" GPU_BENCH_RUNS="q_proj,v_proj f32 8 128;q_proj,v_proj bf16 8 128;q_proj,v_proj f32 16 512;all-linear f32 16 512;q_proj,v_proj bf16 16 512;all-linear bf16 16 512" \
        bench 300 "$lr" "$model" "$out/bench" 1
fi
if has quick; then
    # A short round: the small shapes (where the per-step overhead counts) and bf16 16 x 512.
    mkdir -p "$out/bench"
    GPU_BENCH_GENERATE="" GPU_BENCH_RUNS="q_proj,v_proj f32 8 128;q_proj,v_proj bf16 8 128;q_proj,v_proj bf16 16 512;q_proj,v_proj f32 16 512" \
        bench 170 "$lr" "$model" "$out/bench" 1
fi
if has extra; then
    mkdir -p "$out/bench"
    GPU_BENCH_APPEND=1 GPU_BENCH_GENERATE="" GPU_BENCH_RUNS="q_proj,v_proj bf16 4 2048;q_proj,v_proj f32 16 512 tf32;all-linear f32 16 512 tf32" \
        bench 150 "$lr" "$model" "$out/bench" 1
    if [ -x "$work/lowrank-before" ]; then
        GPU_BENCH_APPEND=1 GPU_BENCH_LABEL=before GPU_BENCH_PYTORCH=0 GPU_BENCH_GENERATE="" GPU_BENCH_RUNS="q_proj,v_proj f32 16 512;q_proj,v_proj bf16 16 512" \
            bench 60 "$work/lowrank-before" "$model" "$out/bench" 1
    fi
    GPU_BENCH_APPEND=1 GPU_BENCH_RUNS=" " GPU_BENCH_GEN_BATCHES="1 32" bench 150 "$lr" "$model" "$out/bench" 1
fi
tail -40 "$out/log.txt"
