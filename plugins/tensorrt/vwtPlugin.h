// TensorRT plugins for the vwt ops (IPluginV3: OneCore + OneBuild + OneRuntime).
//
//   WordLabels  (features f32 [B,N,F], vocab f32 [V,F]; threshold)  -> labels i64 [B,N]
//   TokenMerge  (tokens f32|f16 [B,P+N,D], labels i64 [B,N]; num_prefix)
//               -> merged [B,P+M,D], sizes f32 [B,P+M], M (0-D i64 size tensor, upper bound N)
//
// Names and versions match the ONNX nodes (op_type, plugin_version "1", empty namespace) so TensorRT's ONNX
// parser picks them up through its plugin fallback. The kernels are the shared CUDA kernels of
// plugins/common/vwt_cuda.cu; TokenMerge computes M on the device (no host synchronisation in enqueue).
//
// Written against NVIDIA's published headers and samples; compiled privately against the open-source
// headers, never built against or run with a TensorRT library in this project's CI (see README).
#pragma once

#include <NvInferRuntime.h>

#include <string>
#include <vector>

#include "vwt_version.h"

namespace vwt {
namespace trt {

constexpr char const* kPluginVersion = "1";  // = ONNX opset version of the vwt domain
constexpr char const* kPluginNamespace = "";

// Shared plumbing: capability dispatch and the serialised attribute collection.
class VwtPluginBase : public nvinfer1::IPluginV3,
                      public nvinfer1::IPluginV3OneCore,
                      public nvinfer1::IPluginV3OneBuild,
                      public nvinfer1::IPluginV3OneRuntime {
 public:
  nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
  char const* getPluginVersion() const noexcept override { return kPluginVersion; }
  char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }
  int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const*, int32_t, nvinfer1::DynamicPluginTensorDesc const*,
                          int32_t) noexcept override {
    return 0;
  }
  int32_t onShapeChange(nvinfer1::PluginTensorDesc const*, int32_t, nvinfer1::PluginTensorDesc const*,
                        int32_t) noexcept override {
    return 0;
  }
  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext*) noexcept override { return clone(); }
  nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

 protected:
  virtual void fillFields(std::vector<nvinfer1::PluginField>& fields) = 0;

 private:
  std::vector<nvinfer1::PluginField> mFields;
  nvinfer1::PluginFieldCollection mCollection{};
};

class WordLabelsPlugin final : public VwtPluginBase {
 public:
  explicit WordLabelsPlugin(float threshold) : mThreshold(threshold) {}
  nvinfer1::IPluginV3* clone() noexcept override;
  char const* getPluginName() const noexcept override { return "WordLabels"; }
  int32_t getNbOutputs() const noexcept override { return 1; }
  int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs, nvinfer1::DataType const* inputTypes,
                             int32_t nbInputs) const noexcept override;
  int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
                          int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                          nvinfer1::IExprBuilder& exprBuilder) noexcept override;
  bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override;
  size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
  int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
                  void const* const* inputs, void* const* outputs, void* workspace,
                  cudaStream_t stream) noexcept override;

 protected:
  void fillFields(std::vector<nvinfer1::PluginField>& fields) override;

 private:
  float mThreshold;
};

class TokenMergePlugin final : public VwtPluginBase {
 public:
  explicit TokenMergePlugin(int32_t numPrefix) : mNumPrefix(numPrefix) {}
  nvinfer1::IPluginV3* clone() noexcept override;
  char const* getPluginName() const noexcept override { return "TokenMerge"; }
  int32_t getNbOutputs() const noexcept override { return 3; }
  int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs, nvinfer1::DataType const* inputTypes,
                             int32_t nbInputs) const noexcept override;
  int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
                          int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                          nvinfer1::IExprBuilder& exprBuilder) noexcept override;
  bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override;
  int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
                  void const* const* inputs, void* const* outputs, void* workspace,
                  cudaStream_t stream) noexcept override;

 protected:
  void fillFields(std::vector<nvinfer1::PluginField>& fields) override;

 private:
  int32_t mNumPrefix;
};

}  // namespace trt
}  // namespace vwt
