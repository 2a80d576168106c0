/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * sai::SparseBlock as a TensorRT IPluginV3 (OneCore + OneBuild + OneRuntime) with its
 * IPluginCreatorV3One: one whole sparse residual block (docs/design.md 3.1-3.4, second form), its two
 * masks included, on the kernels of kernels/sparse_block.py. Fields, inputs and constraints: README.md
 * beside this file. The glue never includes kernel code: it calls sparseBlockKernel.h.
 */
#ifndef SAI_TRT_PLUGINS_SPARSE_BLOCK_PLUGIN_H
#define SAI_TRT_PLUGINS_SPARSE_BLOCK_PLUGIN_H

#include "NvInferRuntime.h"
#include "saiPluginBase.h"
#include "saiPluginCommon.h"
#include "sparseBlockKernel.h"

#include <memory>
#include <string>
#include <vector>

namespace sai
{
namespace plugin
{

//! The attributes of one SparseBlock node (ONNX attribute names in the comments; those of the
//! onnxruntime op sai::SparseBlock plus the mask predictors').
struct SparseBlockAttrs
{
    int32_t strideA{1};                    //!< "stride_a"      INT >= 1 (conv1)
    int32_t strideB{1};                    //!< "stride_b"      INT >= 1 (conv2)
    int32_t reluB{1};                      //!< "relu_b"        INT 0 | 1 (ReLU after conv2)
    int32_t downStride{1};                 //!< "down_stride"   INT >= 1 (the 1x1 downsample conv)
    int32_t offsetStride{1};               //!< "offset_stride" INT >= 1 (the offset conv of a DCN conv2)
    std::vector<int32_t> maskStrides{1, 1}; //!< "mask_strides" INTS[2] >= 1 (the two 3x3 mask convs)
    float sigma1{1.F};                     //!< "sigma1"        FLOAT > 0 (Interpolate after conv1)
    float sigma2{1.F};                     //!< "sigma2"        FLOAT > 0 (the tail's Interpolate)
    int32_t kernelSize{7};                 //!< "kernel_size"   INT odd, 1..31
    float eps{1e-5F};                      //!< "eps"           FLOAT >= 0
    float temperature{1.F};                //!< "temperature"   FLOAT > 0 (the masks' T)
    int32_t gridInterval{0};               //!< "grid_interval" INT >= 0 (0: no grid prior)
};

class SparseBlockPlugin : public SaiPluginBase<SparseBlockPlugin, SparseBlockAttrs>
{
public:
    static constexpr char const* kName = "SparseBlock";
    static SaiKernelCaps const& kernelCaps()
    {
        return sparseBlockKernelCaps();
    }

    explicit SparseBlockPlugin(SparseBlockAttrs attrs);
    ~SparseBlockPlugin() override = default;

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

    //! The attributes and the input count in the timing-cache ID.
    //! The fields getFieldsToSerialize gives (SaiPluginBase): the names and types createPlugin reads.
    void writeFields(SaiFieldWriter& w) const;
    std::string attributesText() const;
    void copyStateFrom(SparseBlockPlugin const& other) noexcept
    {
        mNbInputs = other.mNbInputs;
    }
    //! The block's geometry from the concrete dims of every input; false (and logs why) if the inputs
    //! do not make a block the kernels take. Dims with a -1 are left to a later call (returns true, and
    //! `complete` false).
    bool makeParams(nvinfer1::Dims const* dims, int32_t nbInputs, SaiBlockParams& p, bool& complete) const noexcept;

private:
    bool checkInputCount(int32_t nbInputs, int32_t nbOutputs) const noexcept;
    bool layoutsOf(nvinfer1::PluginTensorDesc const* in, nvinfer1::PluginTensorDesc const* out,
        SaiBlockBuffers& b) const noexcept;

    int32_t mNbInputs{13};
    uint64_t mLoggedShapes{0};
    std::unique_ptr<SparseBlockRunner> mRunner{std::make_unique<SparseBlockRunner>()};
};

class SparseBlockPluginCreator : public SaiPluginCreatorBase<SparseBlockPlugin, SparseBlockPluginCreator>
{
public:
    SparseBlockPluginCreator();
    ~SparseBlockPluginCreator() override = default;

    static bool readField(SaiFieldReader& r, std::string const& name, nvinfer1::PluginField const& f, SparseBlockAttrs& a);
};

} // namespace plugin
} // namespace sai

#endif // SAI_TRT_PLUGINS_SPARSE_BLOCK_PLUGIN_H
