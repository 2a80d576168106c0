/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * TensorRT glue of sai::SparseBlock (README.md beside this file). Inputs (a [0] tensor: absent):
 *   0 X [N,C,H,W] (channels-last formats)  1 MW fp32 [2,C,3,3]  2 MB fp32 [2]
 *   3 WA [Cm,C,ka,ka]  4 BA [Cm]  5 WB [Cb,Cm,3,3]  6 BB [Cb]  7 WC [Cout,Cb,1,1]  8 TAIL_BIAS [Cout]
 *   9 WD [Cout,C,1,1]  10 BD [Cout]  11 WO [18,C,3,3]  12 BO [18]  (3..12 as the onnxruntime op's)
 *   optional 13 U1 fp32 [N,2,H1,W1], 14 U2 fp32 [N,2,H2,W2]: the uniforms of stochastic inference.
 * Output 0 Y [N,Cout,H2,W2], X's type and format.
 */
#include "sparseBlockPlugin.h"
#include "interpolateMath.h"
#include "sparseBlockKernel.h"

#include <cmath>
#include <exception>
#include <initializer_list>
#include <sstream>

using namespace nvinfer1;

namespace sai
{
namespace plugin
{

namespace
{
constexpr char const* kNAME = SparseBlockPlugin::kName;
enum : int32_t
{
    kX = 0,
    kMW,
    kMB,
    kWA,
    kBA,
    kWB,
    kBB,
    kWC,
    kTAILB,
    kWD,
    kBD,
    kWO,
    kBO,
    kU1,
    kU2,
    kMAX_INPUTS
};
constexpr int32_t kBIG = 1 << 20;
constexpr char const* kInputName[kMAX_INPUTS]
    = {"X", "MW", "MB", "WA", "BA", "WB", "BB", "WC", "TAIL_BIAS", "WD", "BD", "WO", "BO", "U1", "U2"};

std::string listStr(std::initializer_list<int64_t> v)
{
    std::ostringstream s;
    s << "[";
    int32_t i = 0;
    for (int64_t x : v)
    {
        s << (i++ ? "," : "") << x;
    }
    s << "]";
    return s.str();
}

bool known(Dims const& d)
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

//! A [0] tensor (no elements): an absent input.
bool empty(Dims const& d)
{
    for (int32_t i = 0; i < d.nbDims; ++i)
    {
        if (d.d[i] == 0)
        {
            return true;
        }
    }
    return d.nbDims == 0;
}

bool same(Dims const& d, std::initializer_list<int64_t> want)
{
    if (d.nbDims != static_cast<int32_t>(want.size()))
    {
        return false;
    }
    int32_t i = 0;
    for (int64_t w : want)
    {
        if (d.d[i++] != w)
        {
            return false;
        }
    }
    return true;
}

bool isWeight(int32_t pos)
{
    return pos >= kWA && pos <= kBO;
}
} // namespace

SparseBlockPlugin::SparseBlockPlugin(SparseBlockAttrs attrs)
    : SaiPluginBase(std::move(attrs))
{
}

bool SparseBlockPlugin::checkInputCount(int32_t nbInputs, int32_t nbOutputs) const noexcept
{
    if ((nbInputs != kU1 && nbInputs != kMAX_INPUTS) || nbOutputs != 1)
    {
        logError("expects 13 inputs (X, MW, MB, WA, BA, WB, BB, WC, TAIL_BIAS, WD, BD, WO, BO; [0] tensors for absent "
                 "ones) or 15 (+ the noise U1, U2) and 1 output, got "
            + std::to_string(nbInputs) + " inputs and " + std::to_string(nbOutputs) + " outputs");
        return false;
    }
    return true;
}

bool SparseBlockPlugin::makeParams(Dims const* dims, int32_t nbInputs, SaiBlockParams& p, bool& complete) const noexcept
{
    try
    {
        complete = false;
        for (int32_t i = 0; i < nbInputs; ++i)
        {
            if (!known(dims[i]))
            {
                if (i == kX && dims[kX].nbDims != 4)
                {
                    logError("input X must be 4-D [N,C,H,W], got " + saiDimsText(dims[kX]));
                    return false;
                }
                if (i != kX && i != kU1 && i != kU2)
                {
                    logError(std::string("input ") + kInputName[i] + " must have static dims (a constant of the "
                        "engine), got " + saiDimsText(dims[i]));
                    return false;
                }
                return true; // X or the noise is dynamic: checked again with concrete shapes
            }
        }
        Dims const& x = dims[kX];
        Dims const& wa = dims[kWA];
        Dims const& wb = dims[kWB];
        if (x.nbDims != 4 || x.d[1] < 1 || x.d[0] > INT32_MAX || x.d[1] > INT32_MAX || x.d[2] > INT32_MAX
            || x.d[3] > INT32_MAX)
        {
            logError("input X must be 4-D [N,C,H,W] with C >= 1, got " + saiDimsText(x));
            return false;
        }
        int64_t const c = x.d[1];
        if (wa.nbDims != 4 || wa.d[1] != c || wa.d[2] != wa.d[3] || (wa.d[2] != 1 && wa.d[2] != 3) || wa.d[0] < 1
            || wa.d[0] > kBIG)
        {
            logError("WA must be [Cm, " + std::to_string(c) + ", k, k] with k 1 or 3, got " + saiDimsText(wa));
            return false;
        }
        int64_t const cm = wa.d[0];
        if (wb.nbDims != 4 || wb.d[1] != cm || wb.d[2] != 3 || wb.d[3] != 3 || wb.d[0] < 1 || wb.d[0] > kBIG)
        {
            logError("WB must be [Cb, " + std::to_string(cm) + ", 3, 3], got " + saiDimsText(wb));
            return false;
        }
        int64_t const cb = wb.d[0];
        bool const hasC = !empty(dims[kWC]);
        Dims const& wc = dims[kWC];
        if (hasC && (wc.nbDims != 4 || wc.d[1] != cb || wc.d[2] != 1 || wc.d[3] != 1 || wc.d[0] > kBIG))
        {
            logError("WC must be [Cout, " + std::to_string(cb) + ", 1, 1] or [0] (BasicBlock), got " + saiDimsText(wc));
            return false;
        }
        int64_t const cout = hasC ? wc.d[0] : cb;
        bool const hasD = !empty(dims[kWD]);
        bool const deform = !empty(dims[kWO]);
        struct Want
        {
            int32_t input;
            bool present;
            std::initializer_list<int64_t> shape;
        };
        Want const wants[] = {
            {kMW, true, {2, c, 3, 3}},
            {kMB, true, {2}},
            {kBA, !empty(dims[kBA]), {cm}},
            {kBB, !empty(dims[kBB]), {cb}},
            {kTAILB, !empty(dims[kTAILB]), {cout}},
            {kWD, hasD, {cout, c, 1, 1}},
            {kBD, !empty(dims[kBD]), {cout}},
            {kWO, deform, {kSAI_BLOCK_OFFSET_CHANNELS, c, 3, 3}},
            {kBO, !empty(dims[kBO]), {kSAI_BLOCK_OFFSET_CHANNELS}},
        };
        for (Want const& w : wants)
        {
            if (w.present && !same(dims[w.input], w.shape))
            {
                logError(std::string("input ") + kInputName[w.input] + " must be " + listStr(w.shape)
                    + (w.input == kMW || w.input == kMB ? "" : " or [0] (absent)") + ", got " + saiDimsText(dims[w.input]));
                return false;
            }
        }
        if (!empty(dims[kBD]) && !hasD)
        {
            logError("BD is given without WD: the downsample conv's bias needs its weight");
            return false;
        }
        if (!empty(dims[kBO]) && !deform)
        {
            logError("BO is given without WO: the offset conv's bias needs its weight");
            return false;
        }
        p = SaiBlockParams{};
        p.N = static_cast<int32_t>(x.d[0]);
        p.C = static_cast<int32_t>(c);
        p.H = static_cast<int32_t>(x.d[2]);
        p.W = static_cast<int32_t>(x.d[3]);
        p.Cm = static_cast<int32_t>(cm);
        p.ka = static_cast<int32_t>(wa.d[2]);
        p.Cb = static_cast<int32_t>(cb);
        p.Cout = static_cast<int32_t>(cout);
        p.hasConv3 = hasC;
        p.hasDown = hasD;
        p.deform = deform;
        p.stochastic = nbInputs == kMAX_INPUTS;
        p.reluB = mAttrs.reluB == 1;
        p.strideA = mAttrs.strideA;
        p.strideB = mAttrs.strideB;
        p.downStride = mAttrs.downStride;
        p.offsetStride = mAttrs.offsetStride;
        p.maskStride1 = mAttrs.maskStrides[0];
        p.maskStride2 = mAttrs.maskStrides[1];
        p.kernelSize = mAttrs.kernelSize;
        p.gridInterval = mAttrs.gridInterval;
        p.sigma1 = mAttrs.sigma1;
        p.sigma2 = mAttrs.sigma2;
        p.eps = mAttrs.eps;
        p.temperature = mAttrs.temperature;
        if (char const* why = saiBlockFinalize(p))
        {
            logError(std::string("X ") + saiDimsText(x) + ": " + why);
            return false;
        }
        if (p.stochastic)
        {
            for (auto const& u : {std::make_pair(kU1, std::make_pair(p.H1, p.W1)), std::make_pair(kU2, std::make_pair(p.H2, p.W2))})
            {
                if (!same(dims[u.first], {p.N, 2, u.second.first, u.second.second}))
                {
                    logError(std::string("noise ") + kInputName[u.first] + " must be [N,2,Ho,Wo] = "
                        + listStr({p.N, 2, u.second.first, u.second.second}) + ", got " + saiDimsText(dims[u.first]));
                    return false;
                }
            }
        }
        complete = true;
        return true;
    }
    catch (std::exception const& e)
    {
        logError(std::string("makeParams: ") + e.what());
    }
    return false;
}

int32_t SparseBlockPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (!checkInputCount(nbInputs, nbOutputs))
    {
        return -1;
    }
    SaiDataType t;
    if (!saiDataTypeOf(inputTypes[kX], t) || sparseBlockKernelCaps().layouts[static_cast<int32_t>(t)] == 0)
    {
        logError(std::string("supports FP32, FP16 and BF16 activations, got X of type ") + saiDataTypeName(inputTypes[kX]));
        return -1;
    }
    outputTypes[0] = inputTypes[kX];
    return 0;
}

int32_t SparseBlockPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept
{
    try
    {
        if (!checkInputCount(nbInputs, nbOutputs))
        {
            return -1;
        }
        if (inputs[kX].nbDims != 4 || inputs[kWB].nbDims != 4 || inputs[kWC].nbDims < 1)
        {
            logError("X, WA and WB must be 4-D, got X " + std::to_string(inputs[kX].nbDims) + "-D, WB "
                + std::to_string(inputs[kWB].nbDims) + "-D");
            return -1;
        }
        IDimensionExpr const* wc0 = inputs[kWC].d[0];
        if (!wc0->isConstant() || !inputs[kWB].d[0]->isConstant())
        {
            logError("WB and WC must be constants of the engine (static dims)");
            return -1;
        }
        bool const hasC = inputs[kWC].nbDims == 4 && wc0->getConstantValue() > 0;
        int32_t const s = mAttrs.strideA * mAttrs.strideB;
        IDimensionExpr const* one = exprBuilder.constant(1);
        IDimensionExpr const* st = exprBuilder.constant(s);
        auto outSize = [&](IDimensionExpr const* size) {
            IDimensionExpr const* m1 = exprBuilder.operation(DimensionOperation::kSUB, *size, *one);
            IDimensionExpr const* q = exprBuilder.operation(DimensionOperation::kFLOOR_DIV, *m1, *st);
            return exprBuilder.operation(DimensionOperation::kSUM, *q, *one);
        };
        outputs[0].nbDims = 4;
        outputs[0].d[0] = inputs[kX].d[0];
        outputs[0].d[1] = hasC ? wc0 : inputs[kWB].d[0];
        outputs[0].d[2] = outSize(inputs[kX].d[2]);
        outputs[0].d[3] = outSize(inputs[kX].d[3]);
        return 0;
    }
    catch (std::exception const& e)
    {
        logError(std::string("getOutputShapes: ") + e.what());
    }
    return -1;
}

bool SparseBlockPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    // X: a channels-last (type, format) the kernels read, C a multiple of the vector (no padding
    // channels to write); MW, MB, U1, U2: FP32 kLINEAR; the weights: X's type, kLINEAR; Y: X's type and
    // format. No NCHW: the block's kernels are NHWC builds only (no slow "any" build to fall into).
    if ((nbInputs != kU1 && nbInputs != kMAX_INPUTS) || nbOutputs != 1 || pos < 0 || pos >= nbInputs + nbOutputs)
    {
        return false;
    }
    PluginTensorDesc const& d = inOut[pos].desc;
    PluginTensorDesc const& x = inOut[kX].desc;
    if (pos == kX)
    {
        SaiLayout l;
        if (!saiActivationFormatOk(d, sparseBlockKernelCaps()) || !saiLayoutOf(d.format, d.type, l))
        {
            return false;
        }
        int64_t const v = saiLayoutVector(l);
        return d.dims.nbDims == 4 && d.dims.d[1] > 0 && d.dims.d[1] % v == 0;
    }
    if (pos == nbInputs) // Y
    {
        SaiLayout l;
        return d.type == x.type && d.format == x.format && saiLayoutOf(d.format, d.type, l) && d.dims.nbDims == 4
            && d.dims.d[1] > 0 && d.dims.d[1] % saiLayoutVector(l) == 0;
    }
    if (pos == kMW || pos == kMB || pos == kU1 || pos == kU2)
    {
        return d.type == DataType::kFLOAT && d.format == TensorFormat::kLINEAR;
    }
    return isWeight(pos) && d.type == x.type && d.format == TensorFormat::kLINEAR;
}

int32_t SparseBlockPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (!checkInputCount(nbInputs, nbOutputs))
    {
        return -1;
    }
    Dims dims[kMAX_INPUTS];
    for (int32_t i = 0; i < nbInputs; ++i)
    {
        dims[i] = in[i].desc.dims;
    }
    SaiBlockParams p;
    bool complete = false;
    if (!makeParams(dims, nbInputs, p, complete))
    {
        return -1;
    }
    mNbInputs = nbInputs;
    return 0;
}

size_t SparseBlockPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    if (nbInputs != kU1 && nbInputs != kMAX_INPUTS)
    {
        return 0;
    }
    Dims dims[kMAX_INPUTS];
    for (int32_t i = 0; i < nbInputs; ++i)
    {
        dims[i] = inputs[i].max;
    }
    SaiBlockParams p;
    bool complete = false;
    SaiDataType t = SaiDataType::kFLOAT;
    if (!makeParams(dims, nbInputs, p, complete) || !complete || !saiDataTypeOf(inputs[kX].desc.type, t))
    {
        return 0;
    }
    return sparseBlockWorkspaceSize(p, t);
}

bool SparseBlockPlugin::layoutsOf(PluginTensorDesc const* in, PluginTensorDesc const* out, SaiBlockBuffers& b) const noexcept
{
    SaiKernelCaps const& caps = sparseBlockKernelCaps();
    bool const ok = saiTensorLayoutOf(in[kX], b.xLayout) && saiCapsLayout(caps, b.xLayout.type, b.xLayout.layout)
        && saiTensorLayoutOf(out[0], b.yLayout) && out[0].type == in[kX].type && out[0].format == in[kX].format;
    if (!ok)
    {
        logError(std::string("unsupported type/format combination: X ") + saiDataTypeName(in[kX].type) + " "
            + saiFormatName(in[kX].format) + ", Y " + saiDataTypeName(out[0].type) + " " + saiFormatName(out[0].format)
            + " (the block takes FP32 kHWC, FP16 kHWC8/kHWC16 or BF16 kHWC8, the same for X and Y)");
    }
    return ok;
}

int32_t SparseBlockPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (!checkInputCount(nbInputs, nbOutputs))
    {
        return -1;
    }
    Dims dims[kMAX_INPUTS];
    for (int32_t i = 0; i < nbInputs; ++i)
    {
        dims[i] = in[i].dims;
    }
    SaiBlockParams p;
    bool complete = false;
    SaiBlockBuffers b;
    if (!makeParams(dims, nbInputs, p, complete) || !layoutsOf(in, out, b))
    {
        return -1;
    }
    if (!complete)
    {
        logError("onShapeChange: X " + saiDimsText(in[kX].dims) + " is not a concrete shape");
        return -1;
    }
    mNbInputs = nbInputs;
    uint64_t const key = saiShapeKey(in, nbInputs, out, nbOutputs, mTactic);
    if (key == mLoggedShapes)
    {
        return 0; // logged already: no text built on this path (it runs inside enqueue)
    }
    mLoggedShapes = key;
    saiLog(ILogger::Severity::kVERBOSE,
        std::string(kNAME) + " plugin: " + saiLayoutText("X", in[kX], b.xLayout) + "; "
            + saiLayoutText("Y", out[0], b.yLayout) + "; " + (p.hasConv3 ? "Bottleneck" : "BasicBlock")
            + (p.deform ? " DCN" : "") + (p.hasDown ? " downsample" : "") + (p.stochastic ? " stochastic" : ""));
    return 0;
}

int32_t SparseBlockPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    Dims dims[kMAX_INPUTS];
    for (int32_t i = 0; i < mNbInputs; ++i)
    {
        dims[i] = inputDesc[i].dims;
    }
    SaiBlockParams p;
    bool complete = false;
    SaiBlockBuffers b;
    if (!makeParams(dims, mNbInputs, p, complete) || !complete || !layoutsOf(inputDesc, outputDesc, b))
    {
        return -1;
    }
    b.x = inputs[kX];
    b.maskWeight = inputs[kMW];
    b.maskBias = inputs[kMB];
    b.wa = inputs[kWA];
    b.ba = empty(dims[kBA]) ? nullptr : inputs[kBA];
    b.wb = inputs[kWB];
    b.bb = empty(dims[kBB]) ? nullptr : inputs[kBB];
    b.wc = p.hasConv3 ? inputs[kWC] : nullptr;
    b.tailBias = empty(dims[kTAILB]) ? nullptr : inputs[kTAILB];
    b.wd = p.hasDown ? inputs[kWD] : nullptr;
    b.bd = empty(dims[kBD]) ? nullptr : inputs[kBD];
    b.wo = p.deform ? inputs[kWO] : nullptr;
    b.bo = empty(dims[kBO]) ? nullptr : inputs[kBO];
    b.noise1 = p.stochastic ? inputs[kU1] : nullptr;
    b.noise2 = p.stochastic ? inputs[kU2] : nullptr;
    b.y = outputs[0];
    SaiDataType const t = b.xLayout.type;
    cudaError_t const err = mRunner->run(p, t, b, workspace, sparseBlockWorkspaceSize(p, t), stream);
    if (err != cudaSuccess)
    {
        logError("enqueue failed with CUDA error " + std::to_string(static_cast<int32_t>(err)) + ": "
            + saiLastLaunchError());
        return -1;
    }
    return 0;
}

std::string SparseBlockPlugin::attributesText() const
{
    std::ostringstream s;
    s << "sa" << mAttrs.strideA << ":sb" << mAttrs.strideB << ":relu" << mAttrs.reluB << ":ds" << mAttrs.downStride
      << ":os" << mAttrs.offsetStride << ":ms" << mAttrs.maskStrides[0] << "x" << mAttrs.maskStrides[1] << ":k"
      << mAttrs.kernelSize << ":g" << mAttrs.gridInterval << ":in" << mNbInputs;
    return s.str();
}

void SparseBlockPlugin::writeFields(SaiFieldWriter& w) const
{
    w.addInts("stride_a", {mAttrs.strideA});
    w.addInts("stride_b", {mAttrs.strideB});
    w.addInts("relu_b", {mAttrs.reluB});
    w.addInts("down_stride", {mAttrs.downStride});
    w.addInts("offset_stride", {mAttrs.offsetStride});
    w.addInts("mask_strides", mAttrs.maskStrides);
    w.addFloat("sigma1", mAttrs.sigma1);
    w.addFloat("sigma2", mAttrs.sigma2);
    w.addInts("kernel_size", {mAttrs.kernelSize});
    w.addFloat("eps", mAttrs.eps);
    w.addFloat("temperature", mAttrs.temperature);
    w.addInts("grid_interval", {mAttrs.gridInterval});
}

// ------------------------------------------------------------------------------------------------
// creator
// ------------------------------------------------------------------------------------------------

SparseBlockPluginCreator::SparseBlockPluginCreator()
    : SaiPluginCreatorBase({PluginField("stride_a", nullptr, PluginFieldType::kINT32, 1),
        PluginField("stride_b", nullptr, PluginFieldType::kINT32, 1),
        PluginField("relu_b", nullptr, PluginFieldType::kINT32, 1),
        PluginField("down_stride", nullptr, PluginFieldType::kINT32, 1),
        PluginField("offset_stride", nullptr, PluginFieldType::kINT32, 1),
        PluginField("mask_strides", nullptr, PluginFieldType::kINT32, 2),
        PluginField("sigma1", nullptr, PluginFieldType::kFLOAT32, 1),
        PluginField("sigma2", nullptr, PluginFieldType::kFLOAT32, 1),
        PluginField("kernel_size", nullptr, PluginFieldType::kINT32, 1),
        PluginField("eps", nullptr, PluginFieldType::kFLOAT32, 1),
        PluginField("temperature", nullptr, PluginFieldType::kFLOAT32, 1),
        PluginField("grid_interval", nullptr, PluginFieldType::kINT32, 1)})
{
}

namespace
{
//! A float field that must be > 0 (`strict`) or >= 0.
void readNonNegative(SaiFieldReader& r, PluginField const& f, float& out, bool strict)
{
    float v = 0.F;
    if (r.readFloat(f, v))
    {
        if (strict ? !(v > 0.F) : !(v >= 0.F))
        {
            r.fail(std::string("field '") + f.name + "' must be " + (strict ? "> 0" : ">= 0") + ", got "
                + std::to_string(v));
        }
        else
        {
            out = v;
        }
    }
}
} // namespace

bool SparseBlockPluginCreator::readField(SaiFieldReader& r, std::string const& name, PluginField const& f, SparseBlockAttrs& a)
{
    if (name == "stride_a")
    {
        r.readInt(f, a.strideA, 1, kBIG);
    }
    else if (name == "stride_b")
    {
        r.readInt(f, a.strideB, 1, kBIG);
    }
    else if (name == "relu_b")
    {
        r.readInt(f, a.reluB, 0, 1);
    }
    else if (name == "down_stride")
    {
        r.readInt(f, a.downStride, 1, kBIG);
    }
    else if (name == "offset_stride")
    {
        r.readInt(f, a.offsetStride, 1, kBIG);
    }
    else if (name == "mask_strides")
    {
        r.readInts(f, a.maskStrides, 2, 2, 1, kBIG);
    }
    else if (name == "sigma1")
    {
        readNonNegative(r, f, a.sigma1, true);
    }
    else if (name == "sigma2")
    {
        readNonNegative(r, f, a.sigma2, true);
    }
    else if (name == "kernel_size")
    {
        int32_t k = a.kernelSize;
        if (r.readInt(f, k, 1, kSAI_MAX_INTERP_KERNEL))
        {
            if (k % 2 == 0)
            {
                r.fail("field 'kernel_size' must be odd, got " + std::to_string(k));
            }
            else
            {
                a.kernelSize = k;
            }
        }
    }
    else if (name == "eps")
    {
        readNonNegative(r, f, a.eps, false);
    }
    else if (name == "temperature")
    {
        readNonNegative(r, f, a.temperature, true);
    }
    else if (name == "grid_interval")
    {
        r.readInt(f, a.gridInterval, 0, kBIG);
    }
    else
    {
        return false;
    }
    return true;
}

} // namespace plugin
} // namespace sai
