/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * sai::Interpolate as a TensorRT IPluginV3 (OneCore + OneBuild + OneRuntime) with its
 * IPluginCreatorV3One. Semantics: docs/design.md 3.3; fields and constraints: README.md beside this file.
 * The glue never includes kernel code: it calls interpolateKernel.h.
 */
#ifndef SAI_TRT_PLUGINS_INTERPOLATE_PLUGIN_H
#define SAI_TRT_PLUGINS_INTERPOLATE_PLUGIN_H

#include "NvInferRuntime.h"
#include "interpolateKernel.h"
#include "interpolateMath.h"
#include "saiPluginCommon.h"

#include <string>
#include <vector>

namespace sai
{
namespace plugin
{

//! The attributes of one Interpolate node (ONNX attribute names in the comments).
struct InterpolateAttrs
{
    int32_t kernelSize{7}; //!< "kernel_size" INT, odd, 1..31
    float sigma{1.F};      //!< "sigma"       FLOAT, finite
    float eps{1e-5F};      //!< "eps"         FLOAT, finite, >= 0
};

class InterpolatePlugin : public nvinfer1::IPluginV3,
                          public nvinfer1::IPluginV3OneCore,
                          public nvinfer1::IPluginV3OneBuild,
                          public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit InterpolatePlugin(InterpolateAttrs attrs);
    ~InterpolatePlugin() override = default;

    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
    //! Tactics: the kernels' tile configs (SaiKernelCaps::tactics), timed by the builder.
    int32_t getNbTactics() noexcept override;
    int32_t getValidTactics(int32_t* tactics, int32_t nbTactics) noexcept override;
    char const* getTimingCacheID() noexcept override;
    char const* getMetadataString() noexcept override;

    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;
    int32_t setTactic(int32_t tactic) noexcept override;

    InterpolateAttrs const& attrs() const
    {
        return mAttrs;
    }

private:
    bool checkIO(int32_t nbInputs, int32_t nbOutputs) const noexcept;
    bool checkShapes(nvinfer1::Dims const& f, nvinfer1::Dims const& m) const noexcept;
    bool makeParams(nvinfer1::Dims const& f, SaiInterpParams& p) const noexcept;
    //! Layouts/types/strides of F, M and the output for the kernels; false (and logs) if unsupported.
    bool layoutsOf(nvinfer1::PluginTensorDesc const* in, nvinfer1::PluginTensorDesc const* out,
        SaiInterpLayouts& l) const noexcept;

    InterpolateAttrs mAttrs;
    SaiFieldWriter mSerial;
    int32_t mTactic{0};
    std::string mTimingCacheID;
};

class InterpolatePluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    InterpolatePluginCreator();
    ~InterpolatePluginCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFieldNames;
    nvinfer1::PluginFieldCollection mFC{};
};

} // namespace plugin
} // namespace sai

#endif // SAI_TRT_PLUGINS_INTERPOLATE_PLUGIN_H
