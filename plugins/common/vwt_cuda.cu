// CUDA kernels of vwt::TokenMerge (see vwt_cuda.h). UNVERIFIED on a GPU here: compiled with nvcc only.
//
// Phase 1 (groups), per image b, all kernels spread over the whole grid:
//   grid_w > 0: union-find on the patch grid (atomicMin links, so a component's root is its first patch);
//   sort the pairs (key, root << 32 | patch) with a bitonic sort, the image padded to L = 2^k entries
//   (shared-memory tiles of 2048 entries, global steps above that: no O(N^2), no shared-memory limit on N);
//   one block per image scans the sorted run for the start of each group (a new key, or a new root) and
//   records where each group starts; groups <= N by construction, whatever the key values.
// Phase 2 (rows): one block per output row; a group's members are contiguous in the sorted order, so its mean
// is a gather in ascending patch order (deterministic, no atomics), threads across D (any D, no shared memory).
#include <cuda_fp16.h>

#include <climits>
#include <stdexcept>
#include <string>

#include "vwt_cuda.h"

namespace vwt {
namespace cuda {
namespace {

constexpr int kTile = 2048;        // bitonic entries sorted in shared memory per block (2048 x 16 B = 32 KiB)
constexpr int kScanThreads = 256;  // threads of the per-image scan block
constexpr int kThreads = 256;

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string("vwt CUDA ") + what + ": " + cudaGetErrorString(err));
}

size_t align256(size_t x) { return (x + 255) / 256 * 256; }

// Entries per image in the sort: a power of two >= max(N, 2).
int64_t padded(int64_t N) {
  int64_t L = 2;
  while (L < N) L <<= 1;
  return L;
}

unsigned blocks_for(int64_t n, int threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

struct Workspace {
  int64_t* sort_keys;   // [B, L]
  uint64_t* sort_vals;  // [B, L]: root << 32 | patch (grid_w = 0: root = 0)
  int32_t* parent;      // [B, N] union-find forest (grid_w > 0)
  int32_t* starts;      // [B, N + 1]: sorted position where each group starts, then N
  int32_t* groups;      // [B]
  int64_t* m;           // [1]: max groups over the batch
};

Workspace carve(void* base, int64_t B, int64_t N) {
  const int64_t L = padded(N);
  char* p = static_cast<char*>(base);
  Workspace w;
  w.sort_keys = reinterpret_cast<int64_t*>(p);
  p += align256(B * L * sizeof(int64_t));
  w.sort_vals = reinterpret_cast<uint64_t*>(p);
  p += align256(B * L * sizeof(uint64_t));
  w.parent = reinterpret_cast<int32_t*>(p);
  p += align256(B * N * sizeof(int32_t));
  w.starts = reinterpret_cast<int32_t*>(p);
  p += align256(B * (N + 1) * sizeof(int32_t));
  w.groups = reinterpret_cast<int32_t*>(p);
  p += align256(B * sizeof(int32_t));
  w.m = reinterpret_cast<int64_t*>(p);
  return w;
}

// ---- connected components (grid_w > 0) ----------------------------------------------------------------------

__global__ void cc_init(int32_t* parent, int64_t total, int64_t N) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x)
    parent[i] = static_cast<int32_t>(i % N);
}

__device__ int32_t cc_find(const int32_t* parent, int32_t x) {
  const volatile int32_t* p = parent;  // other threads relink concurrently: always read memory
  int32_t up = p[x];
  while (up != x) {
    x = up;
    up = p[x];
  }
  return x;
}

// Playne & Hawick's lock-free union: atomicMin keeps parent[x] <= x, so roots are the smallest index of a set.
__device__ void cc_union(int32_t* parent, int32_t a, int32_t b) {
  bool done = false;
  while (!done) {
    a = cc_find(parent, a);
    b = cc_find(parent, b);
    if (a < b) {
      const int32_t old = atomicMin(parent + b, a);
      done = old == b;
      b = old;
    } else if (b < a) {
      const int32_t old = atomicMin(parent + a, b);
      done = old == a;
      a = old;
    } else {
      done = true;
    }
  }
}

__global__ void cc_link(const int64_t* keys, int64_t B, int64_t N, int64_t grid_w, int32_t* parent) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < B * N; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / N, n = i % N;
    const int64_t* k = keys + b * N;
    int32_t* p = parent + b * N;
    if (n % grid_w != 0 && k[n - 1] == k[n]) cc_union(p, static_cast<int32_t>(n - 1), static_cast<int32_t>(n));
    if (n >= grid_w && k[n - grid_w] == k[n]) cc_union(p, static_cast<int32_t>(n - grid_w), static_cast<int32_t>(n));
  }
}

// ---- sort entries ----------------------------------------------------------------------------------------------

// Entries past N sort last: (INT64_MAX, UINT64_MAX) is above every real pair, whose value is < 2^63.
__global__ void fill_sort(const int64_t* keys, const int32_t* parent, int64_t B, int64_t N, int64_t L, bool grid,
                          int64_t* sort_keys, uint64_t* sort_vals) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < B * L; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / L, n = i % L;
    if (n < N) {
      const uint64_t root = grid ? static_cast<uint64_t>(cc_find(parent + b * N, static_cast<int32_t>(n))) : 0;
      sort_keys[i] = keys[b * N + n];
      sort_vals[i] = (root << 32) | static_cast<uint64_t>(n);
    } else {
      sort_keys[i] = LLONG_MAX;
      sort_vals[i] = ULLONG_MAX;
    }
  }
}

__device__ __forceinline__ bool sorts_after(int64_t ka, uint64_t va, int64_t kb, uint64_t vb) {
  return ka > kb || (ka == kb && va > vb);
}

// Bitonic compare-exchange of positions i < l (indices within the image) for sequence size k.
__device__ __forceinline__ void compare_exchange(int64_t* k, uint64_t* v, int64_t i, int64_t l, bool ascending) {
  if (sorts_after(k[i], v[i], k[l], v[l]) == ascending) {
    const int64_t tk = k[i];
    const uint64_t tv = v[i];
    k[i] = k[l];
    v[i] = v[l];
    k[l] = tk;
    v[l] = tv;
  }
}

// One global step (size k, stride j >= tile) over all images: one thread per pair.
__global__ void bitonic_global(int64_t* keys, uint64_t* vals, int64_t B, int64_t L, int64_t k, int64_t j) {
  const int64_t pairs = B * (L / 2);
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < pairs; p += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = p / (L / 2), q = p % (L / 2);
    const int64_t i = 2 * j * (q / j) + (q % j);
    compare_exchange(keys + b * L, vals + b * L, i, i + j, (i & k) == 0);
  }
}

// A tile of `tile` entries in shared memory, blockDim = tile / 2. first_k = 0: sort the tile completely (sizes 2
// .. tile); otherwise finish size first_k for strides tile/2 .. 1 (the strides >= tile ran globally).
__global__ void bitonic_tile(int64_t* keys, uint64_t* vals, int64_t L, int tile, int64_t first_k) {
  __shared__ int64_t sk[kTile];
  __shared__ uint64_t sv[kTile];
  const int64_t tiles_per_image = L / tile;
  const int64_t b = blockIdx.x / tiles_per_image, offset = (blockIdx.x % tiles_per_image) * tile;
  int64_t* gk = keys + b * L + offset;
  uint64_t* gv = vals + b * L + offset;
  for (int i = threadIdx.x; i < tile; i += blockDim.x) {
    sk[i] = gk[i];
    sv[i] = gv[i];
  }
  __syncthreads();
  const int64_t k_begin = first_k ? first_k : 2, k_end = first_k ? first_k : tile;
  for (int64_t k = k_begin; k <= k_end; k <<= 1) {
    for (int64_t j = (first_k ? tile : k) / 2; j > 0; j >>= 1) {
      const int q = threadIdx.x;
      const int64_t i = 2 * j * (q / j) + (q % j);
      compare_exchange(sk, sv, i, i + j, ((offset + i) & k) == 0);  // direction from the index within the image
      __syncthreads();
    }
  }
  for (int i = threadIdx.x; i < tile; i += blockDim.x) {
    gk[i] = sk[i];
    gv[i] = sv[i];
  }
}

void bitonic_sort(int64_t* keys, uint64_t* vals, int64_t B, int64_t L, cudaStream_t stream) {
  const int tile = static_cast<int>(L < kTile ? L : kTile);
  const unsigned tile_blocks = static_cast<unsigned>(B * (L / tile));
  const unsigned pair_blocks = blocks_for(B * (L / 2), kThreads);
  bitonic_tile<<<tile_blocks, tile / 2, 0, stream>>>(keys, vals, L, tile, 0);
  for (int64_t k = 2 * tile; k <= L; k <<= 1) {
    for (int64_t j = k / 2; j >= tile; j >>= 1) bitonic_global<<<pair_blocks, kThreads, 0, stream>>>(keys, vals, B, L, k, j);
    bitonic_tile<<<tile_blocks, tile / 2, 0, stream>>>(keys, vals, L, tile, k);
  }
}

// ---- group starts and counts ---------------------------------------------------------------------------------

__device__ int block_inclusive_scan(int x, int* warp_sums) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int o = 1; o < 32; o <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, x, o);
    if (lane >= o) x += y;
  }
  if (lane == 31) warp_sums[warp] = x;
  __syncthreads();
  if (warp == 0) {
    int s = lane < (blockDim.x >> 5) ? warp_sums[lane] : 0;
    for (int o = 1; o < 32; o <<= 1) {
      const int y = __shfl_up_sync(0xffffffffu, s, o);
      if (lane >= o) s += y;
    }
    warp_sums[lane] = s;  // inclusive sums of the warps
  }
  __syncthreads();
  const int total = x + (warp > 0 ? warp_sums[warp - 1] : 0);
  return total;
}

// One block per image: a group starts where the key or the root changes in sorted order.
__global__ void group_starts(const int64_t* sort_keys, const uint64_t* sort_vals, int64_t N, int64_t L,
                             int32_t* starts, int32_t* groups) {
  __shared__ int warp_sums[32];
  __shared__ int carry;
  const int64_t b = blockIdx.x;
  const int64_t* k = sort_keys + b * L;
  const uint64_t* v = sort_vals + b * L;
  int32_t* s = starts + b * (N + 1);
  if (threadIdx.x == 0) carry = 0;
  __syncthreads();
  for (int64_t base = 0; base < N; base += blockDim.x) {
    const int64_t i = base + threadIdx.x;
    const bool flag = i < N && (i == 0 || k[i] != k[i - 1] || (v[i] >> 32) != (v[i - 1] >> 32));
    const int incl = block_inclusive_scan(flag ? 1 : 0, warp_sums);
    const int before = carry;
    if (flag) s[before + incl - 1] = static_cast<int32_t>(i);
    __syncthreads();
    if (threadIdx.x == blockDim.x - 1) carry = before + incl;
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    s[carry] = static_cast<int32_t>(N);
    groups[b] = carry;
  }
}

// One block: M = max groups, and the length output P + M (the size tensor of TensorRT).
__global__ void finish_length(const int32_t* groups, int64_t B, int64_t P, int64_t* m, int64_t* length) {
  __shared__ int best[kThreads];
  int mx = 0;
  for (int64_t b = threadIdx.x; b < B; b += blockDim.x) mx = max(mx, groups[b]);
  best[threadIdx.x] = mx;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) best[threadIdx.x] = max(best[threadIdx.x], best[threadIdx.x + s]);
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    *m = best[0];
    *length = P + best[0];
  }
}

// ---- rows ---------------------------------------------------------------------------------------------------

template <class T> __device__ float to_f(T x);
template <> __device__ __forceinline__ float to_f<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_f<__half>(__half x) { return __half2float(x); }
template <class T> __device__ T from_f(float x);
template <> __device__ float from_f<float>(float x) { return x; }
template <> __device__ __half from_f<__half>(float x) { return __float2half_rn(x); }

// One block per row of the launch bound (rows_per_image = P + M, or P + N when M is read on the device).
template <class T>
__global__ void merge_rows(const T* tokens, int64_t B, int64_t N, int64_t P, int64_t D, int64_t L, int64_t M_host,
                           int64_t rows_per_image, const uint64_t* sort_vals, const int32_t* starts,
                           const int32_t* groups, const int64_t* m_device, T* merged, float* sizes) {
  const int64_t M = M_host >= 0 ? M_host : *m_device;
  const int64_t T_in = P + N, T_out = P + M;
  for (int64_t row = blockIdx.x; row < B * rows_per_image; row += gridDim.x) {
    const int64_t b = row / rows_per_image, t = row % rows_per_image;
    if (t >= T_out) continue;  // past this batch's length (TensorRT's upper-bound launch)
    T* out = merged + (b * T_out + t) * D;
    if (t < P) {
      for (int64_t d = threadIdx.x; d < D; d += blockDim.x) out[d] = tokens[(b * T_in + t) * D + d];
      if (threadIdx.x == 0) sizes[b * T_out + t] = 1.0f;
      continue;
    }
    const int64_t m = t - P;
    if (m >= groups[b]) {  // padding of a shorter image
      for (int64_t d = threadIdx.x; d < D; d += blockDim.x) out[d] = from_f<T>(0.0f);
      if (threadIdx.x == 0) sizes[b * T_out + t] = 0.0f;
      continue;
    }
    const int32_t* s = starts + b * (N + 1);
    const int64_t first = s[m], last = s[m + 1];
    const uint64_t* v = sort_vals + b * L;
    const T* src = tokens + (b * T_in + P) * D;
    const float count = static_cast<float>(last - first);
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
      float acc = 0.0f;
      for (int64_t i = first; i < last; ++i) acc += to_f(src[static_cast<int64_t>(v[i] & 0xffffffffu) * D + d]);
      out[d] = from_f<T>(acc / count);
    }
    if (threadIdx.x == 0) sizes[b * T_out + t] = count;
  }
}

template <class T>
void launch_rows(const T* tokens, int64_t B, int64_t N, int64_t P, int64_t D, int64_t M, const Workspace& w,
                 T* merged, float* sizes, cudaStream_t stream) {
  const int64_t rows_per_image = M >= 0 ? P + M : P + N;
  const int64_t rows = B * rows_per_image;
  if (rows == 0) return;  // with D = 0 the sizes are still written
  const int threads = D >= 256 ? 256 : (D > 64 ? 128 : 64);
  const unsigned grid = static_cast<unsigned>(rows < (1 << 30) ? rows : (1 << 30));
  merge_rows<T><<<grid, threads, 0, stream>>>(tokens, B, N, P, D, padded(N), M, rows_per_image, w.sort_vals, w.starts,
                                              w.groups, w.m, merged, sizes);
  check(cudaGetLastError(), "TokenMerge rows");
}

}  // namespace

size_t token_merge_workspace_size(int64_t B, int64_t N) {
  const int64_t L = padded(N);
  return align256(B * L * sizeof(int64_t)) + align256(B * L * sizeof(uint64_t)) + align256(B * N * sizeof(int32_t)) +
         align256(B * (N + 1) * sizeof(int32_t)) + align256(B * sizeof(int32_t)) + align256(sizeof(int64_t));
}

void token_merge_groups(const int64_t* keys, int64_t B, int64_t N, int64_t P, int64_t grid_w, void* workspace,
                        int64_t* length, cudaStream_t stream) {
  if (N >= INT32_MAX) throw std::invalid_argument("TokenMerge: more than 2^31 - 1 patches per image");
  const Workspace w = carve(workspace, B, N);
  const int64_t L = padded(N);
  if (B > 0 && N > 0) {
    const unsigned grid = blocks_for(B * L, kThreads) < 65535u ? blocks_for(B * L, kThreads) : 65535u;
    if (grid_w > 0) {
      cc_init<<<grid, kThreads, 0, stream>>>(w.parent, B * N, N);
      cc_link<<<grid, kThreads, 0, stream>>>(keys, B, N, grid_w, w.parent);
    }
    fill_sort<<<grid, kThreads, 0, stream>>>(keys, w.parent, B, N, L, grid_w > 0, w.sort_keys, w.sort_vals);
    bitonic_sort(w.sort_keys, w.sort_vals, B, L, stream);
  }
  if (B > 0) group_starts<<<static_cast<unsigned>(B), kScanThreads, 0, stream>>>(w.sort_keys, w.sort_vals, N, L, w.starts, w.groups);
  finish_length<<<1, kThreads, 0, stream>>>(w.groups, B, P, w.m, length);
  check(cudaGetLastError(), "TokenMerge groups");
}

void token_merge_rows(const void* tokens, bool half, int64_t B, int64_t N, int64_t P, int64_t D, int64_t M,
                      const void* workspace, void* merged, float* sizes, cudaStream_t stream) {
  const Workspace w = carve(const_cast<void*>(workspace), B, N);
  if (half) {
    launch_rows<__half>(static_cast<const __half*>(tokens), B, N, P, D, M, w, static_cast<__half*>(merged), sizes, stream);
  } else {
    launch_rows<float>(static_cast<const float*>(tokens), B, N, P, D, M, w, static_cast<float*>(merged), sizes, stream);
  }
}

}  // namespace cuda
}  // namespace vwt
