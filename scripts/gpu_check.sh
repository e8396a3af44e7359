#!/usr/bin/env bash
# The GPU check: one command on a machine with an NVIDIA GPU (CUDA toolkit, torch, timm). UNVERIFIED: no GPU was
# lent while it was written; it compiles (nvcc) and its Python part imports, nothing more is known.
#   1. builds the shared CUDA kernels of vwt::TokenMerge (plugins/common) with their C interface for this GPU;
#   2. under compute-sanitizer memcheck (where installed): the kernel checks alone (M = N, M = 1, keys anywhere
#      in int64, local grouping, B in {1, 8}, fp32 / fp16, large N and D, both the ONNX Runtime and TensorRT
#      paths), so an out-of-bounds access fails the run;
#   3. the same checks at full speed, the ONNX Runtime CUDA EP where a GPU onnxruntime is installed, and, side by
#      side, batch-1 and batch-32 latency and NVML energy per image of the FP32 baseline vs VWT intra and inter.
# Usage: bash scripts/gpu_check.sh [--model deit_s] [--weights random]
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build/gpu
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
ARCH=${VWT_GPU_ARCH:--arch=native}
"$NVCC" -std=c++17 -O3 -shared -Xcompiler -fPIC $ARCH -Iplugins/common \
    plugins/common/vwt_cuda.cu plugins/common/vwt_cuda_capi.cu -o build/gpu/libvwt_cuda.so
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
SANITIZER=${SANITIZER:-$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)}
if [ -x "$SANITIZER" ]; then
    echo "== compute-sanitizer memcheck: kernel checks"
    "$SANITIZER" --tool memcheck --error-exitcode 99 --leak-check no \
        "$PY" scripts/gpu_check.py --library build/gpu/libvwt_cuda.so --kernels-only
else
    echo "== compute-sanitizer not found: memcheck skipped"
fi
echo "== kernel checks, ONNX Runtime CUDA EP, latency and energy"
"$PY" scripts/gpu_check.py --library build/gpu/libvwt_cuda.so "$@"
