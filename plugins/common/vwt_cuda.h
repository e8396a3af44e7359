// CUDA kernels of the vwt ops, shared by the ONNX Runtime CUDA EP op and the TensorRT plugin.
// Semantics as the CPU kernels (vwt_cpu.h). All work is enqueued on `stream`; only max_label synchronises
// (ONNX Runtime must know the merged length before it allocates the outputs).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace vwt {
namespace cuda {

// labels[B, N] <- features[B, N, F], vocab[V, F]. `workspace` needs word_labels_workspace_size() bytes
// (nullptr: allocated and freed on the stream).
size_t word_labels_workspace_size(int64_t B, int64_t N, int64_t F, int64_t V);
void word_labels(const float* features, const float* vocab, int64_t B, int64_t N, int64_t F, int64_t V,
                 float threshold, int64_t* labels, cudaStream_t stream, void* workspace = nullptr);

// Largest label over `count` labels (synchronises the stream); throws if any label is negative.
int64_t max_label(const int64_t* labels, int64_t count, cudaStream_t stream);

// Per image: groups = max label + 1, written to groups[B] (no synchronisation; for TensorRT's size tensor).
void group_counts(const int64_t* labels, int64_t B, int64_t N, int64_t* groups, cudaStream_t stream);

// For TensorRT, where nothing may synchronise: M = max label + 1 over the batch, written to *m on the device.
void max_groups(const int64_t* labels, int64_t B, int64_t N, int64_t* m, cudaStream_t stream);
// token_merge with M read on the device from *m: launched for the upper bound P+N output tokens; the blocks past
// P+M return at once. Output rows are laid out with stride P+M, as TensorRT expects for a [B, P+M, D] tensor.
void token_merge_dds(const float* tokens, const int64_t* labels, int64_t B, int64_t N, int64_t P, int64_t D,
                     const int64_t* m, float* merged, float* sizes, cudaStream_t stream);
void token_merge_dds_half(const void* tokens, const int64_t* labels, int64_t B, int64_t N, int64_t P, int64_t D,
                          const int64_t* m, void* merged, float* sizes, cudaStream_t stream);

// merged[B, P+M, D], sizes[B, P+M] <- tokens[B, P+N, D], labels[B, N]. Deterministic (no atomics).
void token_merge(const float* tokens, const int64_t* labels, int64_t B, int64_t N, int64_t P, int64_t D, int64_t M,
                 float* merged, float* sizes, cudaStream_t stream);
// The same for IEEE half-precision tokens (bit pattern of __half / Ort::Float16_t).
void token_merge_half(const void* tokens, const int64_t* labels, int64_t B, int64_t N, int64_t P, int64_t D,
                      int64_t M, void* merged, float* sizes, cudaStream_t stream);

}  // namespace cuda
}  // namespace vwt
