/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * sai::SparseSampleConv as a TensorRT IPluginV3 (OneCore + OneBuild + OneRuntime) with its
 * IPluginCreatorV3One. Semantics: docs/design.md 3.2; fields and constraints: README.md beside this file.
 * The glue never includes kernel code: it calls sparseSampleConvKernel.h.
 */
#ifndef SAI_TRT_PLUGINS_SPARSE_SAMPLE_CONV_PLUGIN_H
#define SAI_TRT_PLUGINS_SPARSE_SAMPLE_CONV_PLUGIN_H

#include "NvInferRuntime.h"
#include "saiPluginBase.h"
#include "saiPluginCommon.h"
#include "sparseSampleConvKernel.h"
#include "sparseSampleConvMath.h"

#include <exception>
#include <memory>
#include <string>
#include <vector>

namespace sai
{
namespace plugin
{

//! The attributes of one SparseSampleConv node (ONNX attribute names in the comments).
struct SparseSampleConvAttrs
{
    std::vector<int32_t> strides{1, 1};         //!< "strides"   INTS[2], >= 1
    std::vector<int32_t> pads{0, 0, 0, 0};      //!< "pads"      INTS[4] top, left, bottom, right, >= 0
    std::vector<int32_t> dilations{1, 1};       //!< "dilations" INTS[2], >= 1
    int32_t group{1};                           //!< "group"     INT, >= 1
    int32_t deformGroups{1};                    //!< "deform_groups" INT, >= 1
    int32_t activation{kSAI_ACT_NONE};          //!< "activation" STRING "none" | "relu"
};

//! Name, version, namespace, clone, tactics and the timing-cache ID come from SaiPluginBase.
class SparseSampleConvPlugin : public SaiPluginBase<SparseSampleConvPlugin, SparseSampleConvAttrs>
{
public:
    static constexpr char const* kName = "SparseSampleConv";
    static SaiKernelCaps const& kernelCaps()
    {
        return sparseSampleConvKernelCaps();
    }

    explicit SparseSampleConvPlugin(SparseSampleConvAttrs attrs);
    ~SparseSampleConvPlugin() override = default;

    // IPluginV3OneBuild
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

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;

    //! The attributes and the input count in the timing-cache ID: "s1x1:p1,1,1,1:d1x1:g1:dg1:relu:in4".
    //! The fields getFieldsToSerialize gives (SaiPluginBase): the names and types createPlugin reads.
    void writeFields(SaiFieldWriter& w) const;
    std::string attributesText() const;
    //! A clone keeps the input count (the variant: with bias, with offset).
    void copyStateFrom(SparseSampleConvPlugin const& other) noexcept
    {
        mNbInputs = other.mNbInputs;
    }
    //! An execution context's instance shares its packed weights with the engine's other contexts.
    void onAttached() noexcept
    {
        try
        {
            mRunner = std::make_unique<SparseSampleConvRunner>(false, true);
        }
        catch (std::exception const&)
        {
            // keeps its own runner: a private copy of the packed weights
        }
    }
    //! Fills conv params from X [N,C,H,W] and W [Cout,C/g,kh,kw] dims; false (and logs) if invalid.
    bool makeParams(nvinfer1::Dims const& x, nvinfer1::Dims const& w, SaiConvParams& p) const noexcept;

private:
    bool checkInputCount(int32_t nbInputs, int32_t nbOutputs) const noexcept;
    //! Full shape check of concrete dims (any -1 dimension is skipped).
    bool checkShapes(nvinfer1::Dims const* dims, int32_t nbInputs) const noexcept;
    //! Layouts/types/strides of X, M, Offset, Y for the kernels; false (and logs) if unsupported.
    bool layoutsOf(nvinfer1::PluginTensorDesc const* in, nvinfer1::PluginTensorDesc const* out,
        SaiConvBuffers& b) const noexcept;

    int32_t mNbInputs{3};
    uint64_t mLoggedShapes{0}; //!< saiShapeKey of the layouts onShapeChange logged last
    //! The launch state: builds resolved per configuration and context, the weights packed once.
    std::unique_ptr<SparseSampleConvRunner> mRunner{std::make_unique<SparseSampleConvRunner>()};
};

class SparseSampleConvPluginCreator : public SaiPluginCreatorBase<SparseSampleConvPlugin, SparseSampleConvPluginCreator>
{
public:
    SparseSampleConvPluginCreator();
    ~SparseSampleConvPluginCreator() override = default;

    //! Reads and checks one field (createPlugin walks them); false for an unknown name.
    static bool readField(
        SaiFieldReader& r, std::string const& name, nvinfer1::PluginField const& f, SparseSampleConvAttrs& a);
};

} // namespace plugin
} // namespace sai

#endif // SAI_TRT_PLUGINS_SPARSE_SAMPLE_CONV_PLUGIN_H
