// CPU kernel of vwt::BlockMerge (opset 2): one in-block merge of the hybrid method. Semantics:
// vwt_export/hybrid/merge.py (merge_step) is the executable spec; tests compare this code against it.
//
// Header-only and free of any runtime's API, like vwt_cpu.h. Work is handed to a caller-supplied
// parallel_for(total, fn(begin, end)): the matching over tokens (most of the work, even for one image), the
// merge over images.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace vwt {

// Tokens one step removes from a sequence of `length` real tokens, prefix included (merge.py `removed`): the
// count r (r_den = 0) or the fraction r / r_den of the non-prefix tokens, at most half of them.
inline int64_t block_merge_removed(int64_t length, int64_t P, int64_t r, int64_t r_den) {
  const int64_t n = std::max<int64_t>(length - P, 0);
  const int64_t want = r_den == 0 ? r : n * r / r_den;
  return std::max<int64_t>(0, std::min(want, n / 2));
}

inline constexpr int64_t kMaxRuleDenominator = int64_t{1} << 31;  // keeps n * r within int64 for any n < 2^32

inline void check_block_merge_attributes(int64_t P, int64_t r, int64_t r_den) {
  if (P < 0 || r < 0 || r_den < 0) {
    throw std::invalid_argument("BlockMerge: num_prefix (" + std::to_string(P) + "), r (" + std::to_string(r) +
                                ") and r_den (" + std::to_string(r_den) + ") must be >= 0");
  }
  if (r_den > kMaxRuleDenominator) {
    throw std::invalid_argument("BlockMerge: r_den " + std::to_string(r_den) + " is above 2^31");
  }
  if (r_den > 0 && 2 * r > r_den) {
    throw std::invalid_argument("BlockMerge: the fraction r / r_den = " + std::to_string(r) + " / " +
                                std::to_string(r_den) + " is above 1/2");
  }
}

// T' = T - removed(T), the output's tokens per image, after the checks every call makes (a runtime sizes its
// outputs with it before block_merge_cpu runs).
inline int64_t block_merge_out_tokens(int64_t T, int64_t P, int64_t r, int64_t r_den) {
  check_block_merge_attributes(P, r, r_den);
  if (T < P) {
    throw std::invalid_argument("BlockMerge: " + std::to_string(T) + " tokens per image, fewer than num_prefix " +
                                std::to_string(P));
  }
  return T - block_merge_removed(T, P, r, r_den);
}

// Scratch of one worker, reused across images.
struct BlockMergeScratch {
  std::vector<float> acc, row;
  std::vector<int64_t> order;
  std::vector<char> merged;
};

namespace detail {

// Eight partial sums: the compiler vectorises them (a single running sum must stay in order, scalar).
inline float dot(const float* a, const float* b, int64_t n) {
  float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    for (int k = 0; k < 8; ++k) part[k] += a[c + k] * b[c + k];
  }
  float sum = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
  for (; c < n; ++c) sum += a[c] * b[c];
  return sum;
}

}  // namespace detail

// tokens[B, T, D], metric[B, T, C], sizes[B, T] -> merged[B, T_out, D], merged_sizes[B, T_out] with
// T_out = T - block_merge_removed(T). Per image (L real tokens, size > 0): A = even positions, B = odd ones;
// each real non-prefix A token's partner is the real non-prefix B token of highest cosine (ties: the lowest);
// the removed(L) A tokens with the highest such scores (ties: the lowest) are summed, size-weighted, into
// their partners. Output: [prefix][unmerged real A][real B][pads], each in input order (an image that merges
// nothing keeps its order), tokens divided by their sizes; pads come out as zero tokens of size 0. A step that removes nothing copies its input (pads
// zeroed).
template <class ParallelFor>
void block_merge_cpu(const float* tokens, const float* metric, const float* sizes, int64_t B, int64_t T, int64_t D,
                     int64_t C, int64_t P, int64_t r, int64_t r_den, float* merged, float* merged_sizes,
                     ParallelFor&& parallel_for) {
  const int64_t T_out = block_merge_out_tokens(T, P, r, r_den);
  if (T_out == T) {
    std::memcpy(merged, tokens, static_cast<size_t>(B * T * D) * sizeof(float));
    std::memcpy(merged_sizes, sizes, static_cast<size_t>(B * T) * sizeof(float));
    for (int64_t t = 0; t < B * T; ++t) {  // pads as zero tokens, as everywhere else (and as the portable body)
      if (sizes[t] <= 0.0f) std::fill(merged + t * D, merged + (t + 1) * D, 0.0f);
    }
    return;
  }
  const int64_t Ta = (T + 1) / 2, Tb = T / 2;
  const float minus_inf = -std::numeric_limits<float>::infinity();
  auto takes_part = [&](int64_t b, int64_t t) { return t >= P && sizes[b * T + t] > 0.0f; };  // no prefix, no pad
  std::vector<int64_t> r_img(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    int64_t L = 0;
    for (int64_t t = 0; t < T; ++t) L += sizes[b * T + t] > 0.0f;  // a NaN size counts as a pad
    r_img[b] = block_merge_removed(L, P, r, r_den);
  }

  // the matching, in parallel over tokens even for one image (it is most of the work): unit metric vectors
  // (divided by their norm, as the reference), then each A token's best partner
  std::vector<float> unit(static_cast<size_t>(B * T * C));
  parallel_for(static_cast<size_t>(B * T), [&](size_t k0, size_t k1) {
    for (size_t k = k0; k < k1; ++k) {
      const int64_t b = static_cast<int64_t>(k) / T, t = static_cast<int64_t>(k) % T;
      if (r_img[b] == 0 || !takes_part(b, t)) continue;
      const float* v = metric + static_cast<int64_t>(k) * C;
      const float norm = std::sqrt(detail::dot(v, v, C));
      float* u = unit.data() + static_cast<int64_t>(k) * C;
      for (int64_t c = 0; c < C; ++c) u[c] = v[c] / norm;
    }
  });
  std::vector<float> best_score(static_cast<size_t>(B * Ta), minus_inf);
  std::vector<int64_t> best_partner(static_cast<size_t>(B * Ta), 0);
  parallel_for(static_cast<size_t>(B * Ta), [&](size_t k0, size_t k1) {
    for (size_t k = k0; k < k1; ++k) {
      const int64_t b = static_cast<int64_t>(k) / Ta, i = static_cast<int64_t>(k) % Ta;
      if (r_img[b] == 0 || !takes_part(b, 2 * i)) continue;
      const float* a = unit.data() + (b * T + 2 * i) * C;
      float best = minus_inf;
      int64_t partner = 0;
      for (int64_t j = 0; j < Tb; ++j) {
        if (!takes_part(b, 2 * j + 1)) continue;
        const float score = detail::dot(a, unit.data() + (b * T + 2 * j + 1) * C, C);
        if (score > best) {  // ties: the lowest j; a NaN score is never chosen
          best = score;
          partner = j;
        }
      }
      best_score[k] = best;
      best_partner[k] = partner;
    }
  });

  parallel_for(static_cast<size_t>(B), [&](size_t b0, size_t b1) {
    BlockMergeScratch s;
    s.order.resize(static_cast<size_t>(Ta));
    s.merged.resize(static_cast<size_t>(Ta));
    s.acc.resize(static_cast<size_t>(Tb * (D + 1)));
    s.row.resize(static_cast<size_t>(D));
    for (size_t bb = b0; bb < b1; ++bb) {
      const int64_t b = static_cast<int64_t>(bb);
      const float* x = tokens + b * T * D;
      const float* sz = sizes + b * T;
      float* y = merged + b * T_out * D;
      float* ysz = merged_sizes + b * T_out;
      const float* best = best_score.data() + b * Ta;
      const int64_t* partner = best_partner.data() + b * Ta;
      auto real = [&](int64_t t) { return sz[t] > 0.0f; };  // false for pads (and a NaN size)
      const int64_t r_b = r_img[b];

      std::fill(s.merged.begin(), s.merged.end(), 0);
      if (r_b > 0) {
        // the r_b highest scores merge (a stable sort: ties go to the lower index). Real A tokens outnumber r_b
        // and score above -inf, so the candidates are only ever they; keeping to them also keeps a degenerate
        // input (a NaN or zero metric row) from merging a prefix token and overrunning the output
        int64_t candidates = 0;
        for (int64_t i = 0; i < Ta; ++i) {
          if (best[i] > minus_inf) s.order[candidates++] = i;
        }
        std::stable_sort(s.order.begin(), s.order.begin() + candidates,
                         [&](int64_t p, int64_t q) { return best[p] > best[q]; });
        for (int64_t k = 0; k < std::min(r_b, candidates); ++k) s.merged[s.order[k]] = 1;
      }

      // size-weighted sums of the B tokens and the A tokens merged into them
      for (int64_t j = 0; j < Tb; ++j) {
        const int64_t t = 2 * j + 1;
        float* acc = s.acc.data() + j * (D + 1);
        for (int64_t d = 0; d < D; ++d) acc[d] = x[t * D + d] * sz[t];
        acc[D] = sz[t];
      }
      int64_t n_a = 0, n_b = 0;
      for (int64_t i = 0; i < Ta; ++i) {
        const int64_t t = 2 * i;
        if (s.merged[i]) {
          float* acc = s.acc.data() + partner[i] * (D + 1);
          for (int64_t d = 0; d < D; ++d) acc[d] += x[t * D + d] * sz[t];
          acc[D] += sz[t];
        } else if (takes_part(b, t)) {
          ++n_a;
        }
      }
      for (int64_t j = 0; j < Tb; ++j) n_b += takes_part(b, 2 * j + 1);

      // the new order
      auto write = [&](int64_t slot, const float* weighted, float size) {
        if (slot >= T_out) return;  // never for valid input (every real token has a slot); memory-safe for any
        const float den = std::max(size, 1.0f);
        for (int64_t d = 0; d < D; ++d) y[slot * D + d] = weighted[d] / den;
        ysz[slot] = size;
      };
      float* row = s.row.data();
      int64_t next_a = P, next_b = P + n_a, next_pad = P + n_a + n_b;
      for (int64_t t = 0; t < T; ++t) {
        const bool pad = !real(t);
        if (r_b == 0) {  // the image merges nothing: its order, as alone (its L <= T_out real tokens come first)
          if (t >= T_out) continue;
          if (pad) {
            std::fill(y + t * D, y + (t + 1) * D, 0.0f);
            ysz[t] = 0.0f;
          } else {
            for (int64_t d = 0; d < D; ++d) row[d] = x[t * D + d] * sz[t];
            write(t, row, sz[t]);
          }
        } else if (t < P) {
          for (int64_t d = 0; d < D; ++d) row[d] = x[t * D + d] * sz[t];
          write(t, row, sz[t]);
        } else if (pad) {
          if (next_pad < T_out) {
            std::fill(y + next_pad * D, y + (next_pad + 1) * D, 0.0f);
            ysz[next_pad] = 0.0f;
          }
          ++next_pad;
        } else if (t % 2 == 1) {
          write(next_b++, s.acc.data() + (t / 2) * (D + 1), s.acc[(t / 2) * (D + 1) + D]);
        } else if (!s.merged[t / 2]) {
          for (int64_t d = 0; d < D; ++d) row[d] = x[t * D + d] * sz[t];
          write(next_a++, row, sz[t]);
        }
      }
    }
  });
}

}  // namespace vwt
