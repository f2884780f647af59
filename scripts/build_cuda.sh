#!/usr/bin/env bash
# Builds lowrank with candle's CUDA backend (`--features cuda`) on a machine without a CUDA
# toolkit or GPU: NVIDIA's CUDA 13.0 wheels from PyPI give nvcc, the headers and the libraries to
# link against; the driver library (libcuda.so.1, which only a GPU machine has) is replaced at link
# time by a stub holding the driver functions' names. The binary then runs where a driver of
# CUDA 13 or later and the CUDA 13 runtime libraries are installed (LD_LIBRARY_PATH).
#
#   bash scripts/build_cuda.sh [COMPUTE_CAP]      # default 90 (H100/H200)
#
# Outputs: target-cuda/release/lowrank and, printed at the end, the GPU test binaries of
# crates/models/tests/cuda_ops.rs and crates/peft/tests/cuda_training.rs. The first build compiles candle's CUDA kernels: about 20
# minutes on 2 cores.
set -euo pipefail
cap=${1:-90}
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${LOWRANK_CACHE:-$HOME/.cache/lowrank}
cuda="$cache/cuda13"
if [ ! -x "$cuda/bin/nvcc" ]; then
    wheels="$cache/cuda13-wheels"
    mkdir -p "$wheels"
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d "$wheels" \
        "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-crt==13.0.*" \
        "nvidia-nvvm==13.0.*" "nvidia-cuda-cccl==13.0.*" "nvidia-cuda-nvrtc==13.0.*" \
        "nvidia-cublas==13.0.*" "nvidia-curand==10.4.*"
    tmp=$(mktemp -d)
    for w in "$wheels"/*.whl; do unzip -q -o "$w" -d "$tmp"; done
    rm -rf "$cuda.partial" && mv "$tmp/nvidia/cu13" "$cuda.partial" && rm -rf "$tmp"
    chmod +x "$cuda.partial"/bin/* "$cuda.partial"/nvvm/bin/*
    (cd "$cuda.partial/lib" && for f in *.so.*; do b=${f%%.so.*}.so; [ -e "$b" ] || ln -s "$f" "$b"; done)
    ln -sfn lib "$cuda.partial/lib64"
    rm -rf "$cuda" && mv "$cuda.partial" "$cuda"
fi
if [ ! -e "$cuda/lib/libcuda.so" ]; then
    # The stub: every driver function cudarc declares, as an empty function, under the real
    # library's soname; the program loads the real libcuda.so.1 at run time.
    cargo fetch --manifest-path "$root/Cargo.toml" >/dev/null
    bindings=$(ls -d "$HOME"/.cargo/registry/src/*/cudarc-0.19.*/src/driver/sys/mod.rs | tail -1)
    grep -ho "pub unsafe fn cu[A-Za-z0-9_]*" "$bindings" | awk '{print "void "$4"(void){}"}' | sort -u >"$cuda/libcuda_stub.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$cuda/lib/libcuda.so" "$cuda/libcuda_stub.c"
fi
export CUDA_HOME="$cuda" PATH="$cuda/bin:$PATH" CUDA_COMPUTE_CAP="$cap" CARGO_TARGET_DIR="$root/target-cuda"
cd "$root"
cargo build --release -p lowrank-cli --features cuda
cargo test --release -p lowrank-models --features cuda --test cuda_ops --no-run 2>&1 | grep -o 'target-cuda/[^)]*'
cargo test --release -p lowrank-peft --features cuda --test cuda_training --no-run 2>&1 | grep -o 'target-cuda/[^)]*'
echo "built target-cuda/release/lowrank (compute capability $cap)"
