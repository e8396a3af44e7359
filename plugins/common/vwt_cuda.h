// CUDA kernels of vwt::TokenMerge (opset 2), shared by the ONNX Runtime CUDA EP op and the TensorRT plugin.
// Semantics as the CPU kernel (vwt_cpu.h). Everything is enqueued on `stream`; nothing here synchronises or
// allocates: the caller hands in `workspace` (token_merge_workspace_size bytes).
//
// Two phases, because ONNX Runtime must know the merged length before it allocates the outputs:
//   1. token_merge_groups: keys -> groups per image, M = max groups, *length = P + M (device int64). M <= N
//      always: groups are counted from the patches themselves, never read from the key values.
//   2. token_merge_rows: the output rows. ONNX Runtime reads the length back (its one host sync) and passes
//      M; TensorRT passes M < 0, and the kernel reads M on the device and is launched for the bound P + N.
// UNVERIFIED on a GPU in this project (compiled with nvcc only); scripts/gpu_check.sh checks it where one is lent.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace vwt {
namespace cuda {

// Bytes of scratch for B images of N patches (any grid_w). Pure host arithmetic: safe on a build machine
// without a GPU (TensorRT asks for it while building).
size_t token_merge_workspace_size(int64_t B, int64_t N);

// Phase 1. keys [B, N] (any int64 values); grid_w = 0 or a divisor of N (the caller checks); length: device
// pointer to one int64 (receives P + M).
void token_merge_groups(const int64_t* keys, int64_t B, int64_t N, int64_t P, int64_t grid_w, void* workspace,
                        int64_t* length, cudaStream_t stream);

// Phase 2. tokens [B, P+N, D] (float, or IEEE half when `half`), outputs laid out as [B, P+M, D] and [B, P+M].
// M >= 0: the merged length the caller read back; M < 0: read on the device from phase 1 (TensorRT).
void token_merge_rows(const void* tokens, bool half, int64_t B, int64_t N, int64_t P, int64_t D, int64_t M,
                      const void* workspace, void* merged, float* sizes, cudaStream_t stream);

}  // namespace cuda
}  // namespace vwt
