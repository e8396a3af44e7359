// Plugin creators (IPluginCreatorV3One) and the library entry points TensorRT looks for:
// getCreators() (trtexec --dynamicPlugins, IPluginRegistry::loadLibrary, polygraphy --plugins) and
// setLoggerFinder().
#include <NvInferRuntime.h>

#include <cstring>
#include <exception>
#include <string>
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

bool readFloat(PluginField const& f, float& out) {
  if (f.data == nullptr || f.length < 1) return false;
  if (f.type == PluginFieldType::kFLOAT32) out = *static_cast<float const*>(f.data);
  else if (f.type == PluginFieldType::kFLOAT64) out = static_cast<float>(*static_cast<double const*>(f.data));
  else return false;
  return true;
}

class CreatorBase : public IPluginCreatorV3One {
 public:
  char const* getPluginVersion() const noexcept override { return kPluginVersion; }
  char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }
  PluginFieldCollection const* getFieldNames() noexcept override {
    mCollection.nbFields = static_cast<int32_t>(mFields.size());
    mCollection.fields = mFields.data();
    return &mCollection;
  }

 protected:
  std::vector<PluginField> mFields;

 private:
  PluginFieldCollection mCollection{};
};

class WordLabelsCreator final : public CreatorBase {
 public:
  WordLabelsCreator() { mFields.emplace_back("threshold", nullptr, PluginFieldType::kFLOAT32, 1); }
  char const* getPluginName() const noexcept override { return "WordLabels"; }
  IPluginV3* createPlugin(char const*, PluginFieldCollection const* fc, TensorRTPhase) noexcept override {
    try {
      float threshold = 0.1f;  // the CLI's default; the ONNX node always carries its own
      for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
        if (std::strcmp(fc->fields[i].name, "threshold") == 0 && !readFloat(fc->fields[i], threshold)) return nullptr;
      }
      return new WordLabelsPlugin(threshold);
    } catch (std::exception const&) {
      return nullptr;
    }
  }
};

class TokenMergeCreator final : public CreatorBase {
 public:
  TokenMergeCreator() { mFields.emplace_back("num_prefix", nullptr, PluginFieldType::kINT32, 1); }
  char const* getPluginName() const noexcept override { return "TokenMerge"; }
  IPluginV3* createPlugin(char const*, PluginFieldCollection const* fc, TensorRTPhase) noexcept override {
    try {
      int64_t numPrefix = -1;
      for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
        if (std::strcmp(fc->fields[i].name, "num_prefix") == 0 && !readInt(fc->fields[i], numPrefix)) return nullptr;
      }
      if (numPrefix < 0) return nullptr;  // required
      return new TokenMergePlugin(static_cast<int32_t>(numPrefix));
    } catch (std::exception const&) {
      return nullptr;
    }
  }
};

WordLabelsCreator gWordLabelsCreator;
TokenMergeCreator gTokenMergeCreator;
IPluginCreatorInterface* gCreators[] = {&gWordLabelsCreator, &gTokenMergeCreator};

}  // namespace
}  // namespace trt
}  // namespace vwt

extern "C" {

__attribute__((visibility("default"))) IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  nbCreators = static_cast<int32_t>(sizeof(vwt::trt::gCreators) / sizeof(vwt::trt::gCreators[0]));
  return vwt::trt::gCreators;
}

// The plugins log nothing themselves (errors surface as enqueue/createPlugin failures), so the logger finder
// TensorRT hands over is not needed.
__attribute__((visibility("default"))) void setLoggerFinder(ILoggerFinder*) {}

__attribute__((visibility("default"))) char const* vwt_library_version() { return VWT_LIBRARY_VERSION; }

}  // extern "C"
