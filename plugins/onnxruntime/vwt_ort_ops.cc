// ONNX Runtime custom-op library for the vwt ops (domain "vwt", opset 2): vwt::TokenMerge (a CPU kernel, and a
// CUDA EP kernel when built with CUDA) and vwt::BlockMerge (CPU only: under the CUDA EP ONNX Runtime runs it on
// the CPU, copying its inputs across).
//
// Load it with SessionOptions.register_custom_ops_library(path) (Python) or RegisterCustomOpsLibrary (C/C++).
// It does not link against libonnxruntime: the API table comes from the runtime that loads it
// (ORT_API_MANUAL_INIT), and a runtime older than the headers it was built with is refused with a clear
// error instead of crashing. The op declares opset 2 only, so a graph importing vwt opset 1 (WordLabels, and a
// TokenMerge with other inputs and outputs) finds no kernel instead of running with other semantics.
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <exception>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include "vwt_block_merge.h"
#include "vwt_cpu.h"
#ifdef VWT_WITH_CUDA
#include "vwt_cuda.h"
#endif

namespace {

// Runs fn(begin, end) over [0, total) on ONNX Runtime's intra-op thread pool.
struct OrtParallelFor {
  const Ort::KernelContext& ctx;
  template <class Fn>
  void operator()(size_t total, Fn&& fn) const {
    if (total == 0) return;
    struct Job {
      Fn* fn;
    } job{&fn};
    ctx.ParallelFor([](void* data, size_t i) { (*static_cast<Job*>(data)->fn)(i, i + 1); }, total, 0, &job);
  }
};

OrtStatusPtr to_status(const std::exception& e) { return Ort::GetApi().CreateStatus(ORT_INVALID_ARGUMENT, e.what()); }

std::vector<int64_t> shape_of(const Ort::ConstValue& v) { return v.GetTensorTypeAndShapeInfo().GetShape(); }

std::string dims(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

int64_t optional_int(const Ort::ConstKernelInfo& ki, const char* name, int64_t fallback) {
  try {
    return ki.GetAttribute<int64_t>(name);
  } catch (const Ort::Exception&) {
    return fallback;  // attribute absent
  }
}

#ifdef VWT_WITH_CUDA
void cuda_check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string("vwt CUDA ") + what + ": " + cudaGetErrorString(err));
}

// One pinned int64 per thread for reading the merged length back: allocated on a thread's first call, reused
// after (a pageable copy would stage through a driver buffer and cost a second synchronisation).
int64_t* pinned_length_slot() {
  struct Slot {
    int64_t* p = nullptr;
    ~Slot() {
      if (p) cudaFreeHost(p);
    }
  };
  thread_local Slot slot;
  if (slot.p == nullptr) cuda_check(cudaMallocHost(reinterpret_cast<void**>(&slot.p), sizeof(int64_t)), "pinned slot");
  return slot.p;
}

// Scratch from ONNX Runtime's CUDA allocator (its arena: no cudaMalloc in steady state), released when the
// kernel returns; work still queued on the stream may use it, as with ONNX Runtime's own scratch buffers,
// because whatever reuses it next is ordered after it on the same stream.
struct Scratch {
  OrtAllocator* allocator;
  void* p;
  Scratch(OrtAllocator* a, size_t bytes) : allocator(a), p(a->Alloc(a, bytes)) {
    if (p == nullptr) throw std::runtime_error("TokenMerge: ONNX Runtime's CUDA allocator returned no scratch");
  }
  ~Scratch() { allocator->Free(allocator, p); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};
#endif

template <class T>
struct TokenMergeKernel {
  int64_t num_prefix, grid_w;
  bool on_cuda;

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    try {
      Ort::KernelContext ctx(context);
      auto tokens = ctx.GetInput(0), keys = ctx.GetInput(1);
      const auto ts = shape_of(tokens), ks = shape_of(keys);
      if (ts.size() != 3 || ks.size() != 2 || ts[0] != ks[0]) {
        throw std::invalid_argument("TokenMerge: expected tokens [B, P+N, D] and keys [B, N], got " + dims(ts) +
                                    " and " + dims(ks));
      }
      const int64_t B = ts[0], N = ks[1], D = ts[2], P = num_prefix;
      vwt::check_token_merge_shapes(B, ts[1], N, P, grid_w);
      auto length = ctx.GetOutput(2, std::vector<int64_t>{});
      if (on_cuda) return compute_cuda(ctx, tokens, keys, length, B, N, P, D);
      std::vector<int64_t> labels(static_cast<size_t>(B * N)), groups(static_cast<size_t>(B));
      const int64_t M = vwt::token_merge_groups_cpu(keys.GetTensorData<int64_t>(), B, N, grid_w, labels.data(),
                                                    groups.data(), OrtParallelFor{ctx});
      auto merged = ctx.GetOutput(0, {B, P + M, D});
      auto sizes = ctx.GetOutput(1, {B, P + M});
      *length.GetTensorMutableData<int64_t>() = P + M;
      vwt::token_merge_cpu(tokens.GetTensorData<T>(), labels.data(), groups.data(), B, N, P, D, M,
                           merged.GetTensorMutableData<T>(), sizes.GetTensorMutableData<float>(), ToFloat{}, FromFloat{},
                           OrtParallelFor{ctx});
      return nullptr;
    } catch (const std::exception& e) {
      return to_status(e);
    }
  }

  // UNVERIFIED (no GPU here): phase 1 on the device, the length read back (the call's one host
  // synchronisation: ONNX Runtime allocates outputs by shape), then the rows.
  OrtStatusPtr compute_cuda(Ort::KernelContext& ctx, Ort::ConstValue& tokens, Ort::ConstValue& keys,
                            Ort::UnownedValue& length, int64_t B, int64_t N, int64_t P, int64_t D) {
#ifdef VWT_WITH_CUDA
    auto stream = static_cast<cudaStream_t>(ctx.GetGPUComputeStream());
    int device = 0;
    cuda_check(cudaGetDevice(&device), "device");
    Ort::MemoryInfo cuda_memory("Cuda", OrtArenaAllocator, device, OrtMemTypeDefault);
    const OrtMemoryInfo* cuda_memory_info = cuda_memory;
    Scratch scratch(ctx.GetAllocator(*cuda_memory_info), vwt::cuda::token_merge_workspace_size(B, N));
    int64_t* length_device = length.GetTensorMutableData<int64_t>();
    vwt::cuda::token_merge_groups(keys.GetTensorData<int64_t>(), B, N, P, grid_w, scratch.p, length_device, stream);
    int64_t* host = pinned_length_slot();
    cuda_check(cudaMemcpyAsync(host, length_device, sizeof(int64_t), cudaMemcpyDeviceToHost, stream), "length copy");
    cuda_check(cudaStreamSynchronize(stream), "synchronise");
    const int64_t M = *host - P;
    if (M < 0 || M > N) throw std::runtime_error("TokenMerge: CUDA kernel produced length " + std::to_string(*host));
    auto merged = ctx.GetOutput(0, {B, P + M, D});
    auto sizes = ctx.GetOutput(1, {B, P + M});
    vwt::cuda::token_merge_rows(tokens.GetTensorData<T>(), !std::is_same_v<T, float>, B, N, P, D, M, scratch.p,
                                merged.GetTensorMutableData<T>(), sizes.GetTensorMutableData<float>(), stream);
    return nullptr;
#else
    throw std::runtime_error("TokenMerge: this library was built without CUDA");
#endif
  }

  // functors (not function pointers) so that the conversions inline into the merge loops
  struct ToFloat {
    float operator()(const T& x) const {
      if constexpr (std::is_same_v<T, float>) return x; else return x.ToFloat();
    }
  };
  struct FromFloat {
    T operator()(float x) const {
      if constexpr (std::is_same_v<T, float>) return x; else return T(x);
    }
  };
};

template <class T>
struct TokenMergeOp : Ort::CustomOpBase<TokenMergeOp<T>, TokenMergeKernel<T>, true> {
  explicit TokenMergeOp(const char* provider) : provider_(provider) {
    this->start_ver_ = VWT_OPS_OPSET;  // opset 2 only: a v1 node is refused, never run with v2 semantics
    this->end_ver_ = VWT_OPS_OPSET;
  }
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    try {
      Ort::ConstKernelInfo ki(info);
      const int64_t p = ki.GetAttribute<int64_t>("num_prefix"), g = optional_int(ki, "grid_w", 0);
      if (p < 0 || g < 0) {
        throw std::invalid_argument("TokenMerge: num_prefix (" + std::to_string(p) + ") and grid_w (" +
                                    std::to_string(g) + ") must be >= 0");
      }
      *kernel = new TokenMergeKernel<T>{p, g, std::string(provider_) == "CUDAExecutionProvider"};
      return nullptr;
    } catch (const std::exception& e) {
      return to_status(e);
    }
  }
  const char* GetName() const { return "TokenMerge"; }
  const char* GetExecutionProviderType() const { return provider_; }
  size_t GetInputTypeCount() const { return 2; }
  ONNXTensorElementDataType GetInputType(size_t i) const {
    return i == 0 ? element_type() : ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
  }
  size_t GetOutputTypeCount() const { return 3; }
  ONNXTensorElementDataType GetOutputType(size_t i) const {
    return i == 0 ? element_type() : (i == 1 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64);
  }

 private:
  static ONNXTensorElementDataType element_type() {
    return std::is_same_v<T, float> ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
  }
  const char* provider_;
};

struct BlockMergeKernel {
  int64_t num_prefix, r, r_den;

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    try {
      Ort::KernelContext ctx(context);
      auto tokens = ctx.GetInput(0), metric = ctx.GetInput(1), sizes = ctx.GetInput(2);
      const auto ts = shape_of(tokens), ms = shape_of(metric), ss = shape_of(sizes);
      if (ts.size() != 3 || ms.size() != 3 || ss.size() != 2 || ms[0] != ts[0] || ms[1] != ts[1] || ss[0] != ts[0] ||
          ss[1] != ts[1]) {
        throw std::invalid_argument("BlockMerge: expected tokens [B, T, D], metric [B, T, C] and sizes [B, T], got " +
                                    dims(ts) + ", " + dims(ms) + " and " + dims(ss));
      }
      const int64_t B = ts[0], T = ts[1], D = ts[2], C = ms[2];
      const int64_t T_out = vwt::block_merge_out_tokens(T, num_prefix, r, r_den);
      auto merged = ctx.GetOutput(0, {B, T_out, D});
      auto merged_sizes = ctx.GetOutput(1, {B, T_out});
      vwt::block_merge_cpu(tokens.GetTensorData<float>(), metric.GetTensorData<float>(), sizes.GetTensorData<float>(),
                           B, T, D, C, num_prefix, r, r_den, merged.GetTensorMutableData<float>(),
                           merged_sizes.GetTensorMutableData<float>(), OrtParallelFor{ctx});
      return nullptr;
    } catch (const std::exception& e) {
      return to_status(e);
    }
  }
};

struct BlockMergeOp : Ort::CustomOpBase<BlockMergeOp, BlockMergeKernel, true> {
  BlockMergeOp() {
    this->start_ver_ = VWT_OPS_OPSET;
    this->end_ver_ = VWT_OPS_OPSET;
  }
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    try {
      Ort::ConstKernelInfo ki(info);
      const int64_t p = ki.GetAttribute<int64_t>("num_prefix"), r = ki.GetAttribute<int64_t>("r"),
                    r_den = optional_int(ki, "r_den", 0);
      vwt::check_block_merge_attributes(p, r, r_den);
      *kernel = new BlockMergeKernel{p, r, r_den};
      return nullptr;
    } catch (const std::exception& e) {
      return to_status(e);
    }
  }
  const char* GetName() const { return "BlockMerge"; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return 3; }
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  size_t GetOutputTypeCount() const { return 2; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

// The op objects must outlive every session that uses them.
BlockMergeOp block_merge_cpu_op;
TokenMergeOp<float> token_merge_cpu_op("CPUExecutionProvider");
TokenMergeOp<Ort::Float16_t> token_merge_cpu_op_f16("CPUExecutionProvider");
#ifdef VWT_WITH_CUDA
TokenMergeOp<float> token_merge_cuda_op("CUDAExecutionProvider");
TokenMergeOp<Ort::Float16_t> token_merge_cuda_op_f16("CUDAExecutionProvider");
#endif

std::once_flag domain_once;
Ort::CustomOpDomain* domain = nullptr;

}  // namespace

extern "C" {

// The library's own version (vwt_version.h), read by vwt_export/plugins.py before registering.
__attribute__((visibility("default"))) const char* vwt_library_version() { return VWT_LIBRARY_VERSION; }

// The vwt op domain version the library implements.
__attribute__((visibility("default"))) int vwt_ops_opset() { return VWT_OPS_OPSET; }

__attribute__((visibility("default"))) OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options,
                                                                                const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    // This runtime is older than our headers; use the oldest API table only to say so.
    const OrtApi* oldest = api_base->GetApi(1);
    const std::string msg = std::string("vwt op library needs ONNX Runtime API version ") +
                            std::to_string(ORT_API_VERSION) + " or newer, but the loaded runtime is " +
                            api_base->GetVersionString() + "; upgrade onnxruntime or rebuild the library";
    return oldest ? oldest->CreateStatus(ORT_FAIL, msg.c_str()) : nullptr;
  }
  Ort::InitApi(api);
  try {
    std::call_once(domain_once, [] {
      domain = new Ort::CustomOpDomain(VWT_OPS_DOMAIN);
      domain->Add(&token_merge_cpu_op);
      domain->Add(&token_merge_cpu_op_f16);
      domain->Add(&block_merge_cpu_op);
#ifdef VWT_WITH_CUDA
      domain->Add(&token_merge_cuda_op);
      domain->Add(&token_merge_cuda_op_f16);
#endif
    });
    Ort::UnownedSessionOptions(options).Add(*domain);
    return nullptr;
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
}

}  // extern "C"
