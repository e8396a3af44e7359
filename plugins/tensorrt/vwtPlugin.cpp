// The two vwt plugins: shapes, types, formats, and enqueue onto the shared CUDA kernels.
#include "vwtPlugin.h"

#include <cuda_runtime.h>

#include <exception>
#include <memory>

#include "vwt_cuda.h"

using namespace nvinfer1;

namespace vwt {
namespace trt {

IPluginCapability* VwtPluginBase::getCapabilityInterface(PluginCapabilityType type) noexcept {
  switch (type) {
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
  }
  return nullptr;
}

PluginFieldCollection const* VwtPluginBase::getFieldsToSerialize() noexcept {
  mFields.clear();
  fillFields(mFields);
  mCollection.nbFields = static_cast<int32_t>(mFields.size());
  mCollection.fields = mFields.data();
  return &mCollection;
}

// ---- WordLabels ---------------------------------------------------------------------------------------------

IPluginV3* WordLabelsPlugin::clone() noexcept {
  try {
    return new WordLabelsPlugin(mThreshold);
  } catch (std::exception const&) {
    return nullptr;
  }
}

void WordLabelsPlugin::fillFields(std::vector<PluginField>& fields) {
  fields.emplace_back("threshold", &mThreshold, PluginFieldType::kFLOAT32, 1);
}

int32_t WordLabelsPlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const*,
                                             int32_t nbInputs) const noexcept {
  if (nbOutputs != 1 || nbInputs != 2) return -1;
  outputTypes[0] = DataType::kINT64;
  return 0;
}

int32_t WordLabelsPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t,
                                          DimsExprs* outputs, int32_t nbOutputs, IExprBuilder&) noexcept {
  if (nbInputs != 2 || nbOutputs != 1 || inputs[0].nbDims != 3 || inputs[1].nbDims != 2) return -1;
  outputs[0].nbDims = 2;
  outputs[0].d[0] = inputs[0].d[0];
  outputs[0].d[1] = inputs[0].d[1];
  return 0;
}

bool WordLabelsPlugin::supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                                 int32_t nbOutputs) noexcept {
  if (nbInputs != 2 || nbOutputs != 1 || inOut[pos].desc.format != TensorFormat::kLINEAR) return false;
  return inOut[pos].desc.type == (pos < 2 ? DataType::kFLOAT : DataType::kINT64);
}

size_t WordLabelsPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t, DynamicPluginTensorDesc const*,
                                          int32_t) const noexcept {
  auto const& f = inputs[0].max;
  auto const& v = inputs[1].max;
  return vwt::cuda::word_labels_workspace_size(f.d[0], f.d[1], f.d[2], v.d[0]);
}

int32_t WordLabelsPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*, void const* const* inputs,
                                  void* const* outputs, void* workspace, cudaStream_t stream) noexcept {
  try {
    auto const& f = inputDesc[0].dims;
    auto const& v = inputDesc[1].dims;
    vwt::cuda::word_labels(static_cast<float const*>(inputs[0]), static_cast<float const*>(inputs[1]), f.d[0], f.d[1],
                           f.d[2], v.d[0], mThreshold, static_cast<int64_t*>(outputs[0]), stream, workspace);
    return 0;
  } catch (std::exception const&) {
    return -1;
  }
}

// ---- TokenMerge ---------------------------------------------------------------------------------------------

IPluginV3* TokenMergePlugin::clone() noexcept {
  try {
    return new TokenMergePlugin(mNumPrefix);
  } catch (std::exception const&) {
    return nullptr;
  }
}

void TokenMergePlugin::fillFields(std::vector<PluginField>& fields) {
  fields.emplace_back("num_prefix", &mNumPrefix, PluginFieldType::kINT32, 1);
}

int32_t TokenMergePlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                                             int32_t nbInputs) const noexcept {
  if (nbOutputs != 3 || nbInputs != 2) return -1;
  outputTypes[0] = inputTypes[0];
  outputTypes[1] = DataType::kFLOAT;
  outputTypes[2] = DataType::kINT64;  // size tensors are INT64
  return 0;
}

int32_t TokenMergePlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t,
                                          DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& expr) noexcept {
  if (nbInputs != 2 || nbOutputs != 3 || inputs[0].nbDims != 3 || inputs[1].nbDims != 2) return -1;
  // M, the number of groups of the longest image, is data-dependent: at most N (every patch its own group);
  // tuned for half of N, a typical VWT compression.
  IDimensionExpr const* n = inputs[1].d[1];
  IDimensionExpr const* opt = expr.operation(DimensionOperation::kCEIL_DIV, *n, *expr.constant(2));
  IDimensionExpr const* m = expr.declareSizeTensor(2, *opt, *n);
  IDimensionExpr const* length = expr.operation(DimensionOperation::kSUM, *expr.constant(mNumPrefix), *m);
  outputs[0].nbDims = 3;
  outputs[0].d[0] = inputs[0].d[0];
  outputs[0].d[1] = length;
  outputs[0].d[2] = inputs[0].d[2];
  outputs[1].nbDims = 2;
  outputs[1].d[0] = inputs[0].d[0];
  outputs[1].d[1] = length;
  outputs[2].nbDims = 0;  // size tensors are 0-D
  return 0;
}

bool TokenMergePlugin::supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                                 int32_t nbOutputs) noexcept {
  if (nbInputs != 2 || nbOutputs != 3 || inOut[pos].desc.format != TensorFormat::kLINEAR) return false;
  DataType const t = inOut[pos].desc.type;
  switch (pos) {
    case 0: return t == DataType::kFLOAT || t == DataType::kHALF;  // tokens
    case 1: return t == DataType::kINT64;                           // labels
    case 2: return t == inOut[0].desc.type;                         // merged: the tokens' type
    case 3: return t == DataType::kFLOAT;                           // sizes
    default: return t == DataType::kINT64;                          // M
  }
}

int32_t TokenMergePlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*, void const* const* inputs,
                                  void* const* outputs, void*, cudaStream_t stream) noexcept {
  try {
    int64_t const B = inputDesc[0].dims.d[0], D = inputDesc[0].dims.d[2], N = inputDesc[1].dims.d[1];
    auto const* labels = static_cast<int64_t const*>(inputs[1]);
    auto* m = static_cast<int64_t*>(outputs[2]);
    auto* sizes = static_cast<float*>(outputs[1]);
    vwt::cuda::max_groups(labels, B, N, m, stream);
    if (inputDesc[0].type == DataType::kHALF) {
      vwt::cuda::token_merge_dds_half(inputs[0], labels, B, N, mNumPrefix, D, m, outputs[0], sizes, stream);
    } else {
      vwt::cuda::token_merge_dds(static_cast<float const*>(inputs[0]), labels, B, N, mNumPrefix, D, m,
                                 static_cast<float*>(outputs[0]), sizes, stream);
    }
    return 0;
  } catch (std::exception const&) {
    return -1;
  }
}

}  // namespace trt
}  // namespace vwt
