/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * TensorRT glue of sai::SparseSampleConv (docs/design.md 3.2). Inputs: 0 X [N,C,H,W], 1 M [N,1,Ho,Wo],
 * 2 W [Cout,C/group,kh,kw], optional 3 B [Cout], optional 4 Offset [N,2*deform_groups*kh*kw,Ho,Wo];
 * the variant follows from the input count (3, 4 or 5). Output 0 Y [N,Cout,Ho,Wo].
 */
#include "sparseSampleConvPlugin.h"
#include "sparseSampleConvKernel.h"

#include <exception>
#include <sstream>

using namespace nvinfer1;

namespace sai
{
namespace plugin
{

namespace
{
constexpr char const* kNAME = SparseSampleConvPlugin::kName;
constexpr int32_t kX = 0;
constexpr int32_t kMASK = 1;
constexpr int32_t kWEIGHT = 2;
constexpr int32_t kBIAS = 3;
constexpr int32_t kOFFSET = 4;
constexpr int32_t kBIG = 1 << 20;

//! "FP32 and FP16" (the activation types the linked kernels take)
std::string kernelTypesText()
{
    SaiKernelCaps const& caps = sparseSampleConvKernelCaps();
    std::string out;
    char const* names[kSAI_NB_DATA_TYPES] = {"FP32", "FP16", "BF16"};
    for (int32_t i = 0; i < kSAI_NB_DATA_TYPES; ++i)
    {
        if (caps.layouts[i] != 0)
        {
            out += (out.empty() ? "" : " and ") + std::string(names[i]);
        }
    }
    return out;
}

bool allKnown(Dims const& d)
{
    for (int32_t i = 0; i < d.nbDims; ++i)
    {
        if (d.d[i] < 0)
        {
            return false;
        }
    }
    return true;
}

bool fitsInt32(Dims const& d)
{
    for (int32_t i = 0; i < d.nbDims; ++i)
    {
        if (d.d[i] > INT32_MAX)
        {
            return false;
        }
    }
    return true;
}
} // namespace

SparseSampleConvPlugin::SparseSampleConvPlugin(SparseSampleConvAttrs attrs)
    : SaiPluginBase(std::move(attrs))
{
}

bool SparseSampleConvPlugin::checkInputCount(int32_t nbInputs, int32_t nbOutputs) const noexcept
{
    if (nbInputs < 3 || nbInputs > 5 || nbOutputs != 1)
    {
        logError("expects 3, 4 or 5 inputs (X, M, W [, B [, Offset]]) and 1 output, got " + std::to_string(nbInputs)
            + " inputs and " + std::to_string(nbOutputs) + " outputs");
        return false;
    }
    return true;
}

bool SparseSampleConvPlugin::makeParams(Dims const& x, Dims const& w, SaiConvParams& p) const noexcept
{
    if (x.nbDims != 4 || w.nbDims != 4 || !fitsInt32(x) || !fitsInt32(w))
    {
        logError("X and W must be 4-D, got X " + saiDimsText(x) + " and W " + saiDimsText(w));
        return false;
    }
    p = saiConvParamsOf(x.d, w.d, mAttrs.strides.data(), mAttrs.pads.data(), mAttrs.dilations.data(), mAttrs.group,
        mAttrs.deformGroups, mAttrs.activation);
    if (!saiConvFinalize(p) || w.d[1] != p.cinPerGroup)
    {
        logError("X " + saiDimsText(x) + " and W " + saiDimsText(w) + " do not fit group=" + std::to_string(p.groups)
            + ", deform_groups=" + std::to_string(p.deformGroups)
            + " and these strides/pads/dilations (W must be [Cout, C/group, kh, kw], C and Cout divisible by "
              "group, C by deform_groups, output size >= 1)");
        return false;
    }
    return true;
}

bool SparseSampleConvPlugin::checkShapes(Dims const* dims, int32_t nbInputs) const noexcept
{
    static constexpr int32_t kRank[5] = {4, 4, 4, 1, 4};
    static constexpr char const* kInputName[5] = {"X", "M", "W", "B", "Offset"};
    for (int32_t i = 0; i < nbInputs; ++i)
    {
        if (dims[i].nbDims != kRank[i])
        {
            logError(std::string("input ") + kInputName[i] + " must be " + std::to_string(kRank[i]) + "-D, got "
                + saiDimsText(dims[i]));
            return false;
        }
    }
    Dims const& m = dims[kMASK];
    if (m.d[1] >= 0 && m.d[1] != 1)
    {
        logError("mask M must be [N,1,Ho,Wo], got " + saiDimsText(m));
        return false;
    }
    if (!allKnown(dims[kX]) || !allKnown(dims[kWEIGHT]))
    {
        return true; // checked again with concrete shapes in onShapeChange
    }
    SaiConvParams p;
    if (!makeParams(dims[kX], dims[kWEIGHT], p))
    {
        return false;
    }
    int64_t const wantM[4] = {p.N, 1, p.Ho, p.Wo};
    for (int32_t i = 0; i < 4; ++i)
    {
        if (m.d[i] >= 0 && m.d[i] != wantM[i])
        {
            logError("mask M must be [N,1,Ho,Wo] = [" + std::to_string(p.N) + ",1," + std::to_string(p.Ho) + ","
                + std::to_string(p.Wo) + "] for X " + saiDimsText(dims[kX]) + ", got " + saiDimsText(m));
            return false;
        }
    }
    if (nbInputs > kBIAS && dims[kBIAS].d[0] >= 0 && dims[kBIAS].d[0] != p.Cout)
    {
        logError("bias B must be [" + std::to_string(p.Cout) + "], got " + saiDimsText(dims[kBIAS]));
        return false;
    }
    if (nbInputs > kOFFSET)
    {
        int64_t const wantO[4] = {p.N, 2LL * p.deformGroups * p.kernelTaps, p.Ho, p.Wo};
        for (int32_t i = 0; i < 4; ++i)
        {
            if (dims[kOFFSET].d[i] >= 0 && dims[kOFFSET].d[i] != wantO[i])
            {
                logError("Offset must be [N, 2*deform_groups*kh*kw, Ho, Wo] = [" + std::to_string(wantO[0]) + ","
                    + std::to_string(wantO[1]) + "," + std::to_string(wantO[2]) + "," + std::to_string(wantO[3])
                    + "], got " + saiDimsText(dims[kOFFSET]));
                return false;
            }
        }
    }
    return true;
}

int32_t SparseSampleConvPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (!checkInputCount(nbInputs, nbOutputs))
    {
        return -1;
    }
    SaiDataType t;
    if (!saiDataTypeOf(inputTypes[0], t) || sparseSampleConvKernelCaps().layouts[static_cast<int32_t>(t)] == 0)
    {
        logError(std::string("supports ") + kernelTypesText() + " activations, got X of type "
            + saiDataTypeName(inputTypes[0]));
        return -1;
    }
    outputTypes[0] = inputTypes[0];
    return 0;
}

int32_t SparseSampleConvPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
    DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
    IExprBuilder& exprBuilder) noexcept
{
    try
    {
        if (!checkInputCount(nbInputs, nbOutputs))
        {
            return -1;
        }
        static constexpr int32_t kRank[5] = {4, 4, 4, 1, 4};
        for (int32_t i = 0; i < nbInputs; ++i)
        {
            if (inputs[i].nbDims != kRank[i])
            {
                logError("input " + std::to_string(i) + " must be " + std::to_string(kRank[i]) + "-D, got "
                    + std::to_string(inputs[i].nbDims) + "-D");
                return -1;
            }
        }
        IDimensionExpr const* m1 = inputs[kMASK].d[1];
        if (m1->isConstant() && m1->getConstantValue() != 1)
        {
            logError("mask M must be [N,1,Ho,Wo], got channel dimension " + std::to_string(m1->getConstantValue()));
            return -1;
        }
        DimsExprs const& x = inputs[kX];
        DimsExprs const& w = inputs[kWEIGHT];
        outputs[0].nbDims = 4;
        outputs[0].d[0] = x.d[0];
        outputs[0].d[1] = w.d[0];
        outputs[0].d[2] = saiConvOutputExpr(
            exprBuilder, *x.d[2], *w.d[2], mAttrs.pads[0] + mAttrs.pads[2], mAttrs.strides[0], mAttrs.dilations[0]);
        outputs[0].d[3] = saiConvOutputExpr(
            exprBuilder, *x.d[3], *w.d[3], mAttrs.pads[1] + mAttrs.pads[3], mAttrs.strides[1], mAttrs.dilations[1]);
        return 0;
    }
    catch (std::exception const& e)
    {
        logError(std::string("getOutputShapes: ") + e.what());
    }
    return -1;
}

bool SparseSampleConvPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    // X: any (type, format) the kernels read; M: X's type (or FP32 where the kernels take an FP32
    // mask), any format; W, B: dense, X's type; Offset and Y: X's type and format.
    if (nbInputs < 3 || nbInputs > 5 || nbOutputs != 1 || pos < 0 || pos >= nbInputs + nbOutputs)
    {
        return false;
    }
    SaiKernelCaps const& caps = sparseSampleConvKernelCaps();
    PluginTensorDesc const& d = inOut[pos].desc;
    PluginTensorDesc const& x = inOut[kX].desc;
    if (pos == kX)
    {
        return saiActivationFormatOk(d, caps);
    }
    if (pos == kMASK)
    {
        return saiMaskFormatOk(d, x.type, caps);
    }
    if (pos == kWEIGHT || pos == kBIAS)
    {
        return d.type == x.type && d.format == TensorFormat::kLINEAR;
    }
    return d.type == x.type && d.format == x.format; // Offset, Y
}

int32_t SparseSampleConvPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (!checkInputCount(nbInputs, nbOutputs))
    {
        return -1;
    }
    Dims dims[5];
    for (int32_t i = 0; i < nbInputs; ++i)
    {
        dims[i] = in[i].desc.dims;
    }
    if (!checkShapes(dims, nbInputs))
    {
        return -1;
    }
    mNbInputs = nbInputs;
    return 0;
}

size_t SparseSampleConvPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    if (nbInputs < 3)
    {
        return 0;
    }
    SaiConvParams p;
    if (!makeParams(inputs[kX].max, inputs[kWEIGHT].max, p))
    {
        return 0;
    }
    SaiDataType t = SaiDataType::kFLOAT;
    if (!saiDataTypeOf(inputs[kX].desc.type, t))
    {
        return 0;
    }
    return sparseSampleConvWorkspaceSize(p, t);
}

int32_t SparseSampleConvPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (!checkInputCount(nbInputs, nbOutputs))
    {
        return -1;
    }
    Dims dims[5];
    for (int32_t i = 0; i < nbInputs; ++i)
    {
        dims[i] = in[i].dims;
    }
    if (!checkShapes(dims, nbInputs))
    {
        return -1;
    }
    mNbInputs = nbInputs;
    SaiConvBuffers b;
    if (!layoutsOf(in, out, b))
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
        std::string(kNAME) + " plugin: " + saiLayoutText("X", in[kX], b.xLayout) + "; "
            + saiLayoutText("M", in[kMASK], b.maskLayout) + "; "
            + (nbInputs > kOFFSET ? saiLayoutText("Offset", in[kOFFSET], b.offsetLayout) + "; " : std::string())
            + saiLayoutText("Y", out[0], b.yLayout) + "; tactic " + std::to_string(mTactic));
    return 0;
}

bool SparseSampleConvPlugin::layoutsOf(PluginTensorDesc const* in, PluginTensorDesc const* out, SaiConvBuffers& b) const noexcept
{
    SaiKernelCaps const& caps = sparseSampleConvKernelCaps();
    bool ok = saiTensorLayoutOf(in[kX], b.xLayout) && saiCapsLayout(caps, b.xLayout.type, b.xLayout.layout)
        && saiTensorLayoutOf(in[kMASK], b.maskLayout) && saiTensorLayoutOf(out[0], b.yLayout)
        && saiMaskFormatOk(in[kMASK], in[kX].type, caps) && out[0].type == in[kX].type && out[0].format == in[kX].format;
    if (ok && mNbInputs > kOFFSET)
    {
        ok = saiTensorLayoutOf(in[kOFFSET], b.offsetLayout) && in[kOFFSET].type == in[kX].type
            && in[kOFFSET].format == in[kX].format;
    }
    if (!ok)
    {
        logError(std::string("unsupported type/format combination: X ") + saiDataTypeName(in[kX].type) + " "
            + saiFormatName(in[kX].format) + ", M " + saiDataTypeName(in[kMASK].type) + " "
            + saiFormatName(in[kMASK].format) + ", Y " + saiDataTypeName(out[0].type) + " " + saiFormatName(out[0].format));
    }
    b.tactic = mTactic;
    return ok;
}

int32_t SparseSampleConvPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    SaiConvParams p;
    SaiConvBuffers b;
    if (!makeParams(inputDesc[kX].dims, inputDesc[kWEIGHT].dims, p) || !layoutsOf(inputDesc, outputDesc, b))
    {
        return -1;
    }
    b.x = inputs[kX];
    b.mask = inputs[kMASK];
    b.weight = inputs[kWEIGHT];
    b.bias = mNbInputs > kBIAS ? inputs[kBIAS] : nullptr;
    b.offset = mNbInputs > kOFFSET ? inputs[kOFFSET] : nullptr;
    b.y = outputs[0];
    SaiDataType const t = b.xLayout.type;
    size_t const ws = sparseSampleConvWorkspaceSize(p, t);
    cudaError_t const err = mRunner->run(p, t, b, workspace, ws, stream);
    if (err != cudaSuccess)
    {
        logError("enqueue failed with CUDA error " + std::to_string(static_cast<int32_t>(err)) + ": "
            + saiLastLaunchError());
        return -1;
    }
    return 0;
}

std::string SparseSampleConvPlugin::attributesText() const
{
    std::ostringstream s;
    s << "s" << mAttrs.strides[0] << "x" << mAttrs.strides[1] << ":p" << mAttrs.pads[0] << "," << mAttrs.pads[1] << ","
      << mAttrs.pads[2] << "," << mAttrs.pads[3] << ":d" << mAttrs.dilations[0] << "x" << mAttrs.dilations[1] << ":g"
      << mAttrs.group << ":dg" << mAttrs.deformGroups << ":" << saiActivationName(mAttrs.activation) << ":in"
      << mNbInputs;
    return s.str();
}

void SparseSampleConvPlugin::writeFields(SaiFieldWriter& w) const
{
    w.addInts("strides", mAttrs.strides);
    w.addInts("pads", mAttrs.pads);
    w.addInts("dilations", mAttrs.dilations);
    w.addInts("group", {mAttrs.group});
    w.addInts("deform_groups", {mAttrs.deformGroups});
    w.addString("activation", saiActivationName(mAttrs.activation));
}

// ------------------------------------------------------------------------------------------------
// creator
// ------------------------------------------------------------------------------------------------

SparseSampleConvPluginCreator::SparseSampleConvPluginCreator()
    : SaiPluginCreatorBase({PluginField("strides", nullptr, PluginFieldType::kINT32, 2),
        PluginField("pads", nullptr, PluginFieldType::kINT32, 4),
        PluginField("dilations", nullptr, PluginFieldType::kINT32, 2),
        PluginField("group", nullptr, PluginFieldType::kINT32, 1),
        PluginField("deform_groups", nullptr, PluginFieldType::kINT32, 1),
        PluginField("activation", nullptr, PluginFieldType::kCHAR, 5)})
{
}

bool SparseSampleConvPluginCreator::readField(
    SaiFieldReader& r, std::string const& name, PluginField const& f, SparseSampleConvAttrs& a)
{
    if (name == "strides")
    {
        r.readInts(f, a.strides, 2, 2, 1, kBIG);
    }
    else if (name == "pads")
    {
        r.readInts(f, a.pads, 4, 4, 0, kBIG);
    }
    else if (name == "dilations")
    {
        r.readInts(f, a.dilations, 2, 2, 1, kBIG);
    }
    else if (name == "group")
    {
        r.readInt(f, a.group, 1, kBIG);
    }
    else if (name == "deform_groups")
    {
        r.readInt(f, a.deformGroups, 1, kBIG);
    }
    else if (name == "activation")
    {
        std::string s;
        if (r.readString(f, s))
        {
            int32_t const act = saiActivationFromString(s.c_str());
            if (act < 0)
            {
                r.fail("field 'activation' must be \"none\" or \"relu\", got \"" + s + "\"");
            }
            else
            {
                a.activation = act;
            }
        }
    }
    else
    {
        return false;
    }
    return true;
}

} // namespace plugin
} // namespace sai
