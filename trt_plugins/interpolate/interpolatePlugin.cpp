/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * TensorRT glue of sai::Interpolate (docs/design.md 3.3). Inputs: 0 F [N,C,H,W], 1 M [N,1,H,W].
 * Output 0 [N,C,H,W].
 */
#include "interpolatePlugin.h"
#include "interpolateKernel.h"

#include <exception>
#include <sstream>

using namespace nvinfer1;

namespace sai
{
namespace plugin
{

namespace
{
constexpr char const* kNAME = InterpolatePlugin::kName;

} // namespace

InterpolatePlugin::InterpolatePlugin(InterpolateAttrs attrs)
    : SaiPluginBase(attrs)
{
}

bool InterpolatePlugin::checkIO(int32_t nbInputs, int32_t nbOutputs) const noexcept
{
    if (nbInputs != 2 || nbOutputs != 1)
    {
        logError("expects 2 inputs (F, M) and 1 output, got " + std::to_string(nbInputs) + " inputs and "
            + std::to_string(nbOutputs) + " outputs");
        return false;
    }
    return true;
}

bool InterpolatePlugin::checkShapes(Dims const& f, Dims const& m) const noexcept
{
    if (f.nbDims != 4 || m.nbDims != 4)
    {
        logError("F must be [N,C,H,W] and M [N,1,H,W], got F " + saiDimsText(f) + " and M " + saiDimsText(m));
        return false;
    }
    bool ok = m.d[1] < 0 || m.d[1] == 1;
    for (int32_t i : {0, 2, 3})
    {
        ok = ok && (f.d[i] < 0 || m.d[i] < 0 || f.d[i] == m.d[i]);
    }
    if (!ok)
    {
        logError("mask M must be [N,1,H,W] matching F " + saiDimsText(f) + ", got " + saiDimsText(m));
    }
    return ok;
}

bool InterpolatePlugin::makeParams(Dims const& f, SaiInterpParams& p) const noexcept
{
    if (f.nbDims != 4 || f.d[0] > INT32_MAX || f.d[1] > INT32_MAX || f.d[2] * f.d[3] > INT32_MAX
        || f.d[0] * f.d[2] * f.d[3] > INT32_MAX)
    {
        logError("F " + saiDimsText(f) + " is not 4-D or too large");
        return false;
    }
    p.N = static_cast<int32_t>(f.d[0]);
    p.C = static_cast<int32_t>(f.d[1]);
    p.H = static_cast<int32_t>(f.d[2]);
    p.W = static_cast<int32_t>(f.d[3]);
    p.kernelSize = mAttrs.kernelSize;
    p.sigma = mAttrs.sigma;
    p.eps = mAttrs.eps;
    if (!saiInterpParamsValid(p))
    {
        logError("invalid shape " + saiDimsText(f) + " or attributes");
        return false;
    }
    return true;
}

int32_t InterpolatePlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (!checkIO(nbInputs, nbOutputs))
    {
        return -1;
    }
    SaiDataType t;
    if (!saiDataTypeOf(inputTypes[0], t) || interpolateKernelCaps().layouts[static_cast<int32_t>(t)] == 0)
    {
        logError(std::string("does not support F of type ") + saiDataTypeName(inputTypes[0]));
        return -1;
    }
    outputTypes[0] = inputTypes[0];
    return 0;
}

int32_t InterpolatePlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& /*exprBuilder*/) noexcept
{
    if (!checkIO(nbInputs, nbOutputs))
    {
        return -1;
    }
    if (inputs[0].nbDims != 4 || inputs[1].nbDims != 4)
    {
        logError("F must be [N,C,H,W] and M [N,1,H,W] (4-D), got " + std::to_string(inputs[0].nbDims) + "-D and "
            + std::to_string(inputs[1].nbDims) + "-D");
        return -1;
    }
    IDimensionExpr const* m1 = inputs[1].d[1];
    if (m1->isConstant() && m1->getConstantValue() != 1)
    {
        logError("mask M must be [N,1,H,W], got channel dimension " + std::to_string(m1->getConstantValue()));
        return -1;
    }
    for (int32_t i : {0, 2, 3})
    {
        IDimensionExpr const* a = inputs[0].d[i];
        IDimensionExpr const* b = inputs[1].d[i];
        if (a->isConstant() && b->isConstant() && a->getConstantValue() != b->getConstantValue())
        {
            logError("mask M must match F in N, H and W; dimension " + std::to_string(i) + " is "
                + std::to_string(b->getConstantValue()) + " instead of " + std::to_string(a->getConstantValue()));
            return -1;
        }
    }
    outputs[0] = inputs[0];
    return 0;
}

bool InterpolatePlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    // F: any (type, format) the kernels read; M: F's type (or FP32 where the kernels take an FP32
    // mask), any format; output: F's type and format.
    if (nbInputs != 2 || nbOutputs != 1 || pos < 0 || pos >= 3)
    {
        return false;
    }
    SaiKernelCaps const& caps = interpolateKernelCaps();
    PluginTensorDesc const& d = inOut[pos].desc;
    if (pos == 0)
    {
        return saiActivationFormatOk(d, caps);
    }
    if (pos == 1)
    {
        return saiMaskFormatOk(d, inOut[0].desc.type, caps);
    }
    return d.type == inOut[0].desc.type && d.format == inOut[0].desc.format;
}

int32_t InterpolatePlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (!checkIO(nbInputs, nbOutputs) || !checkShapes(in[0].desc.dims, in[1].desc.dims))
    {
        return -1;
    }
    return 0;
}

size_t InterpolatePlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    SaiInterpParams p;
    if (nbInputs < 1 || !makeParams(inputs[0].max, p))
    {
        return 0;
    }
    SaiDataType t = SaiDataType::kFLOAT;
    return saiDataTypeOf(inputs[0].desc.type, t) ? interpolateWorkspaceSize(p, t) : 0;
}

int32_t InterpolatePlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    SaiInterpLayouts l;
    if (!checkIO(nbInputs, nbOutputs) || !checkShapes(in[0].dims, in[1].dims) || !layoutsOf(in, out, l))
    {
        return -1;
    }
    uint64_t const key = saiShapeKey(in, nbInputs, out, nbOutputs, mTactic);
    if (key == mLoggedShapes)
    {
        return 0; // logged already: no text built on this path (it runs inside enqueue)
    }
    mLoggedShapes = key;
    saiLog(ILogger::Severity::kVERBOSE,
        std::string(kNAME) + " plugin: " + saiLayoutText("F", in[0], l.feature) + "; " + saiLayoutText("M", in[1], l.mask)
            + "; " + saiLayoutText("Y", out[0], l.out) + "; tactic " + std::to_string(mTactic));
    return 0;
}

bool InterpolatePlugin::layoutsOf(PluginTensorDesc const* in, PluginTensorDesc const* out, SaiInterpLayouts& l) const noexcept
{
    SaiKernelCaps const& caps = interpolateKernelCaps();
    bool const ok = saiTensorLayoutOf(in[0], l.feature) && saiCapsLayout(caps, l.feature.type, l.feature.layout)
        && saiTensorLayoutOf(in[1], l.mask) && saiMaskFormatOk(in[1], in[0].type, caps) && saiTensorLayoutOf(out[0], l.out)
        && out[0].type == in[0].type && out[0].format == in[0].format;
    if (!ok)
    {
        logError(std::string("unsupported type/format combination: F ") + saiDataTypeName(in[0].type) + " "
            + saiFormatName(in[0].format) + ", M " + saiDataTypeName(in[1].type) + " " + saiFormatName(in[1].format)
            + ", Y " + saiDataTypeName(out[0].type) + " " + saiFormatName(out[0].format));
    }
    return ok;
}

int32_t InterpolatePlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    SaiInterpParams p;
    SaiInterpLayouts l;
    if (!makeParams(inputDesc[0].dims, p) || !layoutsOf(inputDesc, outputDesc, l))
    {
        return -1;
    }
    SaiDataType const t = l.feature.type;
    cudaError_t const err = mRunner->run(
        p, t, l, mTactic, inputs[0], inputs[1], outputs[0], workspace, interpolateWorkspaceSize(p, t), stream);
    if (err != cudaSuccess)
    {
        logError("enqueue failed with CUDA error " + std::to_string(static_cast<int32_t>(err)) + ": "
            + saiLastLaunchError());
        return -1;
    }
    return 0;
}

std::string InterpolatePlugin::attributesText() const
{
    std::ostringstream s;
    s << "k" << mAttrs.kernelSize << ":sigma" << mAttrs.sigma << ":eps" << mAttrs.eps;
    return s.str();
}

void InterpolatePlugin::writeFields(SaiFieldWriter& w) const
{
    w.addInts("kernel_size", {mAttrs.kernelSize});
    w.addFloat("sigma", mAttrs.sigma);
    w.addFloat("eps", mAttrs.eps);
}

InterpolatePluginCreator::InterpolatePluginCreator()
    : SaiPluginCreatorBase({PluginField("kernel_size", nullptr, PluginFieldType::kINT32, 1),
        PluginField("sigma", nullptr, PluginFieldType::kFLOAT32, 1),
        PluginField("eps", nullptr, PluginFieldType::kFLOAT32, 1)})
{
}

bool InterpolatePluginCreator::readField(
    SaiFieldReader& r, std::string const& name, PluginField const& f, InterpolateAttrs& a)
{
    if (name == "kernel_size")
    {
        if (r.readInt(f, a.kernelSize, 1, kSAI_MAX_INTERP_KERNEL) && a.kernelSize % 2 == 0)
        {
            r.fail("field 'kernel_size' must be odd, got " + std::to_string(a.kernelSize));
        }
        return true;
    }
    if (name == "sigma")
    {
        r.readFloat(f, a.sigma);
        return true;
    }
    if (name == "eps")
    {
        if (r.readFloat(f, a.eps) && a.eps < 0.F)
        {
            r.fail("field 'eps' must be >= 0, got " + std::to_string(a.eps));
        }
        return true;
    }
    return false;
}

} // namespace plugin
} // namespace sai
