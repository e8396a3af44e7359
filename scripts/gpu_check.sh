#!/usr/bin/env bash
# The GPU check: one command on a machine with an NVIDIA GPU (CUDA toolkit, torch, timm).
#   1. builds the shared CUDA kernels (plugins/common) into a small library with nvcc for this GPU;
#   2. checks them against the reference (vwt_export.vwt) on random and real-shaped inputs, fp32 and fp16,
#      with poisoned output buffers;
#   3. measures, side by side, batch-1 and batch-32 latency and NVML energy per image of the FP32 baseline vs
#      VWT intra and inter with the torch backend, and prints one table.
# Usage: bash scripts/gpu_check.sh [--model deit_s] [--weights random]
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build/gpu
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
"$NVCC" -std=c++17 -O3 -shared -Xcompiler -fPIC -arch=native -Iplugins/common \
    plugins/common/vwt_cuda.cu plugins/common/vwt_cuda_capi.cu -o build/gpu/libvwt_cuda.so
PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} python3 scripts/gpu_check.py --library build/gpu/libvwt_cuda.so "$@"
