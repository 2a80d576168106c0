/*
 * SPDX-License-Identifier: Apache-2.0
 */
#include "saiPluginCommon.h"

#include <cmath>
#include <cstring>
#include <mutex>
#include <sstream>

using namespace nvinfer1;

namespace sai
{
namespace plugin
{

namespace
{
std::mutex gLoggerMutex;
ILoggerFinder* gLoggerFinder{nullptr};

char const* typeName(PluginFieldType t)
{
    switch (t)
    {
    case PluginFieldType::kFLOAT16: return "kFLOAT16";
    case PluginFieldType::kFLOAT32: return "kFLOAT32";
    case PluginFieldType::kFLOAT64: return "kFLOAT64";
    case PluginFieldType::kINT8: return "kINT8";
    case PluginFieldType::kINT16: return "kINT16";
    case PluginFieldType::kINT32: return "kINT32";
    case PluginFieldType::kCHAR: return "kCHAR";
    case PluginFieldType::kDIMS: return "kDIMS";
    case PluginFieldType::kINT64: return "kINT64";
    default: return "another type";
    }
}
} // namespace

void saiSetLoggerFinder(ILoggerFinder* finder) noexcept
{
    std::lock_guard<std::mutex> lock(gLoggerMutex);
    gLoggerFinder = finder;
}

void saiLog(ILogger::Severity severity, std::string const& message) noexcept
{
    try
    {
        std::lock_guard<std::mutex> lock(gLoggerMutex);
        ILogger* logger = gLoggerFinder != nullptr ? gLoggerFinder->findLogger() : nullptr;
        if (logger != nullptr)
        {
            logger->log(severity, message.c_str());
        }
    }
    catch (...)
    {
    }
}

SaiFieldReader::SaiFieldReader(std::string pluginName, std::string nodeName)
    : mPrefix(std::move(pluginName) + " plugin" + (nodeName.empty() ? std::string() : " (node '" + nodeName + "')"))
{
}

void SaiFieldReader::fail(std::string const& message)
{
    mOk = false;
    saiLogError(mPrefix + ": " + message);
}

bool SaiFieldReader::readInts(
    PluginField const& f, std::vector<int32_t>& out, int32_t minLen, int32_t maxLen, int32_t lo, int32_t hi)
{
    std::ostringstream err;
    if (f.type != PluginFieldType::kINT32)
    {
        err << "field '" << f.name << "' must be kINT32, got " << typeName(f.type);
    }
    else if (f.length < minLen || f.length > maxLen || (f.length > 0 && f.data == nullptr))
    {
        err << "field '" << f.name << "' must have " << minLen;
        if (maxLen != minLen)
        {
            err << ".." << maxLen;
        }
        err << " value(s), got " << f.length;
    }
    else
    {
        auto const* v = static_cast<int32_t const*>(f.data);
        std::vector<int32_t> vals(v, v + f.length);
        for (int32_t x : vals)
        {
            if (x < lo || x > hi)
            {
                err << "field '" << f.name << "' value " << x << " is out of range [" << lo << ", " << hi << "]";
                break;
            }
        }
        if (err.str().empty())
        {
            out = vals;
            return true;
        }
    }
    fail(err.str());
    return false;
}

bool SaiFieldReader::readInt(PluginField const& f, int32_t& out, int32_t lo, int32_t hi)
{
    std::vector<int32_t> v;
    if (!readInts(f, v, 1, 1, lo, hi))
    {
        return false;
    }
    out = v[0];
    return true;
}

bool SaiFieldReader::readFloat(PluginField const& f, float& out)
{
    std::ostringstream err;
    if (f.type != PluginFieldType::kFLOAT32 && f.type != PluginFieldType::kFLOAT64)
    {
        err << "field '" << f.name << "' must be kFLOAT32, got " << typeName(f.type);
    }
    else if (f.length != 1 || f.data == nullptr)
    {
        err << "field '" << f.name << "' must have 1 value, got " << f.length;
    }
    else
    {
        double const v = f.type == PluginFieldType::kFLOAT32 ? static_cast<double>(*static_cast<float const*>(f.data))
                                                             : *static_cast<double const*>(f.data);
        if (std::isfinite(v))
        {
            out = static_cast<float>(v);
            return true;
        }
        err << "field '" << f.name << "' must be finite, got " << v;
    }
    fail(err.str());
    return false;
}

bool SaiFieldReader::readString(PluginField const& f, std::string& out)
{
    if (f.type != PluginFieldType::kCHAR)
    {
        fail(std::string("field '") + f.name + "' must be kCHAR (a string), got " + typeName(f.type));
        return false;
    }
    if (f.length < 0 || (f.length > 0 && f.data == nullptr))
    {
        fail(std::string("field '") + f.name + "' has an invalid length");
        return false;
    }
    auto const* s = static_cast<char const*>(f.data);
    size_t n = 0;
    while (n < static_cast<size_t>(f.length) && s[n] != '\0')
    {
        ++n;
    }
    out.assign(s == nullptr ? "" : s, n);
    return true;
}

void SaiFieldWriter::addInts(char const* name, std::vector<int32_t> const& values)
{
    mInts.push_back(std::make_unique<std::vector<int32_t>>(values));
    mFields.emplace_back(name, mInts.back()->data(), PluginFieldType::kINT32, static_cast<int32_t>(values.size()));
}

void SaiFieldWriter::addFloat(char const* name, float value)
{
    mFloats.push_back(std::make_unique<float>(value));
    mFields.emplace_back(name, mFloats.back().get(), PluginFieldType::kFLOAT32, 1);
}

void SaiFieldWriter::addString(char const* name, std::string const& value)
{
    mStrings.push_back(std::make_unique<std::string>(value));
    mFields.emplace_back(
        name, mStrings.back()->c_str(), PluginFieldType::kCHAR, static_cast<int32_t>(value.size() + 1));
}

PluginFieldCollection const* SaiFieldWriter::collection()
{
    mCollection.nbFields = static_cast<int32_t>(mFields.size());
    mCollection.fields = mFields.data();
    return &mCollection;
}

IDimensionExpr const* saiConvOutputExpr(IExprBuilder& b, IDimensionExpr const& size, IDimensionExpr const& kernel,
    int32_t padSum, int32_t stride, int32_t dilation)
{
    // span = size + padSum - 1 - dilation * (kernel - 1)
    IDimensionExpr const* km1 = b.operation(DimensionOperation::kSUB, kernel, *b.constant(1));
    IDimensionExpr const* dk = b.operation(DimensionOperation::kPROD, *b.constant(dilation), *km1);
    IDimensionExpr const* sp = b.operation(DimensionOperation::kSUM, size, *b.constant(padSum - 1));
    IDimensionExpr const* span = b.operation(DimensionOperation::kSUB, *sp, *dk);
    IDimensionExpr const* q = b.operation(DimensionOperation::kFLOOR_DIV, *span, *b.constant(stride));
    return b.operation(DimensionOperation::kSUM, *q, *b.constant(1));
}

std::string saiDimsText(Dims const& d)
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

char const* saiDataTypeName(DataType t)
{
    switch (t)
    {
    case DataType::kFLOAT: return "FP32";
    case DataType::kHALF: return "FP16";
    case DataType::kBF16: return "BF16";
    case DataType::kINT8: return "INT8";
    case DataType::kINT32: return "INT32";
    case DataType::kBOOL: return "BOOL";
    default: return "an unsupported type";
    }
}

char const* saiFormatName(TensorFormat f)
{
    switch (f)
    {
    case TensorFormat::kLINEAR: return "kLINEAR";
    case TensorFormat::kHWC: return "kHWC";
    case TensorFormat::kHWC8: return "kHWC8";
    case TensorFormat::kHWC16: return "kHWC16";
    case TensorFormat::kCHW32: return "kCHW32";
    default: return "another format";
    }
}

bool saiDataTypeOf(DataType t, SaiDataType& out)
{
    switch (t)
    {
    case DataType::kFLOAT: out = SaiDataType::kFLOAT; return true;
    case DataType::kHALF: out = SaiDataType::kHALF; return true;
    case DataType::kBF16: out = SaiDataType::kBF16; return true;
    default: return false;
    }
}

bool saiLayoutOf(TensorFormat f, DataType t, SaiLayout& out)
{
    // TensorRT's definitions (NvInferRuntimeBase.h, 10.0 .. 11.x): kHWC is FP32 (or UINT8) only,
    // kHWC8 FP16/BF16, kHWC16 FP16; kLINEAR any type.
    switch (f)
    {
    case TensorFormat::kLINEAR: out = SaiLayout::kNCHW; return true;
    case TensorFormat::kHWC: out = SaiLayout::kNHWC; return t == DataType::kFLOAT;
    case TensorFormat::kHWC8: out = SaiLayout::kNHWC8; return t == DataType::kHALF || t == DataType::kBF16;
    case TensorFormat::kHWC16: out = SaiLayout::kNHWC16; return t == DataType::kHALF;
    default: return false;
    }
}

bool saiActivationFormatOk(PluginTensorDesc const& d, SaiKernelCaps const& caps)
{
    SaiDataType t;
    SaiLayout l;
    return saiDataTypeOf(d.type, t) && saiLayoutOf(d.format, d.type, l) && saiCapsLayout(caps, t, l);
}

bool saiMaskFormatOk(PluginTensorDesc const& mask, DataType activations, SaiKernelCaps const& caps)
{
    bool const typeOk = mask.type == activations
        || (caps.fp32Mask && mask.type == DataType::kFLOAT
            && (activations == DataType::kHALF || activations == DataType::kBF16));
    return typeOk && saiActivationFormatOk(mask, caps);
}

bool saiTensorLayoutOf(PluginTensorDesc const& d, SaiTensorLayout& out)
{
    SaiDataType t;
    SaiLayout l;
    if (d.dims.nbDims != 4 || !saiDataTypeOf(d.type, t) || !saiLayoutOf(d.format, d.type, l))
    {
        return false;
    }
    out = saiTensorLayout(l, t, d.dims.d[1], d.dims.d[2], d.dims.d[3]);
    return true;
}

std::string saiLayoutText(char const* tensor, PluginTensorDesc const& d, SaiTensorLayout const& l)
{
    std::ostringstream s;
    s << tensor << " " << saiDataTypeName(d.type) << " " << saiFormatName(d.format) << " [";
    for (int32_t i = 0; i < d.dims.nbDims; ++i)
    {
        s << (i ? "," : "") << d.dims.d[i];
    }
    s << "] strides n=" << l.strides.n << " c=" << l.strides.c << " h=" << l.strides.h << " w=" << l.strides.w;
    return s.str();
}

uint64_t saiShapeKey(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs,
    int32_t tactic) noexcept
{
    uint64_t h = 1469598103934665603ULL; // FNV-1a
    auto mix = [&h](int64_t v) {
        for (int32_t i = 0; i < 8; ++i)
        {
            h = (h ^ static_cast<uint64_t>((v >> (8 * i)) & 0xFF)) * 1099511628211ULL;
        }
    };
    for (int32_t side = 0; side < 2; ++side)
    {
        PluginTensorDesc const* d = side == 0 ? in : out;
        int32_t const n = side == 0 ? nbInputs : nbOutputs;
        mix(n);
        for (int32_t i = 0; i < n; ++i)
        {
            mix(static_cast<int64_t>(d[i].type));
            mix(static_cast<int64_t>(d[i].format));
            mix(d[i].dims.nbDims);
            for (int32_t k = 0; k < d[i].dims.nbDims; ++k)
            {
                mix(d[i].dims.d[k]);
            }
        }
    }
    mix(tactic);
    return h;
}

int32_t saiValidTactics(SaiKernelCaps const& caps, int32_t* tactics, int32_t nbTactics)
{
    if (tactics == nullptr || nbTactics < 0 || nbTactics > caps.nbTactics)
    {
        return -1;
    }
    for (int32_t i = 0; i < nbTactics; ++i)
    {
        tactics[i] = caps.tactics[i];
    }
    return 0;
}

} // namespace plugin
} // namespace sai
