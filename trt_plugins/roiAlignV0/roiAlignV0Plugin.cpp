/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * TensorRT glue of sai::RoiAlignV0 (docs/design.md 9). Inputs: 0 X [N,C,H,W] FP32, 1 rois [R,4] FP32,
 * 2 batch_indices [R] INT32 or INT64. Output 0 [R,C,output_size,output_size] FP32. All kLINEAR.
 */
#include "roiAlignV0Plugin.h"
#include "roiAlignV0Kernel.h"

#include <exception>
#include <sstream>

using namespace nvinfer1;

namespace sai
{
namespace plugin
{

namespace
{
bool known(int64_t a, int64_t b)
{
    return a >= 0 && b >= 0;
}
} // namespace

RoiAlignV0Plugin::RoiAlignV0Plugin(RoiAlignV0Attrs attrs)
    : SaiPluginBase(attrs)
{
}

bool RoiAlignV0Plugin::checkIO(int32_t nbInputs, int32_t nbOutputs) const noexcept
{
    if (nbInputs != 3 || nbOutputs != 1)
    {
        logError("expects 3 inputs (X, rois, batch_indices) and 1 output, got " + std::to_string(nbInputs)
            + " inputs and " + std::to_string(nbOutputs) + " outputs");
        return false;
    }
    return true;
}

bool RoiAlignV0Plugin::checkShapes(Dims const& x, Dims const& rois, Dims const& batch) const noexcept
{
    if (x.nbDims != 4 || rois.nbDims != 2 || batch.nbDims != 1)
    {
        logError("X must be [N,C,H,W], rois [R,4] and batch_indices [R], got X " + saiDimsText(x) + ", rois "
            + saiDimsText(rois) + ", batch_indices " + saiDimsText(batch));
        return false;
    }
    if (rois.d[1] >= 0 && rois.d[1] != 4)
    {
        logError("rois must be [R,4] (x1, y1, x2, y2), got " + saiDimsText(rois));
        return false;
    }
    if (known(rois.d[0], batch.d[0]) && rois.d[0] != batch.d[0])
    {
        logError("batch_indices " + saiDimsText(batch) + " must have one index per RoI of rois " + saiDimsText(rois));
        return false;
    }
    return true;
}

bool RoiAlignV0Plugin::makeParams(Dims const& x, Dims const& rois, SaiRoiAlignParams& p) const noexcept
{
    if (x.nbDims != 4 || rois.nbDims != 2 || x.d[0] > INT32_MAX || x.d[1] > INT32_MAX || x.d[2] > INT32_MAX
        || x.d[3] > INT32_MAX || rois.d[0] > INT32_MAX)
    {
        logError("X " + saiDimsText(x) + " or rois " + saiDimsText(rois) + " is not of the expected rank or too large");
        return false;
    }
    p.N = static_cast<int32_t>(x.d[0]);
    p.C = static_cast<int32_t>(x.d[1]);
    p.H = static_cast<int32_t>(x.d[2]);
    p.W = static_cast<int32_t>(x.d[3]);
    p.R = static_cast<int32_t>(rois.d[0]);
    p.outSize = mAttrs.outputSize;
    p.samplingRatio = mAttrs.samplingRatio;
    p.spatialScale = mAttrs.spatialScale;
    if (!saiRoiAlignParamsValid(p))
    {
        logError("invalid shape X " + saiDimsText(x) + ", rois " + saiDimsText(rois) + " or attributes " + attributesText());
        return false;
    }
    return true;
}

int32_t RoiAlignV0Plugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (!checkIO(nbInputs, nbOutputs))
    {
        return -1;
    }
    if (inputTypes[0] != DataType::kFLOAT || inputTypes[1] != DataType::kFLOAT)
    {
        logError(std::string("X and rois must be FP32, got ") + saiDataTypeName(inputTypes[0]) + " and "
            + saiDataTypeName(inputTypes[1]));
        return -1;
    }
    if (inputTypes[2] != DataType::kINT32 && inputTypes[2] != DataType::kINT64)
    {
        logError(std::string("batch_indices must be INT32 or INT64, got ") + saiDataTypeName(inputTypes[2]));
        return -1;
    }
    outputTypes[0] = DataType::kFLOAT;
    return 0;
}

int32_t RoiAlignV0Plugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept
{
    if (!checkIO(nbInputs, nbOutputs))
    {
        return -1;
    }
    if (inputs[0].nbDims != 4 || inputs[1].nbDims != 2 || inputs[2].nbDims != 1)
    {
        logError("X must be 4-D, rois 2-D and batch_indices 1-D, got " + std::to_string(inputs[0].nbDims) + "-D, "
            + std::to_string(inputs[1].nbDims) + "-D and " + std::to_string(inputs[2].nbDims) + "-D");
        return -1;
    }
    IDimensionExpr const* four = inputs[1].d[1];
    if (four->isConstant() && four->getConstantValue() != 4)
    {
        logError("rois must be [R,4], got a last dimension of " + std::to_string(four->getConstantValue()));
        return -1;
    }
    IDimensionExpr const* out = exprBuilder.constant(mAttrs.outputSize);
    if (out == nullptr)
    {
        logError("getOutputShapes: the expression builder gave no constant");
        return -1;
    }
    outputs[0].nbDims = 4;
    outputs[0].d[0] = inputs[1].d[0];
    outputs[0].d[1] = inputs[0].d[1];
    outputs[0].d[2] = out;
    outputs[0].d[3] = out;
    return 0;
}

bool RoiAlignV0Plugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    // X, rois and Y: FP32 kLINEAR (roiAlignV0KernelCaps); batch_indices: INT32 or INT64 kLINEAR
    if (nbInputs != 3 || nbOutputs != 1 || pos < 0 || pos >= 4)
    {
        return false;
    }
    PluginTensorDesc const& d = inOut[pos].desc;
    if (d.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    if (pos == 2)
    {
        return d.type == DataType::kINT32 || d.type == DataType::kINT64;
    }
    return d.type == DataType::kFLOAT
        && saiCapsLayout(roiAlignV0KernelCaps(), SaiDataType::kFLOAT, SaiLayout::kNCHW);
}

int32_t RoiAlignV0Plugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (!checkIO(nbInputs, nbOutputs) || !checkShapes(in[0].desc.dims, in[1].desc.dims, in[2].desc.dims))
    {
        return -1;
    }
    return 0;
}

size_t RoiAlignV0Plugin::getWorkspaceSize(DynamicPluginTensorDesc const* /*inputs*/, int32_t /*nbInputs*/,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    return 0;
}

int32_t RoiAlignV0Plugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (!checkIO(nbInputs, nbOutputs) || !checkShapes(in[0].dims, in[1].dims, in[2].dims))
    {
        return -1;
    }
    return 0;
}

int32_t RoiAlignV0Plugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    SaiRoiAlignParams p;
    if (!checkShapes(inputDesc[0].dims, inputDesc[1].dims, inputDesc[2].dims)
        || !makeParams(inputDesc[0].dims, inputDesc[1].dims, p))
    {
        return -1;
    }
    if (p.R == 0)
    {
        return 0; // no RoI on this level: nothing to write, no launch
    }
    SaiIndexType const bt = inputDesc[2].type == DataType::kINT64 ? SaiIndexType::kINT64 : SaiIndexType::kINT32;
    cudaError_t const err = roiAlignV0Launch(p, inputs[0], inputs[1], inputs[2], bt, outputs[0], stream);
    if (err != cudaSuccess)
    {
        logError("enqueue failed with CUDA error " + std::to_string(static_cast<int32_t>(err)));
        return -1;
    }
    return 0;
}

std::string RoiAlignV0Plugin::attributesText() const
{
    std::ostringstream s;
    s << "scale" << mAttrs.spatialScale << ":out" << mAttrs.outputSize << ":n" << mAttrs.samplingRatio;
    return s.str();
}

void RoiAlignV0Plugin::writeFields(SaiFieldWriter& w) const
{
    w.addFloat("spatial_scale", mAttrs.spatialScale);
    w.addInts("output_size", {mAttrs.outputSize});
    w.addInts("sampling_ratio", {mAttrs.samplingRatio});
}

RoiAlignV0PluginCreator::RoiAlignV0PluginCreator()
    : SaiPluginCreatorBase({PluginField("spatial_scale", nullptr, PluginFieldType::kFLOAT32, 1),
        PluginField("output_size", nullptr, PluginFieldType::kINT32, 1),
        PluginField("sampling_ratio", nullptr, PluginFieldType::kINT32, 1)})
{
}

bool RoiAlignV0PluginCreator::readField(
    SaiFieldReader& r, std::string const& name, PluginField const& f, RoiAlignV0Attrs& a)
{
    if (name == "spatial_scale")
    {
        if (r.readFloat(f, a.spatialScale) && !(a.spatialScale > 0.F))
        {
            r.fail("field 'spatial_scale' must be > 0 (1 / the level's stride), got " + std::to_string(a.spatialScale));
        }
        return true;
    }
    if (name == "output_size")
    {
        r.readInt(f, a.outputSize, 1, kSAI_ROI_ALIGN_MAX_OUT);
        return true;
    }
    if (name == "sampling_ratio")
    {
        // v0.6's sample_num = 0 (adaptive) is not taken: the official configs set 2
        r.readInt(f, a.samplingRatio, 1, kSAI_ROI_ALIGN_MAX_SAMPLING);
        return true;
    }
    return false;
}

} // namespace plugin
} // namespace sai
