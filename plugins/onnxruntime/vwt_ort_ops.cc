// ONNX Runtime custom-op library for the vwt ops: CPU kernels (and CUDA EP kernels when built with CUDA).
//
// Load it with SessionOptions.register_custom_ops_library(path) (Python) or RegisterCustomOpsLibrary (C/C++).
// It does not link against libonnxruntime: the API table comes from the runtime that loads it
// (ORT_API_MANUAL_INIT), and a runtime older than the headers it was built with is refused with a clear
// error instead of crashing.
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <exception>
#include <type_traits>
#include <mutex>
#include <string>
#include <vector>

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

OrtStatusPtr to_status(const std::exception& e) {
  return Ort::GetApi().CreateStatus(ORT_INVALID_ARGUMENT, e.what());
}

std::vector<int64_t> shape_of(const Ort::ConstValue& v) { return v.GetTensorTypeAndShapeInfo().GetShape(); }

std::string dims(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// ---- WordLabels ------------------------------------------------------------------------------------------

struct WordLabelsKernel {
  float threshold;
  bool on_cuda;
  vwt::PackedVocab constant_vocab;  // packed at session creation when the vocabulary is an initializer

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    try {
      Ort::KernelContext ctx(context);
      auto features = ctx.GetInput(0), vocab = ctx.GetInput(1);
      const auto fs = shape_of(features), vs = shape_of(vocab);
      if (fs.size() != 3 || vs.size() != 2 || fs[2] != vs[1] || vs[0] < 1) {
        throw std::invalid_argument("WordLabels: expected features [B, N, F] and vocab [V, F] with V >= 1, got " +
                                    dims(fs) + " and " + dims(vs));
      }
      auto labels = ctx.GetOutput(0, {fs[0], fs[1]});
      if (on_cuda) {
#ifdef VWT_WITH_CUDA
        vwt::cuda::word_labels(features.GetTensorData<float>(), vocab.GetTensorData<float>(), fs[0], fs[1], fs[2],
                               vs[0], threshold, labels.GetTensorMutableData<int64_t>(),
                               static_cast<cudaStream_t>(ctx.GetGPUComputeStream()));
#endif
        return nullptr;
      }
      const bool prepacked = constant_vocab.V == vs[0] && constant_vocab.F == vs[1];
      vwt::PackedVocab per_call;
      if (!prepacked) per_call = vwt::pack_vocab(vocab.GetTensorData<float>(), vs[0], vs[1]);
      vwt::word_labels_cpu(features.GetTensorData<float>(), prepacked ? constant_vocab : per_call, fs[0], fs[1],
                           threshold, labels.GetTensorMutableData<int64_t>(), OrtParallelFor{ctx});
      return nullptr;
    } catch (const std::exception& e) {
      return to_status(e);
    }
  }
};

struct WordLabelsOp : Ort::CustomOpBase<WordLabelsOp, WordLabelsKernel, true> {
  explicit WordLabelsOp(const char* provider) : provider_(provider) {}
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    try {
      Ort::ConstKernelInfo ki(info);
      auto* k = new WordLabelsKernel{ki.GetAttribute<float>("threshold"), std::string(provider_) == "CUDAExecutionProvider", {}};
      int is_constant = 0;
      Ort::ConstValue vocab = ki.GetTensorConstantInput(1, &is_constant);
      if (is_constant && !k->on_cuda) {
        const auto vs = shape_of(vocab);
        if (vs.size() == 2 && vs[0] >= 1) k->constant_vocab = vwt::pack_vocab(vocab.GetTensorData<float>(), vs[0], vs[1]);
      }
      *kernel = k;
      return nullptr;
    } catch (const std::exception& e) {
      return to_status(e);
    }
  }
  const char* GetName() const { return "WordLabels"; }
  const char* GetExecutionProviderType() const { return provider_; }
  size_t GetInputTypeCount() const { return 2; }
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64; }

 private:
  const char* provider_;
};

// ---- TokenMerge ------------------------------------------------------------------------------------------

template <class T>
struct TokenMergeKernel {
  int64_t num_prefix;
  bool on_cuda;

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    try {
      Ort::KernelContext ctx(context);
      auto tokens = ctx.GetInput(0), labels = ctx.GetInput(1);
      const auto ts = shape_of(tokens), ls = shape_of(labels);
      if (ts.size() != 3 || ls.size() != 2 || ts[0] != ls[0] || num_prefix < 0 || ts[1] != num_prefix + ls[1]) {
        throw std::invalid_argument("TokenMerge: expected tokens [B, P+N, D] and labels [B, N] with P = " +
                                    std::to_string(num_prefix) + ", got " + dims(ts) + " and " + dims(ls));
      }
      const int64_t B = ts[0], N = ls[1], D = ts[2], P = num_prefix;
      if (on_cuda) {
#ifdef VWT_WITH_CUDA
        auto stream = static_cast<cudaStream_t>(ctx.GetGPUComputeStream());
        // The merged length is data-dependent: ONNX Runtime allocates outputs on request, so read it back.
        const int64_t M = vwt::cuda::max_label(labels.GetTensorData<int64_t>(), B * N, stream) + 1;
        if (M > N) throw std::invalid_argument("TokenMerge: a label is outside [0, N)");
        auto merged = ctx.GetOutput(0, {B, P + M, D});
        auto sizes = ctx.GetOutput(1, {B, P + M});
        if constexpr (std::is_same_v<T, float>) {
          vwt::cuda::token_merge(tokens.GetTensorData<float>(), labels.GetTensorData<int64_t>(), B, N, P, D, M,
                                 merged.GetTensorMutableData<float>(), sizes.GetTensorMutableData<float>(), stream);
        } else {
          vwt::cuda::token_merge_half(tokens.GetTensorData<T>(), labels.GetTensorData<int64_t>(), B, N, P, D, M,
                                      merged.GetTensorMutableData<T>(), sizes.GetTensorMutableData<float>(), stream);
        }
#endif
        return nullptr;
      }
      const int64_t M = (B * N == 0) ? 0 : vwt::checked_max_label(labels.GetTensorData<int64_t>(), B, N) + 1;
      auto merged = ctx.GetOutput(0, {B, P + M, D});
      auto sizes = ctx.GetOutput(1, {B, P + M});
      vwt::token_merge_cpu(tokens.GetTensorData<T>(), labels.GetTensorData<int64_t>(), B, N, P, D, M,
                           merged.GetTensorMutableData<T>(), sizes.GetTensorMutableData<float>(), ToFloat{},
                           FromFloat{}, OrtParallelFor{ctx});
      return nullptr;
    } catch (const std::exception& e) {
      return to_status(e);
    }
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
  explicit TokenMergeOp(const char* provider) : provider_(provider) {}
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    try {
      const int64_t p = Ort::ConstKernelInfo(info).GetAttribute<int64_t>("num_prefix");
      *kernel = new TokenMergeKernel<T>{p, std::string(provider_) == "CUDAExecutionProvider"};
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
  size_t GetOutputTypeCount() const { return 2; }
  ONNXTensorElementDataType GetOutputType(size_t i) const {
    return i == 0 ? element_type() : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }

 private:
  static ONNXTensorElementDataType element_type() {
    return std::is_same_v<T, float> ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
  }
  const char* provider_;
};

// The op objects must outlive every session that uses them.
WordLabelsOp word_labels_cpu_op("CPUExecutionProvider");
TokenMergeOp<float> token_merge_cpu_op("CPUExecutionProvider");
TokenMergeOp<Ort::Float16_t> token_merge_cpu_op_f16("CPUExecutionProvider");
#ifdef VWT_WITH_CUDA
WordLabelsOp word_labels_cuda_op("CUDAExecutionProvider");
TokenMergeOp<float> token_merge_cuda_op("CUDAExecutionProvider");
TokenMergeOp<Ort::Float16_t> token_merge_cuda_op_f16("CUDAExecutionProvider");
#endif

std::once_flag domain_once;
Ort::CustomOpDomain* domain = nullptr;

}  // namespace

extern "C" {

// The library's own version (vwt_version.h), read by vwt_export/plugins.py before registering.
__attribute__((visibility("default"))) const char* vwt_library_version() { return VWT_LIBRARY_VERSION; }

// 1 when the CUDA kernels were compiled in.
__attribute__((visibility("default"))) int vwt_has_cuda() {
#ifdef VWT_WITH_CUDA
  return 1;
#else
  return 0;
#endif
}

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
      domain->Add(&word_labels_cpu_op);
      domain->Add(&token_merge_cpu_op);
      domain->Add(&token_merge_cpu_op_f16);
#ifdef VWT_WITH_CUDA
      domain->Add(&word_labels_cuda_op);
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
