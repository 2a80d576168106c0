/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * The library's two entry points (fixed by exports.map): TensorRT's plugin loader
 * (IPluginRegistry::loadLibrary, trtexec --dynamicPlugins, the ONNX parser's plugin libraries)
 * calls setLoggerFinder, then getCreators. No REGISTER_TENSORRT_PLUGIN: no libnvinfer link.
 */
#include "interpolatePlugin.h"
#include "saiPluginCommon.h"
#include "sparseSampleConvPlugin.h"

#include "NvInferRuntime.h"

// The library builds with -fvisibility=hidden; exports.map then keeps exactly these two.
#define SAI_PLUGIN_EXPORT __attribute__((visibility("default")))

extern "C" SAI_PLUGIN_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    sai::plugin::saiSetLoggerFinder(finder);
}

extern "C" SAI_PLUGIN_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static sai::plugin::SparseSampleConvPluginCreator sparseSampleConvCreator;
    static sai::plugin::InterpolatePluginCreator interpolateCreator;
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&sparseSampleConvCreator, &interpolateCreator};
    nbCreators = static_cast<int32_t>(sizeof(creators) / sizeof(creators[0]));
    return creators;
}
