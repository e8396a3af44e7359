// CUDA kernels of the vwt ops (see vwt_cuda.h). Straightforward by design: one block per patch for the
// nearest word, one block per image for relabelling, one block per output token for the merge. No atomics,
// so results do not depend on scheduling.
#include <cuda_fp16.h>

#include <stdexcept>
#include <string>

#include "vwt_cuda.h"

namespace vwt {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr float kNormEps = 1e-12f;

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string("vwt CUDA ") + what + ": " + cudaGetErrorString(err));
}

__device__ float block_sum(float v, float* scratch) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    v = threadIdx.x < (blockDim.x >> 5) ? scratch[threadIdx.x] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if (threadIdx.x == 0) scratch[0] = v;
  }
  __syncthreads();
  float total = scratch[0];
  __syncthreads();
  return total;
}

// rows[R, F] -> unit rows (x / max(|x|, eps)); one block per row.
__global__ void normalise_rows(const float* x, int64_t F, float* out) {
  __shared__ float scratch[32];
  const float* row = x + blockIdx.x * F;
  float ss = 0.0f;
  for (int64_t k = threadIdx.x; k < F; k += blockDim.x) ss += row[k] * row[k];
  const float den = fmaxf(sqrtf(block_sum(ss, scratch)), kNormEps);
  for (int64_t k = threadIdx.x; k < F; k += blockDim.x) out[blockIdx.x * F + k] = row[k] / den;
}

// One block per patch: distance 1 - cos to every word, keep the smallest (first index on ties).
__global__ void nearest_word(const float* unit_features, const float* unit_words, int64_t F, int64_t V,
                             float* best_dist, int64_t* best_word) {
  extern __shared__ float f[];
  __shared__ float dist_s[kThreads];
  __shared__ int64_t word_s[kThreads];
  const float* row = unit_features + blockIdx.x * F;
  for (int64_t k = threadIdx.x; k < F; k += blockDim.x) f[k] = row[k];
  __syncthreads();
  float bd = INFINITY;
  int64_t bw = 0;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    const float* w = unit_words + v * F;
    float dot = 0.0f;
    for (int64_t k = 0; k < F; ++k) dot = fmaf(f[k], w[k], dot);
    const float d = 1.0f - dot;
    if (d < bd) { bd = d; bw = v; }  // v increases per thread, so the first index wins ties
  }
  dist_s[threadIdx.x] = bd;
  word_s[threadIdx.x] = bw;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) {
      const float od = dist_s[threadIdx.x + s];
      const int64_t ow = word_s[threadIdx.x + s];
      if (od < dist_s[threadIdx.x] || (od == dist_s[threadIdx.x] && ow < word_s[threadIdx.x])) {
        dist_s[threadIdx.x] = od;
        word_s[threadIdx.x] = ow;
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    best_dist[blockIdx.x] = dist_s[0];
    best_word[blockIdx.x] = word_s[0];
  }
}

// One block per image: keys, then label = number of distinct keys smaller than the patch's key.
__global__ void relabel(const float* best_dist, const int64_t* best_word, int64_t N, int64_t V, float threshold,
                        int64_t* labels) {
  extern __shared__ int64_t keys[];
  unsigned char* first = reinterpret_cast<unsigned char*>(keys + N);
  const int64_t base = blockIdx.x * N;
  if (threadIdx.x == 0) {  // the unmatched rank is a running count in raster order
    int64_t unmatched = 0;
    for (int64_t n = 0; n < N; ++n) keys[n] = best_dist[base + n] <= threshold ? best_word[base + n] : V + unmatched++;
  }
  __syncthreads();
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x) {
    bool is_first = true;
    for (int64_t m = 0; m < n && is_first; ++m) is_first = keys[m] != keys[n];
    first[n] = is_first;
  }
  __syncthreads();
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x) {
    int64_t smaller = 0;
    for (int64_t m = 0; m < N; ++m) smaller += (first[m] && keys[m] < keys[n]);
    labels[base + n] = smaller;
  }
}

__global__ void max_min_label(const int64_t* labels, int64_t count, unsigned long long* out_max, long long* out_min) {
  long long mx = -1, mn = 0;
  for (int64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < count; i += gridDim.x * blockDim.x) {
    mx = max(mx, static_cast<long long>(labels[i]));
    mn = min(mn, static_cast<long long>(labels[i]));
  }
  if (mx >= 0) atomicMax(out_max, static_cast<unsigned long long>(mx) + 1ull);  // +1 keeps 0 meaning "none"
  atomicMin(out_min, mn);
}

__global__ void groups_per_image(const int64_t* labels, int64_t N, int64_t* groups) {
  __shared__ int64_t best[kThreads];
  int64_t mx = -1;
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x) mx = max(mx, labels[blockIdx.x * N + n]);
  best[threadIdx.x] = mx;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) best[threadIdx.x] = max(best[threadIdx.x], best[threadIdx.x + s]);
    __syncthreads();
  }
  if (threadIdx.x == 0) groups[blockIdx.x] = best[0] + 1;
}

template <class T> __device__ float to_f(T x);
template <> __device__ float to_f<float>(float x) { return x; }
template <> __device__ float to_f<__half>(__half x) { return __half2float(x); }
template <class T> __device__ T from_f(float x);
template <> __device__ float from_f<float>(float x) { return x; }
template <> __device__ __half from_f<__half>(float x) { return __float2half_rn(x); }

__global__ void max_groups_kernel(const int64_t* labels, int64_t count, int64_t* m) {
  __shared__ int64_t best[kThreads];
  int64_t mx = -1;
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) mx = max(mx, labels[i]);
  best[threadIdx.x] = mx;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) best[threadIdx.x] = max(best[threadIdx.x], best[threadIdx.x + s]);
    __syncthreads();
  }
  if (threadIdx.x == 0) *m = best[0] + 1;
}

// grid (P + M, B): block t of image b writes output token t. With m_device set, M is read from the device and
// the grid covers the upper bound P + N.
template <class T>
__global__ void merge(const T* tokens, const int64_t* labels, int64_t N, int64_t P, int64_t D, int64_t M_host, T* merged,
                      float* sizes, const int64_t* m_device) {
  const int64_t M = m_device ? *m_device : M_host;
  const int64_t b = blockIdx.y, t = blockIdx.x, T_in = P + N, T_out = P + M;
  if (t >= T_out) return;
  T* out = merged + (b * T_out + t) * D;
  if (t < P) {
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) out[d] = tokens[(b * T_in + t) * D + d];
    if (threadIdx.x == 0) sizes[b * T_out + t] = 1.0f;
    return;
  }
  const int64_t m = t - P;
  const int64_t* lab = labels + b * N;
  for (int64_t d0 = 0; d0 < D; d0 += blockDim.x) {
    const int64_t d = d0 + threadIdx.x;
    float acc = 0.0f, count = 0.0f;
    for (int64_t n = 0; n < N; ++n) {
      if (lab[n] == m) {
        if (d < D) acc += to_f(tokens[(b * T_in + P + n) * D + d]);
        count += 1.0f;
      }
    }
    if (d < D) out[d] = from_f<T>(acc / fmaxf(count, 1.0f));
    if (d0 == 0 && threadIdx.x == 0) sizes[b * T_out + t] = count;
  }
}

template <class T>
void launch_merge(const T* tokens, const int64_t* labels, int64_t B, int64_t N, int64_t P, int64_t D, int64_t M,
                  T* merged, float* sizes, cudaStream_t stream, const int64_t* m_device = nullptr) {
  const int64_t blocks = m_device ? P + N : P + M;
  if (B == 0 || blocks == 0) return;
  const int threads = D >= 256 ? 256 : (D >= 128 ? 128 : 64);
  merge<T><<<dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(B)), threads, 0, stream>>>(
      tokens, labels, N, P, D, M, merged, sizes, m_device);
  check(cudaGetLastError(), "token_merge");
}

}  // namespace

size_t word_labels_workspace_size(int64_t B, int64_t N, int64_t F, int64_t V) {
  auto align = [](size_t x) { return (x + 255) / 256 * 256; };
  return align(V * F * sizeof(float)) + align(B * N * F * sizeof(float)) + align(B * N * sizeof(float)) +
         align(B * N * sizeof(int64_t));
}

void word_labels(const float* features, const float* vocab, int64_t B, int64_t N, int64_t F, int64_t V,
                 float threshold, int64_t* labels, cudaStream_t stream, void* workspace) {
  if (B == 0 || N == 0) return;
  const size_t bytes = word_labels_workspace_size(B, N, F, V);
  void* ws = workspace;
  if (ws == nullptr) check(cudaMallocAsync(&ws, bytes, stream), "workspace allocation");
  auto align = [](size_t x) { return (x + 255) / 256 * 256; };
  char* p = static_cast<char*>(ws);
  float* unit_words = reinterpret_cast<float*>(p);
  float* unit_features = reinterpret_cast<float*>(p += align(V * F * sizeof(float)));
  float* dist = reinterpret_cast<float*>(p += align(B * N * F * sizeof(float)));
  int64_t* best = reinterpret_cast<int64_t*>(p += align(B * N * sizeof(float)));
  normalise_rows<<<static_cast<unsigned>(V), kThreads, 0, stream>>>(vocab, F, unit_words);
  normalise_rows<<<static_cast<unsigned>(B * N), kThreads, 0, stream>>>(features, F, unit_features);
  nearest_word<<<static_cast<unsigned>(B * N), kThreads, F * sizeof(float), stream>>>(unit_features, unit_words, F, V,
                                                                                      dist, best);
  relabel<<<static_cast<unsigned>(B), kThreads, N * (sizeof(int64_t) + 1), stream>>>(dist, best, N, V, threshold,
                                                                                     labels);
  check(cudaGetLastError(), "word_labels");
  if (workspace == nullptr) check(cudaFreeAsync(ws, stream), "workspace release");
}

int64_t max_label(const int64_t* labels, int64_t count, cudaStream_t stream) {
  if (count == 0) return -1;
  unsigned long long* d_max;
  long long* d_min;
  check(cudaMallocAsync(reinterpret_cast<void**>(&d_max), sizeof(unsigned long long) + sizeof(long long), stream),
        "allocation");
  d_min = reinterpret_cast<long long*>(d_max + 1);
  check(cudaMemsetAsync(d_max, 0, sizeof(unsigned long long) + sizeof(long long), stream), "memset");
  max_min_label<<<64, kThreads, 0, stream>>>(labels, count, d_max, d_min);
  unsigned long long h[2];
  check(cudaMemcpyAsync(h, d_max, sizeof(h), cudaMemcpyDeviceToHost, stream), "copy");
  check(cudaFreeAsync(d_max, stream), "release");
  check(cudaStreamSynchronize(stream), "synchronise");
  if (static_cast<long long>(h[1]) < 0) throw std::invalid_argument("TokenMerge: negative label");
  return static_cast<int64_t>(h[0]) - 1;
}

void group_counts(const int64_t* labels, int64_t B, int64_t N, int64_t* groups, cudaStream_t stream) {
  if (B == 0) return;
  groups_per_image<<<static_cast<unsigned>(B), kThreads, 0, stream>>>(labels, N, groups);
  check(cudaGetLastError(), "group_counts");
}

void max_groups(const int64_t* labels, int64_t B, int64_t N, int64_t* m, cudaStream_t stream) {
  max_groups_kernel<<<1, kThreads, 0, stream>>>(labels, B * N, m);
  check(cudaGetLastError(), "max_groups");
}

void token_merge_dds(const float* tokens, const int64_t* labels, int64_t B, int64_t N, int64_t P, int64_t D,
                     const int64_t* m, float* merged, float* sizes, cudaStream_t stream) {
  launch_merge<float>(tokens, labels, B, N, P, D, 0, merged, sizes, stream, m);
}

void token_merge_dds_half(const void* tokens, const int64_t* labels, int64_t B, int64_t N, int64_t P, int64_t D,
                          const int64_t* m, void* merged, float* sizes, cudaStream_t stream) {
  launch_merge<__half>(static_cast<const __half*>(tokens), labels, B, N, P, D, 0, static_cast<__half*>(merged), sizes,
                       stream, m);
}

void token_merge(const float* tokens, const int64_t* labels, int64_t B, int64_t N, int64_t P, int64_t D, int64_t M,
                 float* merged, float* sizes, cudaStream_t stream) {
  launch_merge<float>(tokens, labels, B, N, P, D, M, merged, sizes, stream);
}

void token_merge_half(const void* tokens, const int64_t* labels, int64_t B, int64_t N, int64_t P, int64_t D,
                      int64_t M, void* merged, float* sizes, cudaStream_t stream) {
  launch_merge<__half>(static_cast<const __half*>(tokens), labels, B, N, P, D, M, static_cast<__half*>(merged), sizes,
                       stream);
}

}  // namespace cuda
}  // namespace vwt
