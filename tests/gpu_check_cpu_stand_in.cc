// A CPU stand-in for build/gpu/libvwt_cuda.so (plugins/common/vwt_cuda_capi.cu): the same C interface, computed
// by the CPU kernel (vwt_cpu.h) on host pointers, so that tests/test_gpu_check.py can rehearse the kernel drivers
// of scripts/gpu_check.py without a GPU. It models the contract of vwt_cuda.h (phase 1 leaves the groups and M in
// the caller's scratch; phase 2 with M < 0 reads M there and lays the outputs out for it), not the CUDA kernels:
// what a rehearsal proves is the drivers' side. Built with -DVWT_STAND_IN_WRONG, phase 2 gets one size wrong, to
// prove that the drivers catch it.
#include <cstddef>
#include <cstdint>

#include "vwt_cpu.h"

namespace {
struct Serial {
  template <class Fn>
  void operator()(size_t n, Fn&& fn) const {
    fn(size_t{0}, n);
  }
};
}  // namespace

extern "C" {

const char* vwt_cuda_last_error() { return "CPU stand-in"; }

// labels [B, N], groups [B], M
size_t vwt_cuda_workspace_size(int64_t B, int64_t N) { return static_cast<size_t>(B * N + B + 1) * sizeof(int64_t); }

int vwt_cuda_token_merge_groups(const int64_t* keys, int64_t B, int64_t N, int64_t P, int64_t grid_w, void* workspace,
                                int64_t* length, void*) {
  int64_t* labels = static_cast<int64_t*>(workspace);
  int64_t* groups = labels + B * N;
  groups[B] = vwt::token_merge_groups_cpu(keys, B, N, grid_w, labels, groups, Serial{});
  *length = P + groups[B];
  return 0;
}

int vwt_cuda_token_merge_rows(const void* tokens, int half, int64_t B, int64_t N, int64_t P, int64_t D, int64_t M,
                              const void* workspace, void* merged, float* sizes, void*) {
  const int64_t* labels = static_cast<const int64_t*>(workspace);
  const int64_t* groups = labels + B * N;
  if (M < 0) M = groups[B];
  if (half) {
    vwt::token_merge_cpu(static_cast<const _Float16*>(tokens), labels, groups, B, N, P, D, M,
                         static_cast<_Float16*>(merged), sizes, [](_Float16 x) { return static_cast<float>(x); },
                         [](float x) { return static_cast<_Float16>(x); }, Serial{});
  } else {
    vwt::token_merge_cpu(static_cast<const float*>(tokens), labels, groups, B, N, P, D, M, static_cast<float*>(merged),
                         sizes, [](float x) { return x; }, [](float x) { return x; }, Serial{});
  }
#ifdef VWT_STAND_IN_WRONG
  if (B > 0 && P + M > 0) sizes[0] += 1.0f;
#endif
  return 0;
}

}  // extern "C"
