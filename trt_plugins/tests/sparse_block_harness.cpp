/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * The SparseBlock plugin's glue driven through the TensorRT plugin interfaces on the CPU
 * (tests/test_trt_sparse_block.py builds it against TensorRT 10 / 11 headers): the creator's checks of
 * every field (name, type, length, range; the node name in each message), serialization, output
 * shapes through a fake IExprBuilder, formats, configure-time shape checks, the workspace plan and
 * enqueue reaching SparseBlockRunner (linked with the launcher and the embedded kernels; no GPU: a run
 * without a workspace is refused, naming it). Prints "ok"/"FAIL" per check.
 */
#include "NvInferRuntime.h"
#include "sparseBlockPlugin.h"

#include <cmath>
#include <cstdio>
#include <cuda.h>
#include <deque>
#include <memory>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace
{
int gPassed = 0;
int gFailed = 0;

void check(bool ok, std::string const& what)
{
    std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
    (ok ? gPassed : gFailed)++;
}

class Logger : public ILogger
{
public:
    void log(Severity severity, AsciiChar const* msg) noexcept override
    {
        (severity <= Severity::kWARNING ? errors : verbose).emplace_back(msg);
    }
    bool saw(std::string const& a, std::string const& b = "") const
    {
        for (auto const& e : errors)
        {
            if (e.find(a) != std::string::npos && e.find(b) != std::string::npos)
            {
                return true;
            }
        }
        return false;
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
    Logger logger;
};

class ExprImpl : public apiv::VDimensionExpr
{
public:
    ExprImpl(bool c, int64_t v)
        : mC(c)
        , mV(v)
    {
    }
    bool isConstant() const override
    {
        return mC;
    }
    int64_t getConstantValue() const override
    {
        return mC ? mV : -1;
    }
    bool isSizeTensor() const override
    {
        return false;
    }

private:
    bool mC;
    int64_t mV;
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
    IDimensionExpr const* constant(int64_t v) override
    {
        return make(true, v);
    }
    IDimensionExpr const* operation(DimensionOperation op, IDimensionExpr const& a, IDimensionExpr const& b) override
    {
        if (!a.isConstant() || !b.isConstant())
        {
            return make(false, 0);
        }
        int64_t const x = a.getConstantValue();
        int64_t const y = b.getConstantValue();
        switch (op)
        {
        case DimensionOperation::kSUM: return make(true, x + y);
        case DimensionOperation::kSUB: return make(true, x - y);
        case DimensionOperation::kPROD: return make(true, x * y);
        case DimensionOperation::kFLOOR_DIV: return make(true, x >= 0 ? x / y : -((-x + y - 1) / y));
        default: return make(false, 0);
        }
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

//! Owns the storage of one field list.
struct Fields
{
    std::deque<std::vector<int32_t>> ints;
    std::deque<float> floats;
    std::vector<PluginField> list;
    void i(char const* name, std::vector<int32_t> v)
    {
        ints.push_back(std::move(v));
        list.emplace_back(name, ints.back().data(), PluginFieldType::kINT32, static_cast<int32_t>(ints.back().size()));
    }
    void f(char const* name, float v)
    {
        floats.push_back(v);
        list.emplace_back(name, &floats.back(), PluginFieldType::kFLOAT32, 1);
    }
    PluginFieldCollection fc()
    {
        PluginFieldCollection c{};
        c.nbFields = static_cast<int32_t>(list.size());
        c.fields = list.data();
        return c;
    }
};

//! A Bottleneck with a stride-2 conv2 and a downsample: the fields of its node.
Fields goodFields()
{
    Fields f;
    f.i("stride_a", {1});
    f.i("stride_b", {2});
    f.i("relu_b", {1});
    f.i("down_stride", {2});
    f.i("offset_stride", {2});
    f.i("mask_strides", {1, 2});
    f.f("sigma1", 1.5F);
    f.f("sigma2", 2.F);
    f.i("kernel_size", {7});
    f.f("eps", 1e-5F);
    f.f("temperature", 1.F);
    f.i("grid_interval", {3});
    return f;
}

struct Block
{
    std::vector<std::vector<int64_t>> dims;
    DataType type{DataType::kHALF};
    TensorFormat format{TensorFormat::kHWC8};
};

//! X [2,64,15,9]: WA [32,64,1,1], WB [32,32,3,3], WC [128,32,1,1], WD [128,64,1,1].
Block bottleneck()
{
    Block b;
    b.dims = {{2, 64, 15, 9}, {2, 64, 3, 3}, {2}, {32, 64, 1, 1}, {32}, {32, 32, 3, 3}, {32}, {128, 32, 1, 1}, {128},
        {128, 64, 1, 1}, {128}, {0}, {0}};
    return b;
}

std::vector<DynamicPluginTensorDesc> descs(Block const& b, std::vector<int64_t> const& y)
{
    std::vector<DynamicPluginTensorDesc> d(b.dims.size() + 1);
    for (size_t i = 0; i <= b.dims.size(); ++i)
    {
        Dims const dims = dimsOf(i < b.dims.size() ? b.dims[i] : y);
        d[i].desc.dims = dims;
        d[i].min = dims;
        d[i].max = dims;
        d[i].opt = dims;
        bool const act = i == 0 || i == b.dims.size();
        bool const fp32 = i == 1 || i == 2 || ((i == 13 || i == 14) && i < b.dims.size());
        d[i].desc.type = fp32 ? DataType::kFLOAT : b.type;
        d[i].desc.format = act ? b.format : TensorFormat::kLINEAR;
    }
    return d;
}

} // namespace

int main()
{
    Finder finder;
    sai::plugin::saiSetLoggerFinder(&finder);
    Logger& log = finder.logger;
    sai::plugin::SparseBlockPluginCreator creator;
    check(std::string(creator.getPluginName()) == "SparseBlock" && std::string(creator.getPluginNamespace()) == "sai"
            && std::string(creator.getPluginVersion()) == "1",
        "creator: SparseBlock, namespace sai, version 1");
    check(creator.getFieldNames()->nbFields == 12, "creator: 12 fields");

    // ---- the creator's checks
    {
        Fields f = goodFields();
        PluginFieldCollection fc = f.fc();
        std::unique_ptr<IPluginV3> p(creator.createPlugin("blk0", &fc, TensorRTPhase::kBUILD));
        check(p != nullptr && log.errors.empty(), "good fields: a plugin, no error");
    }
    struct Bad
    {
        char const* field;
        char const* why;
        void (*edit)(Fields&);
    };
    Bad const bads[] = {
        {"stride_a", "0", [](Fields& f) { f.ints[0] = {0}; }},
        {"stride_b", "2 values", [](Fields& f) { f.ints[1] = {1, 1}; f.list[1].length = 2; }},
        {"relu_b", "2", [](Fields& f) { f.ints[2] = {2}; }},
        {"down_stride", "float type", [](Fields& f) { f.list[3].type = PluginFieldType::kFLOAT32; }},
        {"offset_stride", "-1", [](Fields& f) { f.ints[4] = {-1}; }},
        {"mask_strides", "1 value", [](Fields& f) { f.list[5].length = 1; }},
        {"mask_strides", "0", [](Fields& f) { f.ints[5] = {1, 0}; }},
        {"sigma1", "0", [](Fields& f) { f.floats[0] = 0.F; }},
        {"sigma2", "NaN", [](Fields& f) { f.floats[1] = std::nanf(""); }},
        {"kernel_size", "even", [](Fields& f) { f.ints[6] = {8}; }},
        {"kernel_size", "33", [](Fields& f) { f.ints[6] = {33}; }},
        {"eps", "-1", [](Fields& f) { f.floats[2] = -1.F; }},
        {"temperature", "0", [](Fields& f) { f.floats[3] = 0.F; }},
        {"temperature", "int type", [](Fields& f) { f.list[10].type = PluginFieldType::kINT32; }},
        {"grid_interval", "-1", [](Fields& f) { f.ints[7] = {-1}; }},
    };
    for (Bad const& b : bads)
    {
        Fields f = goodFields();
        b.edit(f);
        PluginFieldCollection fc = f.fc();
        log.errors.clear();
        std::unique_ptr<IPluginV3> p(creator.createPlugin("node_7", &fc, TensorRTPhase::kBUILD));
        check(p == nullptr && log.saw(std::string("'") + b.field + "'", "node_7"),
            std::string("bad field ") + b.field + " (" + b.why + "): nullptr, logged with the field and node name");
    }
    {
        Fields f = goodFields();
        f.i("no_such_field", {1});
        PluginFieldCollection fc = f.fc();
        log.errors.clear();
        std::unique_ptr<IPluginV3> p(creator.createPlugin("blk", &fc, TensorRTPhase::kBUILD));
        check(p != nullptr && log.errors.empty(), "an unknown field is ignored (verbose log only)");
    }

    // ---- serialization round trip
    Fields f = goodFields();
    PluginFieldCollection fc = f.fc();
    std::unique_ptr<IPluginV3> plugin(creator.createPlugin("blk", &fc, TensorRTPhase::kBUILD));
    auto* sp = static_cast<sai::plugin::SparseBlockPlugin*>(plugin.get());
    {
        PluginFieldCollection const* ser = sp->getFieldsToSerialize();
        std::unique_ptr<IPluginV3> back(creator.createPlugin("blk", ser, TensorRTPhase::kRUNTIME));
        auto* sb = static_cast<sai::plugin::SparseBlockPlugin*>(back.get());
        check(back != nullptr && sb->attributesText() == sp->attributesText() && sb->attrs().sigma1 == 1.5F
                && sb->attrs().sigma2 == 2.F && sb->attrs().gridInterval == 3,
            "getFieldsToSerialize -> createPlugin gives the same attributes");
    }

    // ---- output shapes
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    BuilderImpl impl;
    Builder eb(&impl);
    auto shapeOf = [&](Block const& b, std::vector<int64_t>& out) {
        std::vector<DimsExprs> in(b.dims.size());
        for (size_t i = 0; i < b.dims.size(); ++i)
        {
            in[i].nbDims = static_cast<int32_t>(b.dims[i].size());
            for (size_t k = 0; k < b.dims[i].size(); ++k)
            {
                in[i].d[k] = eb.constant(b.dims[i][k]);
            }
        }
        DimsExprs o{};
        int32_t const rc
            = build->getOutputShapes(in.data(), static_cast<int32_t>(in.size()), nullptr, 0, &o, 1, eb);
        out.clear();
        for (int32_t k = 0; k < o.nbDims; ++k)
        {
            out.push_back(o.d[k]->getConstantValue());
        }
        return rc;
    };
    std::vector<int64_t> y;
    Block bn = bottleneck();
    check(shapeOf(bn, y) == 0 && y == std::vector<int64_t>({2, 128, 8, 5}),
        "Bottleneck X [2,64,15,9], stride 2: Y [2,128,8,5]");
    Block basic = bn;
    basic.dims[7] = {0};
    basic.dims[8] = {0};
    check(shapeOf(basic, y) == 0 && y == std::vector<int64_t>({2, 32, 8, 5}), "BasicBlock (WC [0]): Y [2,Cb,8,5]");
    {
        DataType types[13];
        for (auto& t : types)
        {
            t = DataType::kHALF;
        }
        DataType out{};
        check(build->getOutputDataTypes(&out, 1, types, 13) == 0 && out == DataType::kHALF, "output type = X's");
        types[0] = DataType::kINT8;
        log.errors.clear();
        check(build->getOutputDataTypes(&out, 1, types, 13) != 0 && log.saw("INT8"), "INT8 X refused, named");
    }

    // ---- formats
    {
        auto d = descs(bn, {2, 128, 8, 5});
        auto ok = [&](int32_t pos) { return build->supportsFormatCombination(pos, d.data(), 13, 1); };
        check(ok(0), "X FP16 kHWC8 (C 64) offered");
        d[0].desc.format = TensorFormat::kLINEAR;
        check(!ok(0), "X FP16 kLINEAR (NCHW) not offered: no slow build for the hot path");
        d[0].desc.format = TensorFormat::kHWC16;
        check(ok(0), "X FP16 kHWC16 offered");
        d[0].desc.type = DataType::kFLOAT;
        d[0].desc.format = TensorFormat::kHWC;
        check(ok(0), "X FP32 kHWC offered");
        d[0].desc.format = TensorFormat::kLINEAR;
        check(!ok(0), "X FP32 kLINEAR not offered");
        d[0].desc.type = DataType::kBF16;
        d[0].desc.format = TensorFormat::kHWC8;
        check(ok(0), "X BF16 kHWC8 offered");
        d[0].desc.dims.d[1] = 12;
        check(!ok(0), "X FP16/BF16 kHWC8 with C 12 (padding channels) not offered");
        d = descs(bn, {2, 128, 8, 5});
        check(ok(1) && ok(2), "MW, MB FP32 kLINEAR");
        d[1].desc.type = DataType::kHALF;
        check(!ok(1), "MW FP16 refused (the masks are fp32)");
        check(ok(3) && ok(12), "weights in X's type, kLINEAR");
        d[3].desc.type = DataType::kFLOAT;
        check(!ok(3), "a weight of another type refused");
        check(ok(13), "Y in X's type and format");
        d[13].desc.format = TensorFormat::kHWC16;
        check(!ok(13), "Y in another format refused");
    }

    // ---- configure: the shapes of a block
    auto configure = [&](Block const& b, std::vector<int64_t> const& yd) {
        auto d = descs(b, yd);
        log.errors.clear();
        return build->configurePlugin(d.data(), static_cast<int32_t>(b.dims.size()), &d.back(), 1);
    };
    check(configure(bn, {2, 128, 8, 5}) == 0 && log.errors.empty(), "configure: Bottleneck with downsample");
    check(configure(basic, {2, 32, 8, 5}) != 0 && log.saw("WD must be [32,64,1,1]"),
        "configure: WD of another Cout refused, named");
    {
        Block b = bn;
        b.dims[5] = {32, 16, 3, 3};
        check(configure(b, {2, 128, 8, 5}) != 0 && log.saw("WB must be [Cb, 32, 3, 3]"), "configure: WB's Cin refused");
        b = bn;
        b.dims[1] = {1, 64, 3, 3};
        check(configure(b, {2, 128, 8, 5}) != 0 && log.saw("MW must be [2,64,3,3]"), "configure: MW [1,...] refused");
        b = bn;
        b.dims[9] = {0};
        b.dims[10] = {0};
        check(configure(b, {2, 128, 8, 5}) != 0 && log.saw("without WD the identity is X"),
            "configure: no downsample with stride 2 refused");
        b = bn;
        b.dims[11] = {18, 64, 3, 3};
        b.dims[12] = {18};
        check(configure(b, {2, 128, 8, 5}) == 0, "configure: DCN conv2 (WO [18,C,3,3])");
        b.dims[12] = {9};
        check(configure(b, {2, 128, 8, 5}) != 0 && log.saw("BO must be [18]"), "configure: BO of 9 refused");
        b = bn;
        b.dims.push_back({2, 2, 15, 9});
        b.dims.push_back({2, 2, 8, 5});
        check(configure(b, {2, 128, 8, 5}) == 0, "configure: stochastic (U1 [N,2,H1,W1], U2 [N,2,H2,W2])");
        b.dims[14] = {2, 2, 15, 9};
        check(configure(b, {2, 128, 8, 5}) != 0 && log.saw("noise U2 must be [N,2,Ho,Wo] = [2,2,8,5]"),
            "configure: U2 of the wrong size refused");
        b = bn;
        b.dims[3] = {32, 64, 1, -1};
        check(configure(b, {2, 128, 8, 5}) != 0 && log.saw("WA must have static dims"), "configure: dynamic WA refused");
        b = bn;
        b.dims[0] = {-1, 64, -1, -1};
        check(configure(b, {2, 128, 8, 5}) == 0, "configure: dynamic X accepted (checked at onShapeChange)");
        log.errors.clear();
        std::unique_ptr<IPluginV3> p(plugin->clone());
        check(p != nullptr, "clone");
        check(configure(bn, {2, 64, 8, 5}) == 0, "configure again");
    }
    for (auto const& [field, value, needle] : {std::make_tuple(5, std::vector<int32_t>{2, 2}, "mask_strides must be"),
             std::make_tuple(6, std::vector<int32_t>{5}, "kernel_size must be 7"),
             std::make_tuple(7, std::vector<int32_t>{0}, "grid_interval must be >= 1"),
             std::make_tuple(3, std::vector<int32_t>{1}, "down_stride must be")})
    {
        Fields g = goodFields();
        size_t const slot = static_cast<size_t>(field == 3 ? 3 : field);
        g.ints[slot] = value;
        PluginFieldCollection gc = g.fc();
        std::unique_ptr<IPluginV3> p(creator.createPlugin("blk9", &gc, TensorRTPhase::kBUILD));
        auto* pb = static_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD));
        auto d = descs(bn, {2, 128, 8, 5});
        log.errors.clear();
        check(pb->configurePlugin(d.data(), 13, &d.back(), 1) != 0 && log.saw(needle, "SparseBlock plugin"),
            std::string("configure refuses what the AOT builds cannot run: ") + needle);
    }

    // ---- workspace: the plan of sparseBlockKernel.h, counted here independently for the Bottleneck
    {
        auto d = descs(bn, {2, 128, 8, 5});
        auto al = [](size_t b) { return (b + 255) / 256 * 256; };
        size_t const p1 = 2 * 15 * 9;
        size_t const p2 = 2 * 8 * 5;
        // scratch: the larger of N*ceil(H/8)*ceil(W/8)*ceil(C/BC) programs x 16 x 8 x (BC + 1) floats, BC 128
        // for Interpolate(a, m1) (Cm = 32: 8 programs), 64 for the tail (Cout = 128: 4 programs)
        size_t const s1 = 2 * 2 * 2 * 1 * 129;
        size_t const s2 = 2 * 1 * 1 * 2 * 65;
        size_t const want = 2 * (al(p1 * 4) + al(p2 * 4)) + al(48) + 2 * al(p1 * 32 * 2) + al(p2 * 32 * 2)
            + al(p2 * 128 * 2) + al((s1 > s2 ? s1 : s2) * 16 * 8 * 4);
        size_t const got = build->getWorkspaceSize(d.data(), 13, &d.back(), 1);
        check(got == want, "workspace " + std::to_string(got) + " bytes = the plan's " + std::to_string(want));
    }

    // ---- runtime: shapes, enqueue
    {
        auto d = descs(bn, {2, 128, 8, 5});
        std::vector<PluginTensorDesc> in(13);
        for (int32_t i = 0; i < 13; ++i)
        {
            in[i] = d[i].desc;
        }
        PluginTensorDesc out = d[13].desc;
        log.errors.clear();
        check(runtime->onShapeChange(in.data(), 13, &out, 1) == 0 && log.errors.empty(), "onShapeChange");
        std::vector<void const*> ptrs(13, reinterpret_cast<void const*>(0x1000));
        void* yp = reinterpret_cast<void*>(0x2000);
        check(runtime->enqueue(in.data(), &out, ptrs.data(), &yp, nullptr, nullptr) != 0
                && log.saw("SparseBlock: workspace missing"),
            "enqueue reaches the runner, which refuses a missing workspace, naming it");
        in[0].format = TensorFormat::kLINEAR;
        out.format = TensorFormat::kLINEAR;
        log.errors.clear();
        check(runtime->onShapeChange(in.data(), 13, &out, 1) != 0 && log.saw("unsupported type/format"),
            "onShapeChange: NCHW refused, named");
    }
    std::printf("%d passed, %d failed\n", gPassed, gFailed);
    return gFailed == 0 ? 0 : 1;
}
