/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * glue_harness.cpp: drives libsai_trt_plugins.so through the TensorRT plugin interfaces on the CPU,
 * without a GPU and without libnvinfer (docs/design.md section 6). Usage: sai_trt_glue_harness LIB.so
 *
 * dlopen -> setLoggerFinder (a recording logger) -> getCreators; per plugin: create from fields,
 * output count and data types, supportsFormatCombination for FP32/FP16 linear, getOutputShapes
 * through a fake IExprBuilder implemented here (constant folding, symbolic dims), configurePlugin /
 * onShapeChange shape checks, getWorkspaceSize, serialization round trip (getFieldsToSerialize ->
 * createPlugin(kRUNTIME)), clone / attachToContext, enqueue without a CUDA driver (a clean logged
 * error in every enqueue, plugin and clone), and the error paths for bad fields and shapes
 * (the logger receives a message naming the problem, nullptr / -1 is returned).
 * Formats: every combination supportsFormatCombination accepts, enumerated the way TensorRT queries
 * them, must be the expected set (TensorRT's format definitions x what the kernels take), and each
 * configures and reports the strides its format implies. Tactics: getNbTactics / getValidTactics /
 * setTactic / clone / getTimingCacheID. `--kernels full` tests libsai_trt_plugins_fullcaps.so (the
 * glue with stand-in kernels: the same layouts, three fake tactics); default: the library itself
 * (the Triton kernels: tactics 1, 2 for SparseSampleConv, 1 for Interpolate).
 * Prints one line per check and "N passed, M failed"; exit status 1 on any failure.
 */
#include "NvInferRuntime.h"
#include "sparseSampleConvMath.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <dlfcn.h>
#include <functional>
#include <memory>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace
{

int gPassed = 0;
int gFailed = 0;
//! --kernels full: the library under test is libsai_trt_plugins_fullcaps.so (stand-in kernels,
//! tactics 11..13); triton (default): the library's Triton kernels. Both take every layout TensorRT
//! defines for FP32/FP16/BF16 and an FP32 mask beside FP16/BF16.
bool gFullCaps = false;

void check(bool ok, std::string const& what)
{
    std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
    (ok ? gPassed : gFailed)++;
}

// ---------------------------------------------------------------------------------- logger

class RecordingLogger : public ILogger
{
public:
    void log(Severity severity, AsciiChar const* msg) noexcept override
    {
        if (severity <= Severity::kWARNING)
        {
            errors.emplace_back(msg);
        }
        else
        {
            verbose.emplace_back(msg);
        }
    }
    //! true if a verbose/info message containing `needle` arrived since the last clear()
    bool sawVerbose(std::string const& needle) const
    {
        for (auto const& e : verbose)
        {
            if (e.find(needle) != std::string::npos)
            {
                return true;
            }
        }
        return false;
    }
    //! true if an error/warning containing `needle` arrived since the last clear()
    bool saw(std::string const& needle) const
    {
        for (auto const& e : errors)
        {
            if (e.find(needle) != std::string::npos)
            {
                return true;
            }
        }
        return false;
    }
    void clear()
    {
        errors.clear();
        verbose.clear();
    }
    std::vector<std::string> errors;
    std::vector<std::string> verbose;
};

class Finder : public ILoggerFinder
{
public:
    ILogger* findLogger() override
    {
        return &logger;
    }
    RecordingLogger logger;
};

// ---------------------------------------------------------------------------------- fake IExprBuilder

class FakeExprImpl : public apiv::VDimensionExpr
{
public:
    FakeExprImpl(bool constant, int64_t value)
        : mConstant(constant)
        , mValue(value)
    {
    }
    bool isConstant() const override
    {
        return mConstant;
    }
    int64_t getConstantValue() const override
    {
        return mConstant ? mValue : -1;
    }
    bool isSizeTensor() const override
    {
        return false;
    }

private:
    bool mConstant;
    int64_t mValue;
};

class FakeExpr : public IDimensionExpr
{
public:
    explicit FakeExpr(FakeExprImpl* impl)
    {
        mImpl = impl;
    }
    ~FakeExpr() noexcept override = default;
};

class FakeBuilderImpl : public apiv::VExprBuilder
{
public:
    IDimensionExpr const* constant(int64_t value) override
    {
        return make(true, value);
    }
    IDimensionExpr const* symbol()
    {
        return make(false, 0);
    }
    IDimensionExpr const* operation(DimensionOperation op, IDimensionExpr const& a, IDimensionExpr const& b) override
    {
        ++operations;
        if (!a.isConstant() || !b.isConstant())
        {
            return make(false, 0);
        }
        int64_t const x = a.getConstantValue();
        int64_t const y = b.getConstantValue();
        auto floorDiv = [](int64_t p, int64_t q) {
            int64_t d = p / q;
            return (p % q != 0 && ((p < 0) != (q < 0))) ? d - 1 : d;
        };
        switch (op)
        {
        case DimensionOperation::kSUM: return make(true, x + y);
        case DimensionOperation::kPROD: return make(true, x * y);
        case DimensionOperation::kMAX: return make(true, x > y ? x : y);
        case DimensionOperation::kMIN: return make(true, x < y ? x : y);
        case DimensionOperation::kSUB: return make(true, x - y);
        case DimensionOperation::kEQUAL: return make(true, x == y ? 1 : 0);
        case DimensionOperation::kLESS: return make(true, x < y ? 1 : 0);
        case DimensionOperation::kFLOOR_DIV: return make(true, floorDiv(x, y));
        case DimensionOperation::kCEIL_DIV: return make(true, -floorDiv(-x, y));
        }
        return make(false, 0);
    }
    IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override
    {
        return make(false, 0);
    }
    int operations{0};

private:
    IDimensionExpr const* make(bool c, int64_t v)
    {
        mImpls.emplace_back(std::make_unique<FakeExprImpl>(c, v));
        mExprs.emplace_back(std::make_unique<FakeExpr>(mImpls.back().get()));
        return mExprs.back().get();
    }
    std::deque<std::unique_ptr<FakeExprImpl>> mImpls;
    std::deque<std::unique_ptr<FakeExpr>> mExprs;
};

class FakeExprBuilder : public IExprBuilder
{
public:
    explicit FakeExprBuilder(FakeBuilderImpl* impl)
    {
        mImpl = impl;
    }
    ~FakeExprBuilder() noexcept override = default;
};

//! DimsExprs from ints; -1 makes a symbolic (unknown) dimension.
DimsExprs exprs(FakeBuilderImpl& b, std::vector<int64_t> const& dims)
{
    DimsExprs e{};
    e.nbDims = static_cast<int32_t>(dims.size());
    for (size_t i = 0; i < dims.size(); ++i)
    {
        e.d[i] = dims[i] < 0 ? b.symbol() : b.constant(dims[i]);
    }
    return e;
}

Dims dimsOf(std::vector<int64_t> const& v)
{
    Dims d{};
    d.nbDims = static_cast<int32_t>(v.size());
    for (size_t i = 0; i < v.size(); ++i)
    {
        d.d[i] = v[i];
    }
    return d;
}

DynamicPluginTensorDesc dyn(std::vector<int64_t> const& dims, DataType t, std::vector<int64_t> const& maxDims = {})
{
    DynamicPluginTensorDesc d{};
    d.desc.dims = dimsOf(dims);
    d.desc.type = t;
    d.desc.format = TensorFormat::kLINEAR;
    d.desc.scale = 1.F;
    d.min = dimsOf(maxDims.empty() ? dims : maxDims);
    d.opt = d.min;
    d.max = d.min;
    return d;
}

// ---------------------------------------------------------------------------------- fields

struct Fields
{
    std::deque<std::vector<int32_t>> ints;
    std::deque<std::vector<float>> floats;
    std::deque<std::string> strings;
    std::vector<PluginField> fields;
    PluginFieldCollection fc{};

    Fields& i(char const* name, std::vector<int32_t> v, PluginFieldType t = PluginFieldType::kINT32)
    {
        ints.push_back(std::move(v));
        fields.emplace_back(name, ints.back().data(), t, static_cast<int32_t>(ints.back().size()));
        return *this;
    }
    Fields& f(char const* name, float v)
    {
        floats.push_back({v});
        fields.emplace_back(name, floats.back().data(), PluginFieldType::kFLOAT32, 1);
        return *this;
    }
    //! as TensorRT's ONNX parser passes a STRING attribute: kCHAR, length = size + 1
    Fields& s(char const* name, std::string const& v)
    {
        strings.push_back(v);
        fields.emplace_back(name, strings.back().c_str(), PluginFieldType::kCHAR, static_cast<int32_t>(v.size() + 1));
        return *this;
    }
    PluginFieldCollection const* get()
    {
        fc.nbFields = static_cast<int32_t>(fields.size());
        fc.fields = fields.data();
        return &fc;
    }
};

//! A canonical text of a field collection, to compare serializations.
std::string fieldsText(PluginFieldCollection const* fc)
{
    std::string out;
    for (int32_t k = 0; fc != nullptr && k < fc->nbFields; ++k)
    {
        PluginField const& f = fc->fields[k];
        out += std::string(f.name) + ":" + std::to_string(static_cast<int>(f.type)) + ":" + std::to_string(f.length) + "=";
        for (int32_t j = 0; j < f.length; ++j)
        {
            if (f.type == PluginFieldType::kINT32)
            {
                out += std::to_string(static_cast<int32_t const*>(f.data)[j]) + ",";
            }
            else if (f.type == PluginFieldType::kFLOAT32)
            {
                char buf[64];
                std::snprintf(buf, sizeof(buf), "%.9g,", static_cast<double>(static_cast<float const*>(f.data)[j]));
                out += buf;
            }
            else if (f.type == PluginFieldType::kCHAR)
            {
                out += static_cast<char const*>(f.data)[j];
            }
        }
        out += ";";
    }
    return out;
}

PluginField const* findField(PluginFieldCollection const* fc, char const* name)
{
    for (int32_t k = 0; fc != nullptr && k < fc->nbFields; ++k)
    {
        if (std::strcmp(fc->fields[k].name, name) == 0)
        {
            return &fc->fields[k];
        }
    }
    return nullptr;
}

struct PluginHandle
{
    IPluginV3* plugin{nullptr};
    IPluginV3OneCore* core{nullptr};
    IPluginV3OneBuild* build{nullptr};
    IPluginV3OneRuntime* runtime{nullptr};
    explicit PluginHandle(IPluginV3* p)
        : plugin(p)
    {
        if (p != nullptr)
        {
            core = dynamic_cast<IPluginV3OneCore*>(p->getCapabilityInterface(PluginCapabilityType::kCORE));
            build = dynamic_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD));
            runtime = dynamic_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        }
    }
    ~PluginHandle()
    {
        delete plugin;
    }
    PluginHandle(PluginHandle const&) = delete;
    PluginHandle& operator=(PluginHandle const&) = delete;
    bool ok() const
    {
        return plugin && core && build && runtime;
    }
};

IPluginCreatorV3One* findCreator(IPluginCreatorInterface* const* creators, int32_t n, char const* name)
{
    for (int32_t k = 0; k < n; ++k)
    {
        auto* c = dynamic_cast<IPluginCreatorV3One*>(creators[k]);
        if (c != nullptr && std::strcmp(c->getPluginName(), name) == 0)
        {
            return c;
        }
    }
    return nullptr;
}

// ---------------------------------------------------------------------------------- formats, tactics

//! What a position of a plugin's inOut array is to supportsFormatCombination.
enum class Role
{
    kACT,    //!< X / F: any (type, format) the kernels read
    kMASK,   //!< M: the activations' type (or FP32 beside FP16/BF16 with full caps), any format
    kDENSE,  //!< W / B: the activations' type, kLINEAR
    kFOLLOW, //!< Offset / Y: the activations' type and format
};

char const* typeName(DataType t)
{
    switch (t)
    {
    case DataType::kFLOAT: return "FP32";
    case DataType::kHALF: return "FP16";
    case DataType::kBF16: return "BF16";
    default: return "?";
    }
}

char const* formatName(TensorFormat f)
{
    switch (f)
    {
    case TensorFormat::kLINEAR: return "kLINEAR";
    case TensorFormat::kHWC: return "kHWC";
    case TensorFormat::kHWC8: return "kHWC8";
    case TensorFormat::kHWC16: return "kHWC16";
    default: return "?";
    }
}

//! The formats an activation of type t may have: TensorRT's definitions (kHWC: FP32; kHWC8:
//! FP16/BF16; kHWC16: FP16), all of which the kernels take.
std::vector<TensorFormat> expectedFormats(DataType t)
{
    switch (t)
    {
    case DataType::kFLOAT: return {TensorFormat::kLINEAR, TensorFormat::kHWC};
    case DataType::kHALF: return {TensorFormat::kLINEAR, TensorFormat::kHWC8, TensorFormat::kHWC16};
    case DataType::kBF16: return {TensorFormat::kLINEAR, TensorFormat::kHWC8};
    default: return {};
    }
}

std::vector<DataType> const kAllTypes = {DataType::kFLOAT, DataType::kHALF, DataType::kBF16, DataType::kINT8,
    DataType::kINT32, DataType::kBOOL, DataType::kUINT8};

using Combo = std::vector<std::pair<DataType, TensorFormat>>;

void enumerateAccepted(IPluginV3OneBuild* b, std::vector<DynamicPluginTensorDesc>& io, int32_t nbInputs, size_t pos,
    Combo& cur, std::vector<Combo>& out)
{
    for (DataType t : kAllTypes)
    {
        for (int32_t f = 0; f <= 12; ++f)
        {
            io[pos].desc.type = t;
            io[pos].desc.format = static_cast<TensorFormat>(f);
            if (!b->supportsFormatCombination(static_cast<int32_t>(pos), io.data(), nbInputs, 1))
            {
                continue;
            }
            cur.emplace_back(t, static_cast<TensorFormat>(f));
            if (pos + 1 == io.size())
            {
                out.push_back(cur);
            }
            else
            {
                enumerateAccepted(b, io, nbInputs, pos + 1, cur, out);
            }
            cur.pop_back();
        }
    }
}

std::vector<Combo> expectedCombos(std::vector<Role> const& roles)
{
    std::vector<Combo> out;
    for (DataType t : {DataType::kFLOAT, DataType::kHALF, DataType::kBF16})
    {
        for (TensorFormat f : expectedFormats(t))
        {
            std::vector<std::pair<DataType, TensorFormat>> masks;
            std::vector<DataType> maskTypes = {t};
            if (t != DataType::kFLOAT)
            {
                maskTypes.push_back(DataType::kFLOAT);
            }
            for (DataType mt : maskTypes)
            {
                for (TensorFormat mf : expectedFormats(mt))
                {
                    masks.emplace_back(mt, mf);
                }
            }
            for (auto const& m : masks)
            {
                Combo c;
                for (Role r : roles)
                {
                    c.emplace_back(r == Role::kMASK ? m : std::make_pair(t, r == Role::kDENSE ? TensorFormat::kLINEAR : f));
                }
                out.push_back(c);
            }
        }
    }
    return out;
}

//! The log text the plugin must print for a [N,C,H,W] tensor: the strides TensorRT's format implies
//! (kLINEAR dense NCHW; kHWC/kHWC8/kHWC16 channel-last with C padded to 1/8/16).
std::string expectedLayout(char const* label, DataType t, TensorFormat f, Dims const& d)
{
    int64_t const C = d.d[1];
    int64_t const H = d.d[2];
    int64_t const W = d.d[3];
    int64_t n, c, h, w;
    if (f == TensorFormat::kLINEAR)
    {
        w = 1, h = W, c = H * W, n = C * H * W;
    }
    else
    {
        int64_t const v = f == TensorFormat::kHWC8 ? 8 : (f == TensorFormat::kHWC16 ? 16 : 1);
        int64_t const cp = (C + v - 1) / v * v;
        c = 1, w = cp, h = W * cp, n = H * W * cp;
    }
    char buf[256];
    std::snprintf(buf, sizeof(buf), "%s %s %s [%lld,%lld,%lld,%lld] strides n=%lld c=%lld h=%lld w=%lld", label,
        typeName(t), formatName(f), (long long) d.d[0], (long long) C, (long long) H, (long long) W, (long long) n,
        (long long) c, (long long) h, (long long) w);
    return buf;
}

std::string comboText(Combo const& c, std::vector<char const*> const& labels)
{
    std::string s;
    for (size_t i = 0; i < c.size(); ++i)
    {
        s += std::string(i ? ", " : "") + labels[i] + " " + typeName(c[i].first) + "/" + formatName(c[i].second);
    }
    return s;
}

//! Every combination supportsFormatCombination accepts (enumerated as TensorRT queries them) is
//! exactly the expected set; each one configures, sizes its workspace, and onShapeChange reports
//! the strides that format implies for every activation tensor.
void checkFormats(IPluginCreatorV3One* creator, Fields& fields, char const* name, std::vector<Role> const& roles,
    std::vector<char const*> const& labels, std::vector<DynamicPluginTensorDesc> (*descs)(DataType), RecordingLogger& log)
{
    std::string const tag = std::string(name) + ": ";
    int32_t const nbInputs = static_cast<int32_t>(roles.size()) - 1;
    PluginHandle h(creator->createPlugin("fmt", fields.get(), TensorRTPhase::kBUILD));
    if (!h.ok())
    {
        check(false, tag + "create for the format checks");
        return;
    }
    std::vector<DynamicPluginTensorDesc> io = descs(DataType::kFLOAT);
    std::vector<Combo> accepted;
    Combo cur;
    enumerateAccepted(h.build, io, nbInputs, 0, cur, accepted);
    std::vector<Combo> expected = expectedCombos(roles);
    auto sorted = [](std::vector<Combo> v) {
        std::sort(v.begin(), v.end());
        return v;
    };
    bool const same = sorted(accepted) == sorted(expected);
    check(same && !accepted.empty(),
        tag + "supportsFormatCombination accepts exactly the " + std::to_string(expected.size())
            + " expected combinations (got " + std::to_string(accepted.size()) + ")");
    if (!same)
    {
        for (auto const& c : accepted)
        {
            if (std::find(expected.begin(), expected.end(), c) == expected.end())
            {
                check(false, tag + "unexpected: " + comboText(c, labels));
            }
        }
        for (auto const& c : expected)
        {
            if (std::find(accepted.begin(), accepted.end(), c) == accepted.end())
            {
                check(false, tag + "missing: " + comboText(c, labels));
            }
        }
    }
    for (auto const& c : accepted)
    {
        std::vector<DynamicPluginTensorDesc> d = descs(c[0].first);
        for (size_t i = 0; i < c.size(); ++i)
        {
            d[i].desc.type = c[i].first;
            d[i].desc.format = c[i].second;
        }
        bool ok = h.build->configurePlugin(d.data(), nbInputs, &d[nbInputs], 1) == 0;
        ok = ok && h.build->getWorkspaceSize(d.data(), nbInputs, &d[nbInputs], 1) > 0;
        std::vector<PluginTensorDesc> rt;
        for (auto const& x : d)
        {
            rt.push_back(x.desc);
        }
        log.clear();
        ok = ok && h.runtime->onShapeChange(rt.data(), nbInputs, &rt[nbInputs], 1) == 0;
        std::string missing;
        for (size_t i = 0; i < c.size(); ++i)
        {
            if (roles[i] == Role::kDENSE)
            {
                continue;
            }
            std::string const want = expectedLayout(labels[i], c[i].first, c[i].second, rt[i].dims);
            if (!log.sawVerbose(want))
            {
                missing += " [" + want + "]";
            }
        }
        check(ok && missing.empty() && log.errors.empty(),
            tag + "configure/workspace/onShapeChange with " + comboText(c, labels)
                + (missing.empty() ? "" : "; no log of" + missing)
                + (log.errors.empty() ? "" : "; error: " + log.errors.back()));
    }
}

//! Tactics: the kernels' list through getNbTactics/getValidTactics, setTactic validates, clones keep
//! it, getTimingCacheID names the attributes.
void checkTactics(IPluginCreatorV3One* creator, Fields& fields, Fields& other, char const* name, int32_t nbInputs,
    std::vector<DynamicPluginTensorDesc> (*descs)(DataType), RecordingLogger& log)
{
    std::string const tag = std::string(name) + ": ";
    PluginHandle h(creator->createPlugin("tac", fields.get(), TensorRTPhase::kBUILD));
    PluginHandle o(creator->createPlugin("tac2", other.get(), TensorRTPhase::kBUILD));
    if (!h.ok() || !o.ok())
    {
        check(false, tag + "create for the tactic checks");
        return;
    }
    bool const conv = std::strcmp(name, "SparseSampleConv") == 0;
    std::vector<int32_t> const want = gFullCaps ? std::vector<int32_t>{11, 12, 13}
                                                : (conv ? std::vector<int32_t>{1, 2} : std::vector<int32_t>{1});
    int32_t const n = h.build->getNbTactics();
    std::vector<int32_t> got(static_cast<size_t>(n > 0 ? n : 0), 0);
    int32_t const rc = n > 0 ? h.build->getValidTactics(got.data(), n) : -1;
    check(rc == 0 && got == want, tag + "getNbTactics/getValidTactics give the kernels' tactics (" + std::to_string(n) + ")");
    bool allSet = true;
    for (int32_t t : want)
    {
        allSet = allSet && h.runtime->setTactic(t) == 0;
    }
    check(allSet && h.runtime->setTactic(0) == 0, tag + "setTactic accepts each advertised tactic and 0 (default)");
    log.clear();
    check(h.runtime->setTactic(777) != 0 && log.saw("tactic"), tag + "setTactic rejects an unknown tactic, logged");
    h.runtime->setTactic(want.back());
    PluginHandle c(h.plugin->clone());
    std::vector<DynamicPluginTensorDesc> d = descs(DataType::kFLOAT);
    std::vector<PluginTensorDesc> rt;
    for (auto const& x : d)
    {
        rt.push_back(x.desc);
    }
    log.clear();
    check(c.ok() && c.runtime->onShapeChange(rt.data(), nbInputs, &rt[nbInputs], 1) == 0
            && log.sawVerbose("tactic " + std::to_string(want.back())),
        tag + "clone keeps the tactic set by setTactic");
    char const* id = h.build->getTimingCacheID();
    std::string const idText = id != nullptr ? id : "";
    char const* id2 = o.build->getTimingCacheID();
    check(!idText.empty() && idText.find(name) != std::string::npos && id2 != nullptr && idText != id2,
        tag + "getTimingCacheID names the attributes: " + idText);
}

//! The common IPluginV3 checks of one plugin built from `fields` (a valid set).
void checkCommon(IPluginCreatorV3One* creator, Fields& fields, char const* name, int32_t nbInputs,
    std::vector<DynamicPluginTensorDesc> (*descs)(DataType))
{
    std::string const tag = std::string(name) + ": ";
    PluginHandle h(creator->createPlugin("node0", fields.get(), TensorRTPhase::kBUILD));
    check(h.ok(), tag + "createPlugin(kBUILD) returns a plugin with core/build/runtime capabilities");
    if (!h.ok())
    {
        return;
    }
    check(std::strcmp(h.core->getPluginName(), name) == 0 && std::strcmp(h.core->getPluginVersion(), "1") == 0
            && std::strcmp(h.core->getPluginNamespace(), "sai") == 0,
        tag + "name/version/namespace = " + name + "/1/sai");
    check(std::strcmp(h.build->getInterfaceInfo().kind, "PLUGIN_V3ONE_BUILD") == 0
            && std::strcmp(h.runtime->getInterfaceInfo().kind, "PLUGIN_V3ONE_RUNTIME") == 0
            && std::strcmp(h.core->getInterfaceInfo().kind, "PLUGIN_V3ONE_CORE") == 0,
        tag + "capability interfaces report their kinds");
    check(h.build->getNbOutputs() == 1, tag + "getNbOutputs() == 1");

    // output data types
    for (DataType t : {DataType::kFLOAT, DataType::kHALF})
    {
        std::vector<DataType> in(static_cast<size_t>(nbInputs), t);
        DataType out = DataType::kINT8;
        int32_t rc = h.build->getOutputDataTypes(&out, 1, in.data(), nbInputs);
        check(rc == 0 && out == t, tag + "getOutputDataTypes keeps " + (t == DataType::kFLOAT ? "FP32" : "FP16"));
    }
    {
        std::vector<DataType> in(static_cast<size_t>(nbInputs), DataType::kINT32);
        DataType out = DataType::kFLOAT;
        check(h.build->getOutputDataTypes(&out, 1, in.data(), nbInputs) != 0, tag + "getOutputDataTypes rejects INT32");
    }

    // format combinations: see checkFormats; here the basic rejections
    for (DataType t : {DataType::kFLOAT, DataType::kHALF})
    {
        std::vector<DynamicPluginTensorDesc> io = descs(t);
        bool all = true;
        for (int32_t pos = 0; pos < nbInputs + 1; ++pos)
        {
            all = all && h.build->supportsFormatCombination(pos, io.data(), nbInputs, 1);
        }
        check(all, tag + "supportsFormatCombination: all " + (t == DataType::kFLOAT ? "FP32" : "FP16") + " linear");
        io[nbInputs].desc.type = t == DataType::kFLOAT ? DataType::kHALF : DataType::kFLOAT;
        check(!h.build->supportsFormatCombination(nbInputs, io.data(), nbInputs, 1), tag + "rejects an output of another type");
        io = descs(t);
        io[0].desc.format = TensorFormat::kCHW32;
        check(!h.build->supportsFormatCombination(0, io.data(), nbInputs, 1), tag + "rejects kCHW32");
    }
    {
        std::vector<DynamicPluginTensorDesc> io = descs(DataType::kFLOAT);
        io[1].desc.type = DataType::kHALF;
        check(!h.build->supportsFormatCombination(1, io.data(), nbInputs, 1), tag + "rejects an FP16 mask beside FP32");
        io = descs(DataType::kINT8);
        check(!h.build->supportsFormatCombination(0, io.data(), nbInputs, 1), tag + "rejects INT8");
        io = descs(DataType::kBF16);
        check(h.build->supportsFormatCombination(0, io.data(), nbInputs, 1), tag + "accepts BF16 (kernels take it)");
        std::vector<DataType> in(static_cast<size_t>(nbInputs), DataType::kBF16);
        DataType out = DataType::kFLOAT;
        check(h.build->getOutputDataTypes(&out, 1, in.data(), nbInputs) == 0 && out == DataType::kBF16,
            tag + "getOutputDataTypes keeps BF16");
    }

    // configure + workspace
    {
        std::vector<DynamicPluginTensorDesc> io = descs(DataType::kFLOAT);
        check(h.build->configurePlugin(io.data(), nbInputs, &io[nbInputs], 1) == 0, tag + "configurePlugin accepts valid shapes");
        size_t const ws = h.build->getWorkspaceSize(io.data(), nbInputs, &io[nbInputs], 1);
        check(ws > 0 && ws < (size_t{1} << 31), tag + "getWorkspaceSize from max dims: " + std::to_string(ws) + " bytes");
        std::vector<PluginTensorDesc> rt;
        for (auto const& d : io)
        {
            rt.push_back(d.desc);
        }
        check(h.runtime->onShapeChange(rt.data(), nbInputs, &rt[nbInputs], 1) == 0, tag + "onShapeChange accepts valid shapes");
    }

    // serialization round trip: build phase -> fields -> runtime phase
    PluginFieldCollection const* ser = h.runtime->getFieldsToSerialize();
    std::string const text = fieldsText(ser);
    check(ser != nullptr && ser->nbFields > 0, tag + "getFieldsToSerialize: " + text);
    PluginHandle r(creator->createPlugin("node0", ser, TensorRTPhase::kRUNTIME));
    check(r.ok(), tag + "createPlugin(kRUNTIME) from the serialized fields");
    if (r.ok())
    {
        check(fieldsText(r.runtime->getFieldsToSerialize()) == text, tag + "round trip keeps every field");
    }
    PluginHandle c(h.plugin->clone());
    check(c.ok() && fieldsText(c.runtime->getFieldsToSerialize()) == text, tag + "clone keeps every field");
    PluginHandle a(h.runtime->attachToContext(nullptr));
    check(a.ok() && fieldsText(a.runtime->getFieldsToSerialize()) == text, tag + "attachToContext returns a copy");
}

//! enqueue through the glue where no CUDA driver is installed (this harness's machines): a clean
//! error naming why, in every enqueue, from the plugin and from its clone (each has its own launch
//! state). Skipped where libcuda.so.1 loads: the buffers here are host memory.
void checkEnqueueWithoutDriver(IPluginCreatorV3One* creator, Fields& fields, char const* name, int32_t nbInputs,
    std::vector<DynamicPluginTensorDesc> (*descs)(DataType), RecordingLogger& log)
{
    std::string const tag = std::string(name) + ": ";
    if (void* cuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL))
    {
        dlclose(cuda);
        std::printf("skip %senqueue without a driver (a CUDA driver is installed here)\n", tag.c_str());
        return;
    }
    PluginHandle h(creator->createPlugin("node0", fields.get(), TensorRTPhase::kRUNTIME));
    check(h.ok(), tag + "createPlugin(kRUNTIME) for enqueue");
    if (!h.ok())
    {
        return;
    }
    std::vector<DynamicPluginTensorDesc> io = descs(DataType::kHALF);
    std::vector<PluginTensorDesc> rt;
    for (auto const& d : io)
    {
        rt.push_back(d.desc);
    }
    log.clear();
    check(h.runtime->onShapeChange(rt.data(), nbInputs, &rt[nbInputs], 1) == 0 && log.sawVerbose(" plugin: "),
        tag + "onShapeChange before enqueue logs the layouts");
    // TensorRT calls it inside every enqueue after a setTensorAddress: the same shapes log nothing again
    log.clear();
    check(h.runtime->onShapeChange(rt.data(), nbInputs, &rt[nbInputs], 1) == 0 && log.verbose.empty()
            && log.errors.empty(),
        tag + "onShapeChange with unchanged shapes builds and logs no text");
    rt[0].dims.d[0] += 1;
    rt[1].dims.d[0] += 1;
    rt[nbInputs].dims.d[0] += 1;
    if (nbInputs > 4)
    {
        rt[4].dims.d[0] += 1;
    }
    log.clear();
    check(h.runtime->onShapeChange(rt.data(), nbInputs, &rt[nbInputs], 1) == 0 && log.sawVerbose(" plugin: "),
        tag + "onShapeChange with another batch logs the layouts again");
    size_t const ws = h.build->getWorkspaceSize(io.data(), nbInputs, &io[nbInputs], 1);
    std::vector<unsigned char> host((ws + 4096) * 2); // never touched: the launch stops at the missing driver
    std::vector<void const*> ins(static_cast<size_t>(nbInputs), host.data());
    void* outs[1] = {host.data()};
    PluginHandle c(h.plugin->clone());
    char const* const why = gFullCaps ? "stand-in kernels" : "no CUDA driver";
    for (int32_t i = 0; i < 2; ++i)
    {
        for (PluginHandle* p : {&h, &c})
        {
            log.clear();
            int32_t const rc = p->ok()
                ? p->runtime->enqueue(rt.data(), &rt[nbInputs], ins.data(), outs, host.data() + host.size() / 2, nullptr)
                : 0;
            check(rc != 0 && log.saw("enqueue failed") && log.saw(why),
                tag + "enqueue " + std::to_string(i + 1) + (p == &c ? " (clone)" : "") + " fails cleanly: "
                    + (log.errors.empty() ? std::string("(no error logged)") : log.errors.back()));
        }
    }
    log.clear();
}

// ---------------------------------------------------------------------------------- SparseSampleConv

std::vector<DynamicPluginTensorDesc> sscDescs(DataType t)
{
    // X [2,4,9,11], M [2,1,5,6], W [6,2,3,3], B [6], Offset [2,2*2*9,5,6]; stride 2, pads 1, group 2, dg 2
    return {dyn({2, 4, 9, 11}, t), dyn({2, 1, 5, 6}, t), dyn({6, 2, 3, 3}, t), dyn({6}, t), dyn({2, 36, 5, 6}, t),
        dyn({2, 6, 5, 6}, t)};
}

Fields sscFields()
{
    Fields f;
    f.i("strides", {2, 2}).i("pads", {1, 1, 1, 1}).i("dilations", {1, 1}).i("group", {2}).i("deform_groups", {2});
    f.s("activation", "relu");
    // what the ONNX parser may also pass through; must be ignored
    f.s("plugin_version", "1").s("plugin_namespace", "sai");
    return f;
}

void testSparseSampleConv(IPluginCreatorV3One* creator, RecordingLogger& log)
{
    check(creator != nullptr, "SparseSampleConv: creator found");
    if (creator == nullptr)
    {
        return;
    }
    check(std::strcmp(creator->getPluginVersion(), "1") == 0 && std::strcmp(creator->getPluginNamespace(), "sai") == 0,
        "SparseSampleConv: creator version 1, namespace sai");
    PluginFieldCollection const* names = creator->getFieldNames();
    bool namesOk = names != nullptr;
    for (char const* n : {"strides", "pads", "dilations", "group", "deform_groups", "activation"})
    {
        namesOk = namesOk && findField(names, n) != nullptr;
    }
    check(namesOk && findField(names, "pads")->length == 4 && findField(names, "activation")->type == PluginFieldType::kCHAR,
        "SparseSampleConv: getFieldNames lists the six attributes (pads: 4 x kINT32, activation: kCHAR)");

    Fields good = sscFields();
    checkCommon(creator, good, "SparseSampleConv", 5, &sscDescs);
    checkEnqueueWithoutDriver(creator, good, "SparseSampleConv", 5, &sscDescs, log);
    checkFormats(creator, good, "SparseSampleConv",
        {Role::kACT, Role::kMASK, Role::kDENSE, Role::kDENSE, Role::kFOLLOW, Role::kFOLLOW},
        {"X", "M", "W", "B", "Offset", "Y"}, &sscDescs, log);
    {
        Fields other = sscFields();
        other.i("dilations", {2, 2});
        checkTactics(creator, good, other, "SparseSampleConv", 5, &sscDescs, log);
    }

    // defaults: no fields at all
    {
        PluginHandle h(creator->createPlugin("defaults", nullptr, TensorRTPhase::kBUILD));
        std::string const t = h.ok() ? fieldsText(h.runtime->getFieldsToSerialize()) : "";
        check(h.ok() && t.find("strides:5:2=1,1,;") != std::string::npos && t.find("pads:5:4=0,0,0,0,;") != std::string::npos
                && t.find("activation:6:5=none") != std::string::npos,
            "SparseSampleConv: every field has a default (stride 1, pads 0, none): " + t);
    }

    // variants by input count, output shapes through the fake IExprBuilder
    struct ShapeCase
    {
        std::vector<int64_t> x, w;
        std::vector<int32_t> strides, pads, dil;
    };
    std::vector<ShapeCase> cases = {
        {{1, 3, 9, 11}, {5, 3, 3, 3}, {1, 1}, {1, 1, 1, 1}, {1, 1}},
        {{2, 4, 8, 7}, {4, 2, 3, 3}, {2, 2}, {1, 1, 1, 1}, {1, 1}},
        {{1, 6, 13, 10}, {6, 2, 3, 3}, {1, 2}, {2, 0, 1, 2}, {2, 2}},
        {{3, 2, 17, 14}, {3, 2, 7, 7}, {2, 1}, {3, 3, 3, 3}, {1, 2}},
        {{1, 8, 7, 9}, {8, 1, 1, 1}, {2, 2}, {0, 0, 0, 0}, {1, 1}},
        {{1, 4, 8, 8}, {4, 4, 5, 5}, {3, 3}, {2, 1, 2, 1}, {1, 1}},
    };
    for (auto const& sc : cases)
    {
        Fields f;
        int32_t const group = static_cast<int32_t>(sc.x[1] / sc.w[1]);
        f.i("strides", sc.strides).i("pads", sc.pads).i("dilations", sc.dil).i("group", {group});
        PluginHandle h(creator->createPlugin("shape", f.get(), TensorRTPhase::kBUILD));
        if (!h.ok())
        {
            check(false, "SparseSampleConv: create for a shape case");
            continue;
        }
        sai::SaiConvParams p = sai::saiConvParamsOf(
            sc.x.data(), sc.w.data(), sc.strides.data(), sc.pads.data(), sc.dil.data(), group, 1, sai::kSAI_ACT_NONE);
        sai::saiConvFinalize(p);
        for (int32_t nbIn : {3, 4, 5})
        {
            FakeBuilderImpl impl;
            FakeExprBuilder builder(&impl);
            std::vector<DimsExprs> in = {exprs(impl, sc.x), exprs(impl, {sc.x[0], 1, p.Ho, p.Wo}), exprs(impl, sc.w),
                exprs(impl, {sc.w[0]}), exprs(impl, {sc.x[0], 2 * p.kernelTaps, p.Ho, p.Wo})};
            DimsExprs out{};
            int32_t const rc = h.build->getOutputShapes(in.data(), nbIn, nullptr, 0, &out, 1, builder);
            bool ok = rc == 0 && out.nbDims == 4;
            int64_t const want[4] = {sc.x[0], sc.w[0], p.Ho, p.Wo};
            for (int32_t k = 0; ok && k < 4; ++k)
            {
                ok = out.d[k]->isConstant() && out.d[k]->getConstantValue() == want[k];
            }
            char buf[200];
            std::snprintf(buf, sizeof(buf), "SparseSampleConv: getOutputShapes %d inputs, X [%lld,%lld,%lld,%lld] k%lld -> [%lld,%lld,%lld,%lld]",
                nbIn, (long long) sc.x[0], (long long) sc.x[1], (long long) sc.x[2], (long long) sc.x[3], (long long) sc.w[2],
                (long long) want[0], (long long) want[1], (long long) want[2], (long long) want[3]);
            check(ok, buf);
        }
    }
    // dynamic N, H, W: symbolic expressions, and an expression graph was built
    {
        PluginHandle h(creator->createPlugin("dyn", sscFields().get(), TensorRTPhase::kBUILD));
        FakeBuilderImpl impl;
        FakeExprBuilder builder(&impl);
        std::vector<DimsExprs> in = {exprs(impl, {-1, 4, -1, -1}), exprs(impl, {-1, 1, -1, -1}), exprs(impl, {6, 2, 3, 3})};
        DimsExprs out{};
        int32_t const rc = h.ok() ? h.build->getOutputShapes(in.data(), 3, nullptr, 0, &out, 1, builder) : -1;
        check(rc == 0 && out.nbDims == 4 && out.d[0] == in[0].d[0] && !out.d[2]->isConstant() && out.d[1]->isConstant()
                && out.d[1]->getConstantValue() == 6 && impl.operations >= 6,
            "SparseSampleConv: getOutputShapes with dynamic N/H/W gives N, Cout and symbolic Ho/Wo expressions");
    }

    // error paths: bad fields -> nullptr + a logged message naming the problem
    struct BadField
    {
        std::function<void(Fields&)> make;
        char const* needle;
        char const* what;
    };
    std::vector<BadField> bad = {
        {[](Fields& f) { f.i("strides", {0, 1}); }, "strides", "zero stride"},
        {[](Fields& f) { f.i("strides", {1, 1, 1}); }, "strides", "strides with 3 values"},
        {[](Fields& f) { f.i("pads", {1, 1}); }, "pads", "pads with 2 values (4 required)"},
        {[](Fields& f) { f.i("pads", {1, -1, 1, 1}); }, "pads", "negative pad"},
        {[](Fields& f) { f.i("dilations", {0, 1}); }, "dilations", "zero dilation"},
        {[](Fields& f) { f.i("group", {0}); }, "group", "group 0"},
        {[](Fields& f) { f.i("group", {1, 1}); }, "group", "group with 2 values"},
        {[](Fields& f) { f.i("deform_groups", {-2}); }, "deform_groups", "negative deform_groups"},
        {[](Fields& f) { f.s("activation", "gelu"); }, "activation", "unknown activation string"},
        {[](Fields& f) { f.i("activation", {1}); }, "activation", "activation as kINT32"},
        {[](Fields& f) { f.f("strides", 1.F); }, "strides", "strides as kFLOAT32"},
        {[](Fields& f) { f.i("group", {1}, PluginFieldType::kINT8); }, "group", "group as kINT8"},
    };
    for (auto const& b : bad)
    {
        Fields f;
        b.make(f);
        log.clear();
        IPluginV3* p = creator->createPlugin("badnode", f.get(), TensorRTPhase::kBUILD);
        check(p == nullptr && log.saw(b.needle) && log.saw("badnode") && log.saw("SparseSampleConv"),
            std::string("SparseSampleConv: rejects ") + b.what + (log.errors.empty() ? "" : " [" + log.errors.back() + "]"));
        delete p;
    }
    // error paths: input count and shapes
    {
        PluginHandle h(creator->createPlugin("n", sscFields().get(), TensorRTPhase::kBUILD));
        FakeBuilderImpl impl;
        FakeExprBuilder builder(&impl);
        std::vector<DimsExprs> in = {exprs(impl, {2, 4, 9, 11}), exprs(impl, {2, 1, 5, 6}), exprs(impl, {6, 2, 3, 3}),
            exprs(impl, {6}), exprs(impl, {2, 36, 5, 6}), exprs(impl, {1})};
        DimsExprs out{};
        for (int32_t nbIn : {2, 6})
        {
            log.clear();
            check(h.ok() && h.build->getOutputShapes(in.data(), nbIn, nullptr, 0, &out, 1, builder) != 0 && log.saw("inputs"),
                "SparseSampleConv: getOutputShapes rejects " + std::to_string(nbIn) + " inputs");
        }
        log.clear();
        std::vector<DimsExprs> badMask = {in[0], exprs(impl, {2, 3, 5, 6}), in[2]};
        check(h.ok() && h.build->getOutputShapes(badMask.data(), 3, nullptr, 0, &out, 1, builder) != 0 && log.saw("mask"),
            "SparseSampleConv: getOutputShapes rejects a mask with 3 channels");
        log.clear();
        std::vector<DimsExprs> bad3d = {exprs(impl, {4, 9, 11}), in[1], in[2]};
        check(h.ok() && h.build->getOutputShapes(bad3d.data(), 3, nullptr, 0, &out, 1, builder) != 0,
            "SparseSampleConv: getOutputShapes rejects a 3-D X");

        std::vector<DynamicPluginTensorDesc> io = sscDescs(DataType::kFLOAT);
        io[1] = dyn({2, 1, 4, 6}, DataType::kFLOAT); // wrong Ho
        log.clear();
        check(h.ok() && h.build->configurePlugin(io.data(), 5, &io[5], 1) != 0 && log.saw("mask"),
            "SparseSampleConv: configurePlugin rejects a mask of the wrong size");
        io = sscDescs(DataType::kFLOAT);
        io[4] = dyn({2, 18, 5, 6}, DataType::kFLOAT); // offset for 1 deform group, plugin has 2
        log.clear();
        check(h.ok() && h.build->configurePlugin(io.data(), 5, &io[5], 1) != 0 && log.saw("Offset"),
            "SparseSampleConv: configurePlugin rejects an Offset of the wrong channel count");
        io = sscDescs(DataType::kFLOAT);
        io[2] = dyn({6, 4, 3, 3}, DataType::kFLOAT); // weight Cin/group mismatch
        log.clear();
        check(h.ok() && h.build->configurePlugin(io.data(), 5, &io[5], 1) != 0 && log.saw("group"),
            "SparseSampleConv: configurePlugin rejects W that does not fit group");
        io = sscDescs(DataType::kFLOAT);
        io[3] = dyn({5}, DataType::kFLOAT);
        log.clear();
        check(h.ok() && h.build->configurePlugin(io.data(), 5, &io[5], 1) != 0 && log.saw("bias"),
            "SparseSampleConv: configurePlugin rejects a bias of the wrong length");
        io = sscDescs(DataType::kFLOAT);
        io[0] = dyn({-1, 4, -1, -1}, DataType::kFLOAT, {2, 4, 9, 11});
        io[1] = dyn({-1, 1, -1, -1}, DataType::kFLOAT, {2, 1, 5, 6});
        check(h.ok() && h.build->configurePlugin(io.data(), 5, &io[5], 1) == 0,
            "SparseSampleConv: configurePlugin accepts dynamic (-1) dims");
    }
}

// ---------------------------------------------------------------------------------- Interpolate

std::vector<DynamicPluginTensorDesc> interpDescs(DataType t)
{
    return {dyn({2, 8, 13, 12}, t), dyn({2, 1, 13, 12}, t), dyn({2, 8, 13, 12}, t)};
}

void testInterpolate(IPluginCreatorV3One* creator, RecordingLogger& log)
{
    check(creator != nullptr, "Interpolate: creator found");
    if (creator == nullptr)
    {
        return;
    }
    PluginFieldCollection const* names = creator->getFieldNames();
    check(names != nullptr && findField(names, "kernel_size") && findField(names, "sigma") && findField(names, "eps")
            && findField(names, "sigma")->type == PluginFieldType::kFLOAT32,
        "Interpolate: getFieldNames lists kernel_size (kINT32), sigma and eps (kFLOAT32)");
    Fields good;
    good.i("kernel_size", {5}).f("sigma", 1.37F).f("eps", 1e-4F).s("plugin_version", "1").s("plugin_namespace", "sai");
    checkCommon(creator, good, "Interpolate", 2, &interpDescs);
    checkEnqueueWithoutDriver(creator, good, "Interpolate", 2, &interpDescs, log);
    checkFormats(creator, good, "Interpolate", {Role::kACT, Role::kMASK, Role::kFOLLOW}, {"F", "M", "Y"}, &interpDescs, log);
    {
        Fields other;
        other.i("kernel_size", {3}).f("sigma", 1.37F).f("eps", 1e-4F);
        checkTactics(creator, good, other, "Interpolate", 2, &interpDescs, log);
    }
    {
        PluginHandle h(creator->createPlugin("defaults", nullptr, TensorRTPhase::kBUILD));
        std::string const t = h.ok() ? fieldsText(h.runtime->getFieldsToSerialize()) : "";
        check(h.ok() && t.find("kernel_size:5:1=7,;") != std::string::npos && t.find("eps:1:1=9.99999975e-06") != std::string::npos,
            "Interpolate: every field has a default (kernel_size 7, eps 1e-5): " + t);
    }
    {
        PluginHandle h(creator->createPlugin("s", good.get(), TensorRTPhase::kBUILD));
        FakeBuilderImpl impl;
        FakeExprBuilder builder(&impl);
        std::vector<DimsExprs> in = {exprs(impl, {-1, 8, 13, -1}), exprs(impl, {-1, 1, 13, -1})};
        DimsExprs out{};
        int32_t const rc = h.ok() ? h.build->getOutputShapes(in.data(), 2, nullptr, 0, &out, 1, builder) : -1;
        check(rc == 0 && out.nbDims == 4 && out.d[0] == in[0].d[0] && out.d[1]->getConstantValue() == 8
                && out.d[2]->getConstantValue() == 13 && out.d[3] == in[0].d[3],
            "Interpolate: getOutputShapes gives F's shape (dynamic N, W kept)");
        for (int32_t nbIn : {1, 3})
        {
            std::vector<DimsExprs> in3 = {in[0], in[1], in[1]};
            log.clear();
            check(h.ok() && h.build->getOutputShapes(in3.data(), nbIn, nullptr, 0, &out, 1, builder) != 0 && log.saw("2 inputs"),
                "Interpolate: getOutputShapes rejects " + std::to_string(nbIn) + " inputs");
        }
        std::vector<DimsExprs> badMask = {exprs(impl, {2, 8, 13, 12}), exprs(impl, {2, 2, 13, 12})};
        log.clear();
        check(h.ok() && h.build->getOutputShapes(badMask.data(), 2, nullptr, 0, &out, 1, builder) != 0 && log.saw("mask"),
            "Interpolate: getOutputShapes rejects a 2-channel mask");
        badMask = {exprs(impl, {2, 8, 13, 12}), exprs(impl, {2, 1, 12, 12})};
        log.clear();
        check(h.ok() && h.build->getOutputShapes(badMask.data(), 2, nullptr, 0, &out, 1, builder) != 0 && log.saw("mask"),
            "Interpolate: getOutputShapes rejects a mask of another height");
        std::vector<DynamicPluginTensorDesc> io = interpDescs(DataType::kHALF);
        io[1] = dyn({1, 1, 13, 12}, DataType::kHALF);
        log.clear();
        check(h.ok() && h.build->configurePlugin(io.data(), 2, &io[2], 1) != 0 && log.saw("mask"),
            "Interpolate: configurePlugin rejects a mask with another batch size");
    }
    struct BadField
    {
        std::function<void(Fields&)> make;
        char const* needle;
        char const* what;
    };
    std::vector<BadField> bad = {
        {[](Fields& f) { f.i("kernel_size", {6}); }, "kernel_size", "even kernel_size"},
        {[](Fields& f) { f.i("kernel_size", {0}); }, "kernel_size", "kernel_size 0"},
        {[](Fields& f) { f.i("kernel_size", {33}); }, "kernel_size", "kernel_size 33 (> 31)"},
        {[](Fields& f) { f.i("kernel_size", {7, 7}); }, "kernel_size", "kernel_size with 2 values"},
        {[](Fields& f) { f.f("kernel_size", 7.F); }, "kernel_size", "kernel_size as kFLOAT32"},
        {[](Fields& f) { f.i("sigma", {1}); }, "sigma", "sigma as kINT32"},
        {[](Fields& f) { f.f("sigma", std::nanf("")); }, "sigma", "NaN sigma"},
        {[](Fields& f) { f.f("eps", -1.F); }, "eps", "negative eps"},
        {[](Fields& f) { f.s("eps", "1e-5"); }, "eps", "eps as a string"},
    };
    for (auto const& b : bad)
    {
        Fields f;
        b.make(f);
        log.clear();
        IPluginV3* p = creator->createPlugin("badnode", f.get(), TensorRTPhase::kBUILD);
        check(p == nullptr && log.saw(b.needle) && log.saw("badnode") && log.saw("Interpolate"),
            std::string("Interpolate: rejects ") + b.what + (log.errors.empty() ? "" : " [" + log.errors.back() + "]"));
        delete p;
    }
}

} // namespace

int main(int argc, char** argv)
{
    if (argc == 4 && std::strcmp(argv[2], "--kernels") == 0
        && (std::strcmp(argv[3], "full") == 0 || std::strcmp(argv[3], "triton") == 0))
    {
        gFullCaps = std::strcmp(argv[3], "full") == 0;
    }
    else if (argc != 2)
    {
        std::fprintf(stderr, "usage: %s libsai_trt_plugins.so [--kernels triton|full]\n", argv[0]);
        return 2;
    }
    void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    check(lib != nullptr, std::string("dlopen ") + argv[1] + (lib ? "" : std::string(": ") + dlerror()));
    if (lib == nullptr)
    {
        std::printf("%d passed, %d failed\n", gPassed, gFailed);
        return 1;
    }
    using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
    using SetLoggerFinder = void (*)(ILoggerFinder*);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
    auto setLoggerFinder = reinterpret_cast<SetLoggerFinder>(dlsym(lib, "setLoggerFinder"));
    check(getCreators != nullptr && setLoggerFinder != nullptr, "entry points getCreators and setLoggerFinder exported");
    check(dlsym(lib, "getPluginCreators") == nullptr, "no IPluginV2 entry point (getPluginCreators)");
    if (getCreators == nullptr || setLoggerFinder == nullptr)
    {
        std::printf("%d passed, %d failed\n", gPassed, gFailed);
        return 1;
    }
    static Finder finder;
    setLoggerFinder(&finder);
    int32_t n = -1;
    IPluginCreatorInterface* const* creators = getCreators(n);
    check(creators != nullptr && n == 3, "getCreators returns 3 creators");
    bool allV3 = creators != nullptr;
    for (int32_t k = 0; allV3 && k < n; ++k)
    {
        allV3 = std::strcmp(creators[k]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0;
    }
    check(allV3, "every creator is an IPluginCreatorV3One");
    if (creators != nullptr)
    {
        testSparseSampleConv(findCreator(creators, n, "SparseSampleConv"), finder.logger);
        testInterpolate(findCreator(creators, n, "Interpolate"), finder.logger);
        // SparseBlock's fields and shapes: tests/test_trt_sparse_block.py (sparse_block_harness.cpp)
        check(findCreator(creators, n, "SparseBlock") != nullptr, "the SparseBlock creator is registered");
    }
    std::printf("%d passed, %d failed\n", gPassed, gFailed);
    return gFailed == 0 ? 0 : 1;
}
