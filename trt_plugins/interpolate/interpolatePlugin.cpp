/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * TensorRT glue of sai::Interpolate (DESIGN.md 3.3). Inputs: 0 F [N,C,H,W], 1 M [N,1,H,W].
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
constexpr char const* kNAME = "Interpolate";

void logError(std::string const& msg) noexcept
{
    saiLogError(std::string(kNAME) + " plugin: " + msg);
}

std::string dimsStr(Dims const& d)
{
    std::ostringstream s;
    s << "[";
    for (int32_t i = 0; i < d.nbDims; ++i)
    {
        s << (i ? "," : "") << d.d[i];
    }
    s << "]";
    return s.str();
}
} // namespace

InterpolatePlugin::InterpolatePlugin(InterpolateAttrs attrs)
    : mAttrs(attrs)
{
}

IPluginCapability* InterpolatePlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

IPluginV3* InterpolatePlugin::clone() noexcept
{
    try
    {
        return new InterpolatePlugin(mAttrs);
    }
    catch (std::exception const& e)
    {
        logError(std::string("clone failed: ") + e.what());
    }
    return nullptr;
}

char const* InterpolatePlugin::getPluginName() const noexcept
{
    return kNAME;
}

char const* InterpolatePlugin::getPluginVersion() const noexcept
{
    return kSAI_PLUGIN_VERSION;
}

char const* InterpolatePlugin::getPluginNamespace() const noexcept
{
    return kSAI_PLUGIN_NAMESPACE;
}

int32_t InterpolatePlugin::getNbOutputs() const noexcept
{
    return 1;
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
        logError("F must be [N,C,H,W] and M [N,1,H,W], got F " + dimsStr(f) + " and M " + dimsStr(m));
        return false;
    }
    bool ok = m.d[1] < 0 || m.d[1] == 1;
    for (int32_t i : {0, 2, 3})
    {
        ok = ok && (f.d[i] < 0 || m.d[i] < 0 || f.d[i] == m.d[i]);
    }
    if (!ok)
    {
        logError("mask M must be [N,1,H,W] matching F " + dimsStr(f) + ", got " + dimsStr(m));
    }
    return ok;
}

bool InterpolatePlugin::makeParams(Dims const& f, SaiInterpParams& p) const noexcept
{
    if (f.nbDims != 4 || f.d[0] > INT32_MAX || f.d[1] > INT32_MAX || f.d[2] * f.d[3] > INT32_MAX
        || f.d[0] * f.d[2] * f.d[3] > INT32_MAX)
    {
        logError("F " + dimsStr(f) + " is not 4-D or too large");
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
        logError("invalid shape " + dimsStr(f) + " or attributes");
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
    if (inputTypes[0] != DataType::kFLOAT && inputTypes[0] != DataType::kHALF)
    {
        logError(std::string("supports FP32 and FP16 tensors, got F of type ") + saiDataTypeName(inputTypes[0]));
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
    if (nbInputs != 2 || nbOutputs != 1 || pos < 0 || pos >= 3)
    {
        return false;
    }
    PluginTensorDesc const& d = inOut[pos].desc;
    if (d.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    if (pos == 0)
    {
        return d.type == DataType::kFLOAT || d.type == DataType::kHALF;
    }
    return d.type == inOut[0].desc.type;
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
    return interpolateWorkspaceSize(p, inputs[0].desc.type == DataType::kHALF ? SaiDataType::kHALF : SaiDataType::kFLOAT);
}

int32_t InterpolatePlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (!checkIO(nbInputs, nbOutputs) || !checkShapes(in[0].dims, in[1].dims))
    {
        return -1;
    }
    return 0;
}

int32_t InterpolatePlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    SaiInterpParams p;
    if (!makeParams(inputDesc[0].dims, p))
    {
        return -1;
    }
    SaiDataType const t = inputDesc[0].type == DataType::kHALF ? SaiDataType::kHALF : SaiDataType::kFLOAT;
    cudaError_t const err
        = interpolateLaunch(p, t, inputs[0], inputs[1], outputs[0], workspace, interpolateWorkspaceSize(p, t), stream);
    if (err != cudaSuccess)
    {
        logError("enqueue failed with CUDA error " + std::to_string(static_cast<int32_t>(err)));
        return -1;
    }
    return 0;
}

IPluginV3* InterpolatePlugin::attachToContext(IPluginResourceContext* /*context*/) noexcept
{
    return clone();
}

PluginFieldCollection const* InterpolatePlugin::getFieldsToSerialize() noexcept
{
    try
    {
        mSerial = SaiFieldWriter();
        mSerial.addInts("kernel_size", {mAttrs.kernelSize});
        mSerial.addFloat("sigma", mAttrs.sigma);
        mSerial.addFloat("eps", mAttrs.eps);
        return mSerial.collection();
    }
    catch (std::exception const& e)
    {
        logError(std::string("getFieldsToSerialize: ") + e.what());
    }
    return nullptr;
}

InterpolatePluginCreator::InterpolatePluginCreator()
{
    mFieldNames.emplace_back("kernel_size", nullptr, PluginFieldType::kINT32, 1);
    mFieldNames.emplace_back("sigma", nullptr, PluginFieldType::kFLOAT32, 1);
    mFieldNames.emplace_back("eps", nullptr, PluginFieldType::kFLOAT32, 1);
    mFC.nbFields = static_cast<int32_t>(mFieldNames.size());
    mFC.fields = mFieldNames.data();
}

char const* InterpolatePluginCreator::getPluginName() const noexcept
{
    return kNAME;
}

char const* InterpolatePluginCreator::getPluginVersion() const noexcept
{
    return kSAI_PLUGIN_VERSION;
}

char const* InterpolatePluginCreator::getPluginNamespace() const noexcept
{
    return kSAI_PLUGIN_NAMESPACE;
}

PluginFieldCollection const* InterpolatePluginCreator::getFieldNames() noexcept
{
    return &mFC;
}

IPluginV3* InterpolatePluginCreator::createPlugin(
    char const* name, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept
{
    try
    {
        SaiFieldReader r(kNAME, name != nullptr ? name : "");
        InterpolateAttrs a;
        int32_t const nb = fc != nullptr ? fc->nbFields : 0;
        if (nb > 0 && fc->fields == nullptr)
        {
            r.fail("the field collection has no fields array");
        }
        for (int32_t i = 0; i < nb && fc->fields != nullptr; ++i)
        {
            PluginField const& f = fc->fields[i];
            std::string const field = f.name != nullptr ? f.name : "";
            if (field == "kernel_size")
            {
                if (r.readInt(f, a.kernelSize, 1, kSAI_MAX_INTERP_KERNEL) && a.kernelSize % 2 == 0)
                {
                    r.fail("field 'kernel_size' must be odd, got " + std::to_string(a.kernelSize));
                }
            }
            else if (field == "sigma")
            {
                r.readFloat(f, a.sigma);
            }
            else if (field == "eps")
            {
                if (r.readFloat(f, a.eps) && a.eps < 0.F)
                {
                    r.fail("field 'eps' must be >= 0, got " + std::to_string(a.eps));
                }
            }
            else
            {
                saiLog(ILogger::Severity::kVERBOSE, std::string(kNAME) + " plugin: ignoring unknown field '" + field + "'");
            }
        }
        if (!r.ok())
        {
            return nullptr;
        }
        return new InterpolatePlugin(a);
    }
    catch (std::exception const& e)
    {
        logError(std::string("createPlugin failed: ") + e.what());
    }
    return nullptr;
}

} // namespace plugin
} // namespace sai
