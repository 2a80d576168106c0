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
#include "saiPluginBase.h"
#include "saiPluginCommon.h"

#include <memory>
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

//! Name, version, namespace, clone, tactics and the timing-cache ID come from SaiPluginBase.
class InterpolatePlugin : public SaiPluginBase<InterpolatePlugin, InterpolateAttrs>
{
public:
    static constexpr char const* kName = "Interpolate";
    static SaiKernelCaps const& kernelCaps()
    {
        return interpolateKernelCaps();
    }

    explicit InterpolatePlugin(InterpolateAttrs attrs);
    ~InterpolatePlugin() override = default;

    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;

    //! The attributes in the timing-cache ID: "k7:sigma1:eps1e-05".
    //! The fields getFieldsToSerialize gives (SaiPluginBase): the names and types createPlugin reads.
    void writeFields(SaiFieldWriter& w) const;
    std::string attributesText() const;

private:
    bool checkIO(int32_t nbInputs, int32_t nbOutputs) const noexcept;
    bool checkShapes(nvinfer1::Dims const& f, nvinfer1::Dims const& m) const noexcept;
    bool makeParams(nvinfer1::Dims const& f, SaiInterpParams& p) const noexcept;
    //! Layouts/types/strides of F, M and the output for the kernels; false (and logs) if unsupported.
    bool layoutsOf(nvinfer1::PluginTensorDesc const* in, nvinfer1::PluginTensorDesc const* out,
        SaiInterpLayouts& l) const noexcept;

    uint64_t mLoggedShapes{0}; //!< saiShapeKey of the layouts onShapeChange logged last
    //! The launch state: builds resolved per configuration and context.
    std::unique_ptr<InterpolateRunner> mRunner{std::make_unique<InterpolateRunner>()};
};

class InterpolatePluginCreator : public SaiPluginCreatorBase<InterpolatePlugin, InterpolatePluginCreator>
{
public:
    InterpolatePluginCreator();
    ~InterpolatePluginCreator() override = default;

    //! Reads and checks one field (createPlugin walks them); false for an unknown name.
    static bool readField(
        SaiFieldReader& r, std::string const& name, nvinfer1::PluginField const& f, InterpolateAttrs& a);
};

} // namespace plugin
} // namespace sai

#endif // SAI_TRT_PLUGINS_INTERPOLATE_PLUGIN_H
