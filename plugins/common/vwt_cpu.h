// CPU kernel of vwt::TokenMerge (opset 2). Semantics: vwt_export/vwt/merge.py (token_merge) and
// vwt_export/vwt/inter.py (dense_relabel) are the executable spec; tests compare this code against them.
//
// Header-only and free of any runtime's API, so the ONNX Runtime op (and anything else) can share it. Work is
// handed to a caller-supplied parallel_for(total, fn(begin, end)).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "vwt_version.h"

namespace vwt {

// One clear line for every malformed call (the same checks as the CUDA path makes on the host).
inline void check_token_merge_shapes(int64_t B, int64_t T, int64_t N, int64_t P, int64_t grid_w) {
  if (P < 0 || grid_w < 0) {
    throw std::invalid_argument("TokenMerge: num_prefix (" + std::to_string(P) + ") and grid_w (" +
                                std::to_string(grid_w) + ") must be >= 0");
  }
  if (T != P + N) {
    throw std::invalid_argument("TokenMerge: tokens hold " + std::to_string(T) + " tokens per image but num_prefix " +
                                std::to_string(P) + " + keys' " + std::to_string(N) + " patches = " +
                                std::to_string(P + N));
  }
  if (grid_w > 0 && N % grid_w != 0) {
    throw std::invalid_argument("TokenMerge: " + std::to_string(N) + " patches do not fill a grid " +
                                std::to_string(grid_w) + " wide (N must be a multiple of grid_w)");
  }
  (void)B;
}

namespace detail {

// Union-find whose root is always the smallest index of its set: linking the larger root under the smaller
// one keeps parent[x] <= x, so a component's root is its first patch in raster order.
inline int64_t find_root(std::vector<int64_t>& parent, int64_t x) {
  while (parent[x] != x) {
    parent[x] = parent[parent[x]];  // path halving
    x = parent[x];
  }
  return x;
}

inline void unite(std::vector<int64_t>& parent, int64_t a, int64_t b) {
  a = find_root(parent, a);
  b = find_root(parent, b);
  if (a != b) parent[std::max(a, b)] = std::min(a, b);
}

}  // namespace detail

// Scratch of one worker, reused across images so the per-image work allocates nothing after the first.
struct GroupScratch {
  std::vector<int64_t> order, parent, root_label;
};

// Dense group labels of one image: labels[n] in [0, G), returns G (<= N by construction, whatever the keys).
// grid_w = 0: one group per distinct key, numbered in ascending key order (sort, O(N log N)).
// grid_w > 0: each key's patches split into 4-connected components on a grid grid_w wide, numbered in
// (key, first patch of the component) order.
inline int64_t dense_groups(const int64_t* keys, int64_t N, int64_t grid_w, int64_t* labels, GroupScratch& s) {
  if (N == 0) return 0;
  std::vector<int64_t>& order = s.order;
  order.resize(static_cast<size_t>(N));
  if (grid_w == 0) {
    std::iota(order.begin(), order.end(), int64_t{0});
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return keys[a] < keys[b] || (keys[a] == keys[b] && a < b); });
    int64_t label = -1;
    for (int64_t i = 0; i < N; ++i) {
      if (i == 0 || keys[order[i]] != keys[order[i - 1]]) ++label;
      labels[order[i]] = label;
    }
    return label + 1;
  }
  std::vector<int64_t>& parent = s.parent;
  parent.resize(static_cast<size_t>(N));
  std::iota(parent.begin(), parent.end(), int64_t{0});
  for (int64_t n = 0; n < N; ++n) {
    if (n % grid_w != 0 && keys[n - 1] == keys[n]) detail::unite(parent, n - 1, n);
    if (n >= grid_w && keys[n - grid_w] == keys[n]) detail::unite(parent, n - grid_w, n);
  }
  int64_t roots = 0;
  for (int64_t n = 0; n < N; ++n) {
    parent[n] = detail::find_root(parent, n);
    if (parent[n] == n) order[roots++] = n;
  }
  std::sort(order.begin(), order.begin() + roots,
            [&](int64_t a, int64_t b) { return keys[a] < keys[b] || (keys[a] == keys[b] && a < b); });
  std::vector<int64_t>& root_label = s.root_label;
  root_label.resize(static_cast<size_t>(N));
  for (int64_t i = 0; i < roots; ++i) root_label[order[i]] = i;
  for (int64_t n = 0; n < N; ++n) labels[n] = root_label[parent[n]];
  return roots;
}

// Phase 1 of TokenMerge: labels[B, N] and groups[B] from keys[B, N]. Returns M = max_b groups[b] (0 when B = 0).
template <class ParallelFor>
int64_t token_merge_groups_cpu(const int64_t* keys, int64_t B, int64_t N, int64_t grid_w, int64_t* labels,
                               int64_t* groups, ParallelFor&& parallel_for) {
  parallel_for(static_cast<size_t>(B), [&](size_t b0, size_t b1) {
    GroupScratch scratch;
    for (size_t b = b0; b < b1; ++b) groups[b] = dense_groups(keys + b * N, N, grid_w, labels + b * N, scratch);
  });
  int64_t M = 0;
  for (int64_t b = 0; b < B; ++b) M = std::max(M, groups[b]);
  return M;
}

// Phase 2: merged[B, P+M, D] and sizes[B, P+M] from tokens[B, P+N, D] and the labels of phase 1. Prefix tokens
// pass through with size 1; group m is the mean of its members (float accumulators) with size = member count;
// rows past an image's own groups are zeros of size 0. ToFloat / FromFloat convert the token type.
template <class T, class ToFloat, class FromFloat, class ParallelFor>
void token_merge_cpu(const T* tokens, const int64_t* labels, const int64_t* groups, int64_t B, int64_t N, int64_t P,
                     int64_t D, int64_t M, T* merged, float* sizes, ToFloat to_float, FromFloat from_float,
                     ParallelFor&& parallel_for) {
  const int64_t T_in = P + N, T_out = P + M;
  parallel_for(static_cast<size_t>(B), [&](size_t b0, size_t b1) {
    std::vector<float> sums(static_cast<size_t>(M * D));
    std::vector<float> counts(static_cast<size_t>(M));
    for (size_t bb = b0; bb < b1; ++bb) {
      const int64_t b = static_cast<int64_t>(bb), G = groups[b];
      const T* src = tokens + b * T_in * D;
      T* dst = merged + b * T_out * D;
      float* sz = sizes + b * T_out;
      std::memcpy(dst, src, static_cast<size_t>(P * D) * sizeof(T));
      std::fill(sz, sz + P, 1.0f);
      std::fill(sums.begin(), sums.begin() + G * D, 0.0f);
      std::fill(counts.begin(), counts.begin() + G, 0.0f);
      for (int64_t n = 0; n < N; ++n) {
        const int64_t m = labels[b * N + n];
        const T* x = src + (P + n) * D;
        float* s = sums.data() + m * D;
        for (int64_t d = 0; d < D; ++d) s[d] += to_float(x[d]);
        counts[m] += 1.0f;
      }
      for (int64_t m = 0; m < G; ++m) {
        const float count = counts[m];  // >= 1 member per group by construction
        T* y = dst + (P + m) * D;
        const float* s = sums.data() + m * D;
        for (int64_t d = 0; d < D; ++d) y[d] = from_float(s[d] / count);  // divide, as the reference does
        sz[P + m] = counts[m];
      }
      for (int64_t m = G; m < M; ++m) {
        T* y = dst + (P + m) * D;
        for (int64_t d = 0; d < D; ++d) y[d] = from_float(0.0f);
        sz[P + m] = 0.0f;
      }
    }
  });
}

}  // namespace vwt
