/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * roi_align_v0_harness.cpp: drives the sai::RoiAlignV0 plugin glue (roiAlignV0Plugin.cpp, linked in) through
 * the TensorRT plugin interfaces on the CPU, without a GPU or libnvinfer (tests/test_detector_trt_plugin.py
 * builds it against TensorRT 10 or 11 headers and runs it).
 *
 * The launcher here stands in for the GPU one: it records each call and runs the CPU reference
 * (roiAlignV0Math.h) on host memory, so an enqueue through the plugin computes real numbers that the
 * Python test compares with v0.6's RoIAlign. Checks: the creator's name / version / namespace / field list;
 * every field validated by name, type, length and range (nullptr and a logged error naming the field);
 * unknown fields ignored; serialization round trip; output types and shapes (a fake IExprBuilder);
 * supportsFormatCombination; configurePlugin / onShapeChange shape errors; clone / attachToContext; tactics;
 * enqueue with INT32 and INT64 batch indices and with no RoI (no launch).
 *
 * Usage: roi_align_v0_harness [IN.bin OUT.bin]. IN.bin: int32 N, C, H, W, R, output_size, sampling_ratio,
 * float spatial_scale, then X [N,C,H,W] float32, rois [R,4] float32, batch [R] int64; OUT.bin gets Y
 * [R,C,out,out] float32 computed by an enqueue through the plugin. Prints one line per check and
 * "N passed, M failed"; exit status 1 on any failure.
 */
#include "NvInferRuntime.h"
#include "roiAlignV0Kernel.h"
#include "roiAlignV0Plugin.h"
#include "saiPluginCommon.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <limits>
#include <memory>
#include <string>
#include <vector>

using namespace nvinfer1;

// ---------------------------------------------------------------------------------- stand-in launcher

namespace sai
{
namespace
{
struct LaunchRecord
{
    int32_t calls{0};
    SaiRoiAlignParams last{};
    SaiIndexType batchType{SaiIndexType::kINT32};
};
LaunchRecord gLaunches;
} // namespace

SaiKernelCaps const& roiAlignV0KernelCaps()
{
    static SaiKernelCaps const caps = [] {
        SaiKernelCaps c;
        c.layouts[static_cast<int32_t>(SaiDataType::kFLOAT)] = saiLayoutBit(SaiLayout::kNCHW);
        c.nbTactics = 1;
        c.tactics[0] = 1;
        c.tacticNames[0] = "cpu-reference";
        return c;
    }();
    return caps;
}

cudaError_t roiAlignV0Launch(SaiRoiAlignParams const& p, void const* x, void const* rois, void const* batch,
    SaiIndexType batchType, void* y, cudaStream_t /*stream*/) noexcept
{
    ++gLaunches.calls;
    gLaunches.last = p;
    gLaunches.batchType = batchType;
    if (batchType == SaiIndexType::kINT64)
    {
        saiRoiAlignV0Reference(p, static_cast<float const*>(x), static_cast<float const*>(rois),
            static_cast<int64_t const*>(batch), static_cast<float*>(y));
    }
    else
    {
        saiRoiAlignV0Reference(p, static_cast<float const*>(x), static_cast<float const*>(rois),
            static_cast<int32_t const*>(batch), static_cast<float*>(y));
    }
    return cudaSuccess;
}
} // namespace sai

namespace
{

int gPassed = 0;
int gFailed = 0;

void check(bool ok, std::string const& what)
{
    std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
    (ok ? gPassed : gFailed)++;
}

class RecordingLogger : public ILogger
{
public:
    void log(Severity severity, AsciiChar const* msg) noexcept override
    {
        (severity <= Severity::kWARNING ? errors : verbose).emplace_back(msg);
    }
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

// a fake IExprBuilder: constants and symbols (unknown dims)
class ExprImpl : public apiv::VDimensionExpr
{
public:
    ExprImpl(bool constant, int64_t value)
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

class Expr : public IDimensionExpr
{
public:
    explicit Expr(ExprImpl* impl)
    {
        mImpl = impl;
    }
    ~Expr() noexcept override = default;
};

class BuilderImpl : public apiv::VExprBuilder
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
    IDimensionExpr const* operation(DimensionOperation, IDimensionExpr const&, IDimensionExpr const&) override
    {
        return make(false, 0);
    }
    IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override
    {
        return make(false, 0);
    }

private:
    IDimensionExpr const* make(bool c, int64_t v)
    {
        mImpls.emplace_back(std::make_unique<ExprImpl>(c, v));
        mExprs.emplace_back(std::make_unique<Expr>(mImpls.back().get()));
        return mExprs.back().get();
    }
    std::deque<std::unique_ptr<ExprImpl>> mImpls;
    std::deque<std::unique_ptr<Expr>> mExprs;
};

class Builder : public IExprBuilder
{
public:
    explicit Builder(BuilderImpl* impl)
    {
        mImpl = impl;
    }
    ~Builder() noexcept override = default;
};

DimsExprs exprs(BuilderImpl& b, std::vector<int64_t> const& dims)
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

PluginTensorDesc desc(std::vector<int64_t> const& dims, DataType t, TensorFormat f = TensorFormat::kLINEAR)
{
    PluginTensorDesc d{};
    d.dims = dimsOf(dims);
    d.type = t;
    d.format = f;
    return d;
}

//! The fields of a RoiAlignV0 node as TensorRT's ONNX parser passes them (plus its plugin_* strings).
struct Fields
{
    float scale{0.25F};
    int32_t out{7};
    int32_t n{2};
    std::vector<PluginField> list;
    char const* ns = "sai";
    char const* ver = "1";
    PluginFieldCollection fc{};

    PluginFieldCollection const* make()
    {
        list = {PluginField("spatial_scale", &scale, PluginFieldType::kFLOAT32, 1),
            PluginField("output_size", &out, PluginFieldType::kINT32, 1),
            PluginField("sampling_ratio", &n, PluginFieldType::kINT32, 1),
            PluginField("plugin_namespace", ns, PluginFieldType::kCHAR, 4),
            PluginField("plugin_version", ver, PluginFieldType::kCHAR, 2)};
        fc.nbFields = static_cast<int32_t>(list.size());
        fc.fields = list.data();
        return &fc;
    }
};

using sai::plugin::RoiAlignV0Plugin;
using sai::plugin::RoiAlignV0PluginCreator;

IPluginV3OneBuild* buildOf(IPluginV3* p)
{
    return static_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD));
}
IPluginV3OneRuntime* runtimeOf(IPluginV3* p)
{
    return static_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
}
IPluginV3OneCore* coreOf(IPluginV3* p)
{
    return static_cast<IPluginV3OneCore*>(p->getCapabilityInterface(PluginCapabilityType::kCORE));
}

void testCreator(RoiAlignV0PluginCreator& creator, RecordingLogger& log)
{
    check(std::strcmp(creator.getPluginName(), "RoiAlignV0") == 0, "creator name RoiAlignV0");
    check(std::strcmp(creator.getPluginVersion(), "1") == 0, "creator version 1");
    check(std::strcmp(creator.getPluginNamespace(), "sai") == 0, "creator namespace sai");
    PluginFieldCollection const* names = creator.getFieldNames();
    bool listed = names != nullptr && names->nbFields == 3;
    for (int32_t i = 0; listed && i < 3; ++i)
    {
        char const* want[] = {"spatial_scale", "output_size", "sampling_ratio"};
        listed = std::strcmp(names->fields[i].name, want[i]) == 0;
    }
    check(listed, "creator lists spatial_scale, output_size, sampling_ratio");

    Fields good;
    log.clear();
    std::unique_ptr<IPluginV3> p(creator.createPlugin("roi0", good.make(), TensorRTPhase::kBUILD));
    check(p != nullptr && log.errors.empty(), "valid fields (and the parser's plugin_* strings) create a plugin");
    if (p)
    {
        auto* rp = static_cast<RoiAlignV0Plugin*>(p.get());
        check(rp->attrs().outputSize == 7 && rp->attrs().samplingRatio == 2 && rp->attrs().spatialScale == 0.25F,
            "attributes read");
        check(std::strcmp(coreOf(p.get())->getPluginNamespace(), "sai") == 0
                && std::strcmp(coreOf(p.get())->getPluginName(), "RoiAlignV0") == 0,
            "plugin name and namespace");
    }

    // every field: wrong type, wrong length, out of range, non-finite -> nullptr + a message naming it
    float const nan = std::numeric_limits<float>::quiet_NaN();
    float const inf = std::numeric_limits<float>::infinity();
    auto bad = [&](std::string const& what, std::string const& needle, auto edit) {
        Fields f;
        PluginFieldCollection const* fc = f.make();
        edit(f);
        log.clear();
        std::unique_ptr<IPluginV3> q(creator.createPlugin("roi_bad", fc, TensorRTPhase::kBUILD));
        check(q == nullptr && log.saw(needle) && log.saw("roi_bad"), "refused: " + what);
    };
    bad("spatial_scale 0", "spatial_scale", [](Fields& f) { f.scale = 0.F; });
    bad("spatial_scale -0.25", "spatial_scale", [](Fields& f) { f.scale = -0.25F; });
    bad("spatial_scale NaN", "spatial_scale", [nan](Fields& f) { f.scale = nan; });
    bad("spatial_scale inf", "spatial_scale", [inf](Fields& f) { f.scale = inf; });
    bad("spatial_scale as INT32", "spatial_scale", [](Fields& f) { f.list[0].type = PluginFieldType::kINT32; });
    bad("spatial_scale of length 2", "spatial_scale", [](Fields& f) { f.list[0].length = 2; });
    bad("spatial_scale without data", "spatial_scale", [](Fields& f) { f.list[0].data = nullptr; });
    bad("output_size 0", "output_size", [](Fields& f) { f.out = 0; });
    bad("output_size 65", "output_size", [](Fields& f) { f.out = 65; });
    bad("output_size as FLOAT32", "output_size", [](Fields& f) { f.list[1].type = PluginFieldType::kFLOAT32; });
    bad("output_size of length 0", "output_size", [](Fields& f) { f.list[1].length = 0; });
    bad("sampling_ratio 0 (adaptive)", "sampling_ratio", [](Fields& f) { f.n = 0; });
    bad("sampling_ratio 17", "sampling_ratio", [](Fields& f) { f.n = 17; });
    bad("sampling_ratio as INT64", "sampling_ratio", [](Fields& f) { f.list[2].type = PluginFieldType::kINT64; });
    bad("sampling_ratio of length 3", "sampling_ratio", [](Fields& f) { f.list[2].length = 3; });
    {
        PluginFieldCollection fc{1, nullptr};
        log.clear();
        std::unique_ptr<IPluginV3> q(creator.createPlugin("roi_bad", &fc, TensorRTPhase::kBUILD));
        check(q == nullptr && !log.errors.empty(), "refused: a collection without its fields array");
    }
}

void testBuild(RoiAlignV0PluginCreator& creator, RecordingLogger& log)
{
    Fields f;
    f.scale = 0.125F;
    f.out = 5;
    f.n = 3;
    std::unique_ptr<IPluginV3> p(creator.createPlugin("roi1", f.make(), TensorRTPhase::kBUILD));
    check(p != nullptr, "plugin with scale 1/8, output 5, sampling 3");
    if (!p)
    {
        return;
    }
    IPluginV3OneBuild* b = buildOf(p.get());
    check(b->getNbOutputs() == 1, "one output");
    DataType in[3] = {DataType::kFLOAT, DataType::kFLOAT, DataType::kINT64};
    DataType out = DataType::kHALF;
    check(b->getOutputDataTypes(&out, 1, in, 3) == 0 && out == DataType::kFLOAT, "output FP32");
    in[2] = DataType::kINT32;
    check(b->getOutputDataTypes(&out, 1, in, 3) == 0, "INT32 batch indices taken");
    in[0] = DataType::kHALF;
    log.clear();
    check(b->getOutputDataTypes(&out, 1, in, 3) == -1 && log.saw("FP32"), "FP16 X refused with a message");
    in[0] = DataType::kFLOAT;
    in[2] = DataType::kFLOAT;
    log.clear();
    check(b->getOutputDataTypes(&out, 1, in, 3) == -1 && log.saw("batch_indices"), "FP32 batch indices refused");
    log.clear();
    check(b->getOutputDataTypes(&out, 1, in, 2) == -1 && log.saw("3 inputs"), "two inputs refused");

    BuilderImpl bi;
    Builder eb(&bi);
    DimsExprs ins[3] = {exprs(bi, {-1, 256, -1, -1}), exprs(bi, {-1, 4}), exprs(bi, {-1})};
    DimsExprs outs[1];
    int32_t rc = b->getOutputShapes(ins, 3, nullptr, 0, outs, 1, eb);
    check(rc == 0 && outs[0].nbDims == 4 && outs[0].d[0] == ins[1].d[0] && outs[0].d[1]->isConstant()
            && outs[0].d[1]->getConstantValue() == 256 && outs[0].d[2]->getConstantValue() == 5
            && outs[0].d[3]->getConstantValue() == 5,
        "output [R, C, 5, 5] (R symbolic from rois)");
    DimsExprs badRois[3] = {exprs(bi, {-1, 256, -1, -1}), exprs(bi, {-1, 5}), exprs(bi, {-1})};
    log.clear();
    check(b->getOutputShapes(badRois, 3, nullptr, 0, outs, 1, eb) == -1 && log.saw("[R,4]"), "rois [R,5] refused");
    DimsExprs badRank[3] = {exprs(bi, {256, -1, -1}), exprs(bi, {-1, 4}), exprs(bi, {-1})};
    log.clear();
    check(b->getOutputShapes(badRank, 3, nullptr, 0, outs, 1, eb) == -1 && log.saw("4-D"), "3-D X refused");

    // formats: FP32 kLINEAR X / rois / Y, INT32 or INT64 kLINEAR batch indices, nothing else
    DynamicPluginTensorDesc io[4]{};
    io[0].desc = desc({1, 8, 6, 7}, DataType::kFLOAT);
    io[1].desc = desc({3, 4}, DataType::kFLOAT);
    io[2].desc = desc({3}, DataType::kINT64);
    io[3].desc = desc({3, 8, 5, 5}, DataType::kFLOAT);
    bool all = true;
    for (int32_t pos = 0; pos < 4; ++pos)
    {
        all = all && b->supportsFormatCombination(pos, io, 3, 1);
    }
    check(all, "FP32 linear + INT64 batch indices supported");
    io[2].desc.type = DataType::kINT32;
    check(b->supportsFormatCombination(2, io, 3, 1), "INT32 batch indices supported");
    io[0].desc.type = DataType::kHALF;
    check(!b->supportsFormatCombination(0, io, 3, 1), "FP16 X not supported");
    io[0].desc = desc({1, 8, 6, 7}, DataType::kFLOAT, TensorFormat::kHWC);
    check(!b->supportsFormatCombination(0, io, 3, 1), "kHWC X not supported");
    io[0].desc = desc({1, 8, 6, 7}, DataType::kFLOAT);
    io[3].desc.type = DataType::kHALF;
    check(!b->supportsFormatCombination(3, io, 3, 1), "FP16 output not supported");
    check(!b->supportsFormatCombination(4, io, 3, 1), "position 4 refused");
    io[3].desc.type = DataType::kFLOAT;

    check(b->configurePlugin(io, 3, io + 3, 1) == 0, "configurePlugin [1,8,6,7], [3,4], [3]");
    io[2].desc = desc({2}, DataType::kINT64);
    log.clear();
    check(b->configurePlugin(io, 3, io + 3, 1) == -1 && log.saw("one index per RoI"), "3 RoIs, 2 indices refused");
    io[2].desc = desc({-1}, DataType::kINT64);
    check(b->configurePlugin(io, 3, io + 3, 1) == 0, "an unknown index count is taken at build time");
    check(b->getWorkspaceSize(io, 3, io + 3, 1) == 0, "no workspace");

    // tactics, timing cache ID, clone, serialization round trip
    check(b->getNbTactics() == 1, "one tactic (the kernel's)");
    check(std::string(b->getTimingCacheID()).find("sai.RoiAlignV0.1:scale0.125:out5:n3") == 0, "timing-cache ID");
    IPluginV3OneRuntime* r = runtimeOf(p.get());
    check(r->setTactic(99) == -1 && r->setTactic(1) == 0, "setTactic checks the list");
    std::unique_ptr<IPluginV3> c(p->clone());
    check(c && static_cast<RoiAlignV0Plugin*>(c.get())->attrs().samplingRatio == 3, "clone keeps the attributes");
    std::unique_ptr<IPluginV3> a(r->attachToContext(nullptr));
    check(a != nullptr, "attachToContext gives a copy");
    PluginFieldCollection const* ser = r->getFieldsToSerialize();
    std::unique_ptr<IPluginV3> back(ser ? creator.createPlugin("roi1", ser, TensorRTPhase::kRUNTIME) : nullptr);
    check(back && static_cast<RoiAlignV0Plugin*>(back.get())->attributesText() == "scale0.125:out5:n3",
        "serialization round trip");
}

void testEnqueue(RoiAlignV0PluginCreator& creator, RecordingLogger& log)
{
    Fields f;
    std::unique_ptr<IPluginV3> p(creator.createPlugin("roi2", f.make(), TensorRTPhase::kRUNTIME));
    if (!p)
    {
        check(false, "plugin for enqueue");
        return;
    }
    IPluginV3OneRuntime* r = runtimeOf(p.get());
    // maps of ones: every sample inside averages to 1; a RoI far outside the map is 0
    std::vector<float> x(2 * 1 * 4 * 4, 1.F);
    std::vector<float> rois = {0.F, 0.F, 7.F, 7.F, 100.F, 100.F, 120.F, 120.F};
    std::vector<int32_t> b32 = {1, 0};
    std::vector<float> y(2 * 49, -5.F);
    PluginTensorDesc in[3] = {desc({2, 1, 4, 4}, DataType::kFLOAT), desc({2, 4}, DataType::kFLOAT),
        desc({2}, DataType::kINT32)};
    PluginTensorDesc out[1] = {desc({2, 1, 7, 7}, DataType::kFLOAT)};
    void const* ins[3] = {x.data(), rois.data(), b32.data()};
    void* outs[1] = {y.data()};
    int32_t const before = sai::gLaunches.calls;
    check(r->onShapeChange(in, 3, out, 1) == 0, "onShapeChange");
    int32_t rc = r->enqueue(in, out, ins, outs, nullptr, nullptr);
    bool ones = true;
    bool zeros = true;
    for (int32_t i = 0; i < 49; ++i)
    {
        ones = ones && std::fabs(y[i] - 1.F) < 1e-6F;
        zeros = zeros && y[49 + i] == 0.F;
    }
    check(rc == 0 && sai::gLaunches.calls == before + 1 && sai::gLaunches.batchType == sai::SaiIndexType::kINT32
            && sai::gLaunches.last.N == 2 && sai::gLaunches.last.R == 2 && sai::gLaunches.last.outSize == 7,
        "enqueue launches once with the shapes and INT32 indices");
    check(ones && zeros, "a RoI on a map of ones is 1, one outside the map 0");
    PluginTensorDesc none[3] = {desc({2, 1, 4, 4}, DataType::kFLOAT), desc({0, 4}, DataType::kFLOAT),
        desc({0}, DataType::kINT64)};
    PluginTensorDesc outNone[1] = {desc({0, 1, 7, 7}, DataType::kFLOAT)};
    rc = r->enqueue(none, outNone, ins, outs, nullptr, nullptr);
    check(rc == 0 && sai::gLaunches.calls == before + 1, "no RoI: no launch");
    PluginTensorDesc badX[3] = {desc({2, 4, 4}, DataType::kFLOAT), desc({2, 4}, DataType::kFLOAT),
        desc({2}, DataType::kINT32)};
    log.clear();
    check(r->enqueue(badX, out, ins, outs, nullptr, nullptr) == -1 && !log.errors.empty(), "3-D X refused at enqueue");
}

bool readAll(FILE* fp, void* dst, size_t bytes)
{
    return bytes == 0 || std::fread(dst, 1, bytes, fp) == bytes;
}

//! IN.bin -> an enqueue through the plugin (INT64 indices) -> OUT.bin.
bool runFile(RoiAlignV0PluginCreator& creator, char const* inPath, char const* outPath)
{
    FILE* fp = std::fopen(inPath, "rb");
    if (fp == nullptr)
    {
        return false;
    }
    int32_t h[7];
    float scale = 0.F;
    bool ok = readAll(fp, h, sizeof(h)) && readAll(fp, &scale, sizeof(scale));
    int64_t const n = h[0], c = h[1], hh = h[2], w = h[3], rr = h[4];
    std::vector<float> x(ok ? n * c * hh * w : 0), rois(ok ? rr * 4 : 0), y(ok ? rr * c * h[5] * h[5] : 0);
    std::vector<int64_t> b(ok ? rr : 0);
    ok = ok && readAll(fp, x.data(), x.size() * 4) && readAll(fp, rois.data(), rois.size() * 4)
        && readAll(fp, b.data(), b.size() * 8);
    std::fclose(fp);
    if (!ok)
    {
        return false;
    }
    Fields f;
    f.scale = scale;
    f.out = h[5];
    f.n = h[6];
    std::unique_ptr<IPluginV3> p(creator.createPlugin("roi_file", f.make(), TensorRTPhase::kRUNTIME));
    if (!p)
    {
        return false;
    }
    PluginTensorDesc in[3] = {desc({n, c, hh, w}, DataType::kFLOAT), desc({rr, 4}, DataType::kFLOAT),
        desc({rr}, DataType::kINT64)};
    PluginTensorDesc out[1] = {desc({rr, c, h[5], h[5]}, DataType::kFLOAT)};
    void const* ins[3] = {x.data(), rois.data(), b.data()};
    void* outs[1] = {y.data()};
    if (runtimeOf(p.get())->enqueue(in, out, ins, outs, nullptr, nullptr) != 0
        || sai::gLaunches.batchType != sai::SaiIndexType::kINT64)
    {
        return false;
    }
    FILE* op = std::fopen(outPath, "wb");
    if (op == nullptr)
    {
        return false;
    }
    bool const wrote = std::fwrite(y.data(), 4, y.size(), op) == y.size();
    std::fclose(op);
    return wrote;
}

} // namespace

int main(int argc, char** argv)
{
    Finder finder;
    sai::plugin::saiSetLoggerFinder(&finder);
    RoiAlignV0PluginCreator creator;
    testCreator(creator, finder.logger);
    testBuild(creator, finder.logger);
    testEnqueue(creator, finder.logger);
    if (argc == 3)
    {
        check(runFile(creator, argv[1], argv[2]), std::string("enqueue of ") + argv[1] + " written to " + argv[2]);
    }
    std::printf("%d passed, %d failed\n", gPassed, gFailed);
    return gFailed == 0 ? 0 : 1;
}
