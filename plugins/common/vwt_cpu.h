// CPU kernels of the vwt ops. Semantics: vwt_export/vwt/inter.py (word_labels) and vwt/merge.py (token_merge)
// are the executable spec; tests compare this code against them.
//
// Header-only and free of any runtime's API, so the ONNX Runtime op (and anything else) can share it. Work is
// handed to a caller-supplied parallel_for(total, fn(begin, end)).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "vwt_version.h"

namespace vwt {

constexpr float kNormEps = 1e-12f;  // F.normalize's clamp on the norm

// Largest label, after checking every label lies in [0, num_patches).
inline int64_t checked_max_label(const int64_t* labels, int64_t batch, int64_t num_patches) {
  int64_t max_label = -1;
  for (int64_t i = 0; i < batch * num_patches; ++i) {
    const int64_t l = labels[i];
    if (l < 0 || l >= num_patches) {
      throw std::invalid_argument("TokenMerge: label " + std::to_string(l) + " at [" + std::to_string(i / num_patches) +
                                  ", " + std::to_string(i % num_patches) + "] is outside [0, " +
                                  std::to_string(num_patches) + ")");
    }
    max_label = std::max(max_label, l);
  }
  return max_label;
}

namespace detail {

constexpr int64_t kRows = 6;    // patches per micro-tile (6 x 16 accumulators fill 12 AVX registers)
constexpr int64_t kWords = 16;  // words per micro-tile

// Unit words, transposed and packed in blocks of kWords: packed[(v / kWords) * F * kWords + k * kWords + v % kWords]
// (zero-padded past V), so the micro-kernel streams one contiguous [F, kWords] panel per block.
inline std::vector<float> pack_words(const std::vector<float>& unit_words, int64_t F, int64_t V) {
  const int64_t blocks = (V + kWords - 1) / kWords;
  std::vector<float> packed(static_cast<size_t>(blocks * F * kWords), 0.0f);
  for (int64_t v = 0; v < V; ++v)
    for (int64_t k = 0; k < F; ++k) packed[(v / kWords) * F * kWords + k * kWords + v % kWords] = unit_words[v * F + k];
  return packed;
}

// acc[kRows][kWords] = rows[kRows, F] x panel[F, kWords]; the plain version (any x86-64 or other CPU).
inline void micro_kernel_generic(const float* rows, const float* panel, int64_t F, float* acc) {
  float a[kRows][kWords] = {};
  for (int64_t k = 0; k < F; ++k) {
    const float* w = panel + k * kWords;
    for (int64_t r = 0; r < kRows; ++r) {
      const float f = rows[r * F + k];
      for (int64_t v = 0; v < kWords; ++v) a[r][v] += f * w[v];
    }
  }
  std::memcpy(acc, a, sizeof(a));
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define VWT_HAVE_AVX2_KERNEL 1
// The same with AVX2 + FMA: 12 accumulator registers, two panel loads and one broadcast per row and k.
__attribute__((target("avx2,fma"))) inline void micro_kernel_avx2(const float* rows, const float* panel, int64_t F,
                                                                   float* acc) {
  typedef float v8 __attribute__((vector_size(32)));
  v8 a0[kRows] = {}, a1[kRows] = {};
  for (int64_t k = 0; k < F; ++k) {
    v8 w0, w1;
    std::memcpy(&w0, panel + k * kWords, sizeof(v8));
    std::memcpy(&w1, panel + k * kWords + 8, sizeof(v8));
    for (int64_t r = 0; r < kRows; ++r) {
      const float f = rows[r * F + k];
      const v8 fb = {f, f, f, f, f, f, f, f};
      a0[r] += fb * w0;
      a1[r] += fb * w1;
    }
  }
  for (int64_t r = 0; r < kRows; ++r) {
    std::memcpy(acc + r * kWords, &a0[r], sizeof(v8));
    std::memcpy(acc + r * kWords + 8, &a1[r], sizeof(v8));
  }
}
#endif

inline bool cpu_has_avx2_fma() {
#ifdef VWT_HAVE_AVX2_KERNEL
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
#else
  return false;
#endif
}

// Nearest word (smallest 1 - cos, first index on ties) for kRows unit-norm rows (zero-padded past `rows`).
inline void nearest_words(const float* unit_rows, int64_t rows, const float* packed_words, int64_t F, int64_t V,
                          float* best_dist, int64_t* best_word) {
  float acc[kRows * kWords];
  for (int64_t r = 0; r < rows; ++r) {
    best_dist[r] = INFINITY;
    best_word[r] = 0;
  }
  const bool avx2 = cpu_has_avx2_fma();
  for (int64_t v0 = 0; v0 < V; v0 += kWords) {
    const float* panel = packed_words + (v0 / kWords) * F * kWords;
#ifdef VWT_HAVE_AVX2_KERNEL
    if (avx2) micro_kernel_avx2(unit_rows, panel, F, acc); else
#endif
    micro_kernel_generic(unit_rows, panel, F, acc);
    const int64_t vn = std::min(kWords, V - v0);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t v = 0; v < vn; ++v) {
        const float d = 1.0f - acc[r * kWords + v];
        if (d < best_dist[r]) {
          best_dist[r] = d;
          best_word[r] = v0 + v;
        }
      }
    }
  }
}

inline void normalise_row(const float* x, int64_t n, float* out) {
  double ss = 0.0;
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float den = std::max(static_cast<float>(std::sqrt(ss)), kNormEps);
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] / den;
}

}  // namespace detail

// Unit-norm words packed for the micro-kernel. A constant vocabulary is packed once per session.
struct PackedVocab {
  std::vector<float> panels;
  int64_t V = 0, F = 0;
};

inline PackedVocab pack_vocab(const float* vocab, int64_t V, int64_t F) {
  std::vector<float> unit_words(static_cast<size_t>(V * F));
  for (int64_t v = 0; v < V; ++v) detail::normalise_row(vocab + v * F, F, unit_words.data() + v * F);
  return PackedVocab{detail::pack_words(unit_words, F, V), V, F};
}

// labels[B, N] from features[B, N, F] and the packed vocab[V, F]: see vwt::WordLabels in DESIGN.md.
template <class ParallelFor>
void word_labels_cpu(const float* features, const PackedVocab& vocab, int64_t B, int64_t N, float threshold,
                     int64_t* labels, ParallelFor&& parallel_for) {
  const int64_t F = vocab.F, V = vocab.V;
  if (B == 0 || N == 0) return;
  const std::vector<float>& packed = vocab.panels;
  std::vector<float> dist(static_cast<size_t>(B * N));
  std::vector<int64_t> best(static_cast<size_t>(B * N));
  const int64_t rows = B * N, tiles = (rows + detail::kRows - 1) / detail::kRows;
  parallel_for(static_cast<size_t>(tiles), [&](size_t t0, size_t t1) {
    std::vector<float> unit(static_cast<size_t>(detail::kRows * F), 0.0f);
    for (size_t t = t0; t < t1; ++t) {
      const int64_t r0 = static_cast<int64_t>(t) * detail::kRows, rn = std::min(detail::kRows, rows - r0);
      for (int64_t r = 0; r < rn; ++r) detail::normalise_row(features + (r0 + r) * F, F, unit.data() + r * F);
      std::fill(unit.begin() + rn * F, unit.end(), 0.0f);
      detail::nearest_words(unit.data(), rn, packed.data(), F, V, dist.data() + r0, best.data() + r0);
    }
  });
  // keys: matched -> word index; unmatched -> V + rank among the image's unmatched patches; then renumber
  // densely in ascending key order (a stable sort keeps equal keys in raster order, though order within a
  // group does not matter).
  parallel_for(static_cast<size_t>(B), [&](size_t b0, size_t b1) {
    std::vector<int64_t> keys(static_cast<size_t>(N)), order(static_cast<size_t>(N));
    for (size_t b = b0; b < b1; ++b) {
      const int64_t base = static_cast<int64_t>(b) * N;
      int64_t unmatched = 0;
      for (int64_t n = 0; n < N; ++n) keys[n] = dist[base + n] <= threshold ? best[base + n] : V + unmatched++;
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t c) { return keys[a] < keys[c]; });
      int64_t label = -1, previous = -1;
      for (int64_t i = 0; i < N; ++i) {
        const int64_t k = keys[order[i]];
        if (i == 0 || k != previous) ++label;
        previous = k;
        labels[base + order[i]] = label;
      }
    }
  });
}

// merged[B, P+M, D] and sizes[B, P+M] from tokens[B, P+N, D] and labels[B, N]: see vwt::TokenMerge.
// ToFloat / FromFloat convert the token type (float, or a 16-bit float) to and from float accumulators.
template <class T, class ToFloat, class FromFloat, class ParallelFor>
void token_merge_cpu(const T* tokens, const int64_t* labels, int64_t B, int64_t N, int64_t P, int64_t D, int64_t M,
                     T* merged, float* sizes, ToFloat to_float, FromFloat from_float, ParallelFor&& parallel_for) {
  const int64_t T_in = P + N, T_out = P + M;
  parallel_for(static_cast<size_t>(B), [&](size_t b0, size_t b1) {
    std::vector<float> sums(static_cast<size_t>(M * D));
    std::vector<float> counts(static_cast<size_t>(M));
    for (size_t bb = b0; bb < b1; ++bb) {
      const int64_t b = static_cast<int64_t>(bb);
      const T* src = tokens + b * T_in * D;
      T* dst = merged + b * T_out * D;
      std::memcpy(dst, src, static_cast<size_t>(P * D) * sizeof(T));
      for (int64_t p = 0; p < P; ++p) sizes[b * T_out + p] = 1.0f;
      std::fill(sums.begin(), sums.end(), 0.0f);
      std::fill(counts.begin(), counts.end(), 0.0f);
      for (int64_t n = 0; n < N; ++n) {
        const int64_t m = labels[b * N + n];
        const T* x = src + (P + n) * D;
        float* s = sums.data() + m * D;
        for (int64_t d = 0; d < D; ++d) s[d] += to_float(x[d]);
        counts[m] += 1.0f;
      }
      for (int64_t m = 0; m < M; ++m) {
        const float den = std::max(counts[m], 1.0f);
        T* y = dst + (P + m) * D;
        const float* s = sums.data() + m * D;
        for (int64_t d = 0; d < D; ++d) y[d] = from_float(s[d] / den);
        sizes[b * T_out + P + m] = counts[m];
      }
    }
  });
}

}  // namespace vwt
