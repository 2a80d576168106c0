/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * sai::RoiAlignV0 (mmdetection v0.6's RoIAlign, docs/design.md 9) as a TensorRT IPluginV3 (OneCore +
 * OneBuild + OneRuntime) with its IPluginCreatorV3One. Fields and constraints: README.md beside this file.
 * The glue never includes kernel code: it calls roiAlignV0Kernel.h.
 */
#ifndef SAI_TRT_PLUGINS_ROI_ALIGN_V0_PLUGIN_H
#define SAI_TRT_PLUGINS_ROI_ALIGN_V0_PLUGIN_H

#include "NvInferRuntime.h"
#include "roiAlignV0Kernel.h"
#include "roiAlignV0Math.h"
#include "saiPluginBase.h"
#include "saiPluginCommon.h"

#include <string>

namespace sai
{
namespace plugin
{

//! The attributes of one RoiAlignV0 node (ONNX attribute names in the comments).
struct RoiAlignV0Attrs
{
    float spatialScale{0.25F}; //!< "spatial_scale"  FLOAT, finite, > 0
    int32_t outputSize{7};     //!< "output_size"    INT, 1..64
    int32_t samplingRatio{2};  //!< "sampling_ratio" INT, 1..16
};

class RoiAlignV0Plugin : public SaiPluginBase<RoiAlignV0Plugin, RoiAlignV0Attrs>
{
public:
    static constexpr char const* kName = "RoiAlignV0";
    static SaiKernelCaps const& kernelCaps()
    {
        return roiAlignV0KernelCaps();
    }

    explicit RoiAlignV0Plugin(RoiAlignV0Attrs attrs);
    ~RoiAlignV0Plugin() override = default;

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

    //! The attributes in the timing-cache ID: "scale0.25:out7:n2".
    //! The fields getFieldsToSerialize gives (SaiPluginBase): the names and types createPlugin reads.
    void writeFields(SaiFieldWriter& w) const;
    std::string attributesText() const;

private:
    bool checkIO(int32_t nbInputs, int32_t nbOutputs) const noexcept;
    //! X [N,C,H,W], rois [R,4], batch [R] (-1 for a dimension not known yet).
    bool checkShapes(nvinfer1::Dims const& x, nvinfer1::Dims const& rois, nvinfer1::Dims const& batch) const noexcept;
    bool makeParams(nvinfer1::Dims const& x, nvinfer1::Dims const& rois, SaiRoiAlignParams& p) const noexcept;
};

class RoiAlignV0PluginCreator : public SaiPluginCreatorBase<RoiAlignV0Plugin, RoiAlignV0PluginCreator>
{
public:
    RoiAlignV0PluginCreator();
    ~RoiAlignV0PluginCreator() override = default;

    //! Reads and checks one field (createPlugin walks them); false for an unknown name.
    static bool readField(
        SaiFieldReader& r, std::string const& name, nvinfer1::PluginField const& f, RoiAlignV0Attrs& a);
};

} // namespace plugin
} // namespace sai

#endif // SAI_TRT_PLUGINS_ROI_ALIGN_V0_PLUGIN_H
