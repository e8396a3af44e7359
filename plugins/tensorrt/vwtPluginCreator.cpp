// The plugin creator (IPluginCreatorV3One) and the library entry points TensorRT looks for: getCreators()
// (IPluginRegistry::loadLibrary, trtexec --dynamicPlugins, polygraphy --plugins) and setLoggerFinder().
//
// Version table of this library (all in vwt_version.h but the TensorRT plugin version):
//   library             VWT_LIBRARY_VERSION   exported as vwt_library_version(), checked by vwt_export/plugins.py
//   vwt op domain       VWT_OPS_OPSET (2)     exported as vwt_ops_opset(); graphs are checked before parsing
//   TensorRT plugin     kPluginVersion ("1")  the version TensorRT's ONNX parser asks for by default
//
// Registering twice: loading this library a second time into the same registry makes TensorRT log an ERROR
// ("creator already registered"); vwt_export/backends/tensorrt.py asks the registry first and loads the library
// only when no TokenMerge creator is there yet.
#include <NvInferRuntime.h>

#include <cstdint>
#include <cstring>
#include <exception>
#include <vector>

#include "vwtPlugin.h"

using namespace nvinfer1;

namespace vwt {
namespace trt {
namespace {

// ONNX INT attributes arrive as INT32 or INT64 fields depending on the parser version; accept both.
bool readInt(PluginField const& f, int64_t& out) {
  if (f.data == nullptr || f.length < 1) return false;
  if (f.type == PluginFieldType::kINT32) out = *static_cast<int32_t const*>(f.data);
  else if (f.type == PluginFieldType::kINT64) out = *static_cast<int64_t const*>(f.data);
  else return false;
  return true;
}

class TokenMergeCreator final : public IPluginCreatorV3One {
 public:
  TokenMergeCreator() {
    mFields.emplace_back("num_prefix", nullptr, PluginFieldType::kINT32, 1);
    mFields.emplace_back("grid_w", nullptr, PluginFieldType::kINT32, 1);
    mCollection.nbFields = static_cast<int32_t>(mFields.size());
    mCollection.fields = mFields.data();
  }
  char const* getPluginName() const noexcept override { return kPluginName; }
  char const* getPluginVersion() const noexcept override { return kPluginVersion; }
  char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }
  PluginFieldCollection const* getFieldNames() noexcept override { return &mCollection; }

  IPluginV3* createPlugin(char const*, PluginFieldCollection const* fc, TensorRTPhase) noexcept override {
    try {
      int64_t numPrefix = -1, gridW = 0;  // num_prefix is required, grid_w defaults to 0 (global grouping)
      for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
        PluginField const& f = fc->fields[i];
        if (std::strcmp(f.name, "num_prefix") == 0 && !readInt(f, numPrefix)) return nullptr;
        if (std::strcmp(f.name, "grid_w") == 0 && !readInt(f, gridW)) return nullptr;
      }
      if (numPrefix < 0 || gridW < 0 || numPrefix > INT32_MAX || gridW > INT32_MAX) return nullptr;
      return new TokenMergePlugin(static_cast<int32_t>(numPrefix), static_cast<int32_t>(gridW));
    } catch (std::exception const&) {
      return nullptr;
    }
  }

 private:
  std::vector<PluginField> mFields;
  PluginFieldCollection mCollection{};
};

TokenMergeCreator gTokenMergeCreator;
IPluginCreatorInterface* gCreators[] = {&gTokenMergeCreator};

}  // namespace
}  // namespace trt
}  // namespace vwt

extern "C" {

__attribute__((visibility("default"))) IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  nbCreators = static_cast<int32_t>(sizeof(vwt::trt::gCreators) / sizeof(vwt::trt::gCreators[0]));
  return vwt::trt::gCreators;
}

// The plugin logs nothing itself (errors surface as createPlugin / enqueue failures), so the logger finder
// TensorRT hands over is not needed.
__attribute__((visibility("default"))) void setLoggerFinder(ILoggerFinder*) {}

__attribute__((visibility("default"))) char const* vwt_library_version() { return VWT_LIBRARY_VERSION; }

__attribute__((visibility("default"))) int vwt_ops_opset() { return VWT_OPS_OPSET; }

}  // extern "C"
