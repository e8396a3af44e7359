// A C interface to the CUDA kernels, exported by the op library so that scripts/gpu_check.py can test them
// against the reference directly on device pointers (torch tensors), with no ONNX Runtime CUDA build needed.
// Every function returns 0 on success, or 1 with the message in vwt_cuda_last_error().
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

VWT_EXPORT int vwt_cuda_word_labels(const float* features, const float* vocab, int64_t B, int64_t N, int64_t F,
                                    int64_t V, float threshold, int64_t* labels, void* stream) {
  return guarded([&] {
    vwt::cuda::word_labels(features, vocab, B, N, F, V, threshold, labels, static_cast<cudaStream_t>(stream));
  });
}

VWT_EXPORT int vwt_cuda_token_merge(const void* tokens, int half, const int64_t* labels, int64_t B, int64_t N,
                                    int64_t P, int64_t D, int64_t M, void* merged, float* sizes, void* stream) {
  return guarded([&] {
    auto s = static_cast<cudaStream_t>(stream);
    if (half) vwt::cuda::token_merge_half(tokens, labels, B, N, P, D, M, merged, sizes, s);
    else vwt::cuda::token_merge(static_cast<const float*>(tokens), labels, B, N, P, D, M, static_cast<float*>(merged), sizes, s);
  });
}

// The TensorRT path: M computed on the device, merge launched for the upper bound, no synchronisation.
VWT_EXPORT int vwt_cuda_token_merge_dds(const void* tokens, int half, const int64_t* labels, int64_t B, int64_t N,
                                        int64_t P, int64_t D, int64_t* m, void* merged, float* sizes, void* stream) {
  return guarded([&] {
    auto s = static_cast<cudaStream_t>(stream);
    vwt::cuda::max_groups(labels, B, N, m, s);
    if (half) vwt::cuda::token_merge_dds_half(tokens, labels, B, N, P, D, m, merged, sizes, s);
    else vwt::cuda::token_merge_dds(static_cast<const float*>(tokens), labels, B, N, P, D, m, static_cast<float*>(merged), sizes, s);
  });
}

VWT_EXPORT int vwt_cuda_max_label(const int64_t* labels, int64_t count, int64_t* out, void* stream) {
  return guarded([&] { *out = vwt::cuda::max_label(labels, count, static_cast<cudaStream_t>(stream)); });
}
