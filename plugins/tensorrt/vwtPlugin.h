// TensorRT plugin for vwt::TokenMerge (vwt op domain version 2; IPluginV3: OneCore + OneBuild + OneRuntime).
//
//   TokenMerge(tokens f32|f16 [B,P+N,D], keys i64 [B,N]; num_prefix, grid_w = 0)
//     -> merged [B,P+M,D], sizes f32 [B,P+M], length i64 [] (= P+M, the size tensor)
//
// Inputs and outputs are exactly the ONNX node's, two in and three out: TensorRT's ONNX parser maps a node onto
// the plugin registered under the node's op_type (plugin version "1", empty namespace, the parser's defaults
// when the node carries no plugin_version / plugin_namespace attribute) and refuses the node when the plugin's
// output count differs from the node's (INVALID_GRAPH); it does not adapt one to the other.
//
// The merged length is data-dependent. TensorRT allows no arithmetic on a size tensor in getOutputShapes (the
// expression builder returns null for it, which then crashes the build), so the size tensor is the length
// P+M itself, declared with upper bound P+N, and used directly as the merged dimension; the kernels write P+M
// to it on the device (no host synchronisation in enqueue). The kernels are the shared CUDA kernels of
// plugins/common/vwt_cuda.cu.
//
// Parsed and built (ahead of time, no GPU) by TensorRT-RTX in tests/backends/test_tensorrt.py; enqueue is
// UNVERIFIED (no GPU in this project's workplace; scripts/gpu_check.sh exercises the same kernels).
#pragma once

#include <NvInferRuntime.h>

#include <vector>

#include "vwt_version.h"

namespace vwt {
namespace trt {

constexpr char const* kPluginName = "TokenMerge";
// TensorRT's plugin version, what the ONNX parser asks for by default; the vwt op domain version (2, checked on
// the graph before parsing: vwt_export.graph.ops.check_version) and the library version live in vwt_version.h.
constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "";

class TokenMergePlugin final : public nvinfer1::IPluginV3,
                               public nvinfer1::IPluginV3OneCore,
                               public nvinfer1::IPluginV3OneBuild,
                               public nvinfer1::IPluginV3OneRuntime {
 public:
  TokenMergePlugin(int32_t numPrefix, int32_t gridW) : mNumPrefix(numPrefix), mGridW(gridW) {}

  // IPluginV3
  nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
  nvinfer1::IPluginV3* clone() noexcept override;

  // IPluginV3OneCore
  char const* getPluginName() const noexcept override { return kPluginName; }
  char const* getPluginVersion() const noexcept override { return kPluginVersion; }
  char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

  // IPluginV3OneBuild
  int32_t getNbOutputs() const noexcept override { return 3; }
  int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const*, int32_t, nvinfer1::DynamicPluginTensorDesc const*,
                          int32_t) noexcept override {
    return 0;
  }
  int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs, nvinfer1::DataType const* inputTypes,
                             int32_t nbInputs) const noexcept override;
  int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
                          int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                          nvinfer1::IExprBuilder& exprBuilder) noexcept override;
  bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override;
  size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

  // IPluginV3OneRuntime
  int32_t onShapeChange(nvinfer1::PluginTensorDesc const*, int32_t, nvinfer1::PluginTensorDesc const*,
                        int32_t) noexcept override {
    return 0;
  }
  int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
                  void const* const* inputs, void* const* outputs, void* workspace,
                  cudaStream_t stream) noexcept override;
  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext*) noexcept override { return clone(); }
  nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

 private:
  int32_t mNumPrefix;
  int32_t mGridW;
  std::vector<nvinfer1::PluginField> mFields;
  nvinfer1::PluginFieldCollection mCollection{};
};

}  // namespace trt
}  // namespace vwt
