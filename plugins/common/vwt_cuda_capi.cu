// A C interface to the CUDA kernels, exported by the op library so that scripts/gpu_check.py can test them
// against the reference directly on device pointers (torch tensors), with no ONNX Runtime CUDA build and no
// TensorRT needed. Every function returns 0 on success, or 1 with the message in vwt_cuda_last_error().
// UNVERIFIED: no GPU in this project's workplace; compiled with nvcc only.
#include <stdexcept>
#include <string>

#include "vwt_cuda.h"

namespace {
thread_local std::string last_error;

template <class Fn>
int guarded(Fn&& fn) {
  try {
    fn();
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
    return 1;
  }
}
}  // namespace

#define VWT_EXPORT extern "C" __attribute__((visibility("default")))

VWT_EXPORT const char* vwt_cuda_last_error() { return last_error.c_str(); }

VWT_EXPORT size_t vwt_cuda_workspace_size(int64_t B, int64_t N) { return vwt::cuda::token_merge_workspace_size(B, N); }

// Phase 1 alone: *length (device int64) = P + M; `workspace` keeps the groups for phase 2.
VWT_EXPORT int vwt_cuda_token_merge_groups(const int64_t* keys, int64_t B, int64_t N, int64_t P, int64_t grid_w,
                                           void* workspace, int64_t* length, void* stream) {
  return guarded([&] {
    vwt::cuda::token_merge_groups(keys, B, N, P, grid_w, workspace, length, static_cast<cudaStream_t>(stream));
  });
}

// Phase 2: M >= 0 as read back by the caller (the ONNX Runtime path), M < 0 read on the device with outputs laid
// out for the length phase 1 computed (the TensorRT path, buffers sized for the bound P + N).
VWT_EXPORT int vwt_cuda_token_merge_rows(const void* tokens, int half, int64_t B, int64_t N, int64_t P, int64_t D,
                                         int64_t M, const void* workspace, void* merged, float* sizes, void* stream) {
  return guarded([&] {
    vwt::cuda::token_merge_rows(tokens, half != 0, B, N, P, D, M, workspace, merged, sizes,
                                static_cast<cudaStream_t>(stream));
  });
}
