// The TokenMerge plugin: shapes, types, formats, and enqueue onto the shared CUDA kernels.
#include "vwtPlugin.h"

#include <cuda_runtime.h>

#include <exception>

#include "vwt_cuda.h"

using namespace nvinfer1;

namespace vwt {
namespace trt {

IPluginCapability* TokenMergePlugin::getCapabilityInterface(PluginCapabilityType type) noexcept {
  switch (type) {
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
  }
  return nullptr;
}

IPluginV3* TokenMergePlugin::clone() noexcept {
  try {
    return new TokenMergePlugin(mNumPrefix, mGridW);
  } catch (std::exception const&) {
    return nullptr;
  }
}

PluginFieldCollection const* TokenMergePlugin::getFieldsToSerialize() noexcept {
  mFields.clear();
  mFields.emplace_back("num_prefix", &mNumPrefix, PluginFieldType::kINT32, 1);
  mFields.emplace_back("grid_w", &mGridW, PluginFieldType::kINT32, 1);
  mCollection.nbFields = static_cast<int32_t>(mFields.size());
  mCollection.fields = mFields.data();
  return &mCollection;
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
  // Arithmetic on the *input* dimensions is allowed; on the size tensor it is not. So the bounds are computed
  // first and the size tensor (output 2) is the length P+M itself: at most P+N (every patch its own group),
  // tuned for P + ceil(N/2), a typical VWT compression.
  IDimensionExpr const* n = inputs[1].d[1];
  IDimensionExpr const* p = expr.constant(mNumPrefix);
  IDimensionExpr const* upper = expr.operation(DimensionOperation::kSUM, *p, *n);
  IDimensionExpr const* opt =
      expr.operation(DimensionOperation::kSUM, *p, *expr.operation(DimensionOperation::kCEIL_DIV, *n, *expr.constant(2)));
  if (upper == nullptr || opt == nullptr) return -1;
  IDimensionExpr const* length = expr.declareSizeTensor(2, *opt, *upper);
  if (length == nullptr) return -1;
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
    case 1: return t == DataType::kINT64;                           // keys
    case 2: return t == inOut[0].desc.type;                         // merged: the tokens' type
    case 3: return t == DataType::kFLOAT;                           // sizes
    default: return t == DataType::kINT64;                          // length
  }
}

size_t TokenMergePlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t, DynamicPluginTensorDesc const*,
                                          int32_t) const noexcept {
  // the largest batch and patch count the profile allows (host arithmetic only: no GPU needed to build)
  return vwt::cuda::token_merge_workspace_size(inputs[1].max.d[0], inputs[1].max.d[1]);
}

// UNVERIFIED: no GPU in this project's workplace.
int32_t TokenMergePlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*, void const* const* inputs,
                                  void* const* outputs, void* workspace, cudaStream_t stream) noexcept {
  try {
    int64_t const B = inputDesc[1].dims.d[0], N = inputDesc[1].dims.d[1], D = inputDesc[0].dims.d[2];
    if (inputDesc[0].dims.d[1] != mNumPrefix + N || (mGridW > 0 && N % mGridW != 0)) return -1;
    auto* length = static_cast<int64_t*>(outputs[2]);
    vwt::cuda::token_merge_groups(static_cast<int64_t const*>(inputs[1]), B, N, mNumPrefix, mGridW, workspace, length,
                                  stream);
    vwt::cuda::token_merge_rows(inputs[0], inputDesc[0].type == DataType::kHALF, B, N, mNumPrefix, D, -1, workspace,
                                outputs[0], static_cast<float*>(outputs[1]), stream);
    return 0;
  } catch (std::exception const&) {
    return -1;
  }
}

}  // namespace trt
}  // namespace vwt
