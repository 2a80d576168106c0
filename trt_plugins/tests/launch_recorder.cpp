/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * launch_recorder.cpp: runs SparseSampleConvRunner / InterpolateRunner (the plugins' launch code on
 * the embedded Triton cubins) against a recording CUDA driver instead of a GPU, `runs` times in a row
 * (as consecutive enqueues of one plugin), and prints every operation they issue as JSON: device
 * allocations, memsets, stream waits, and kernel launches with the spec, tactic, grid and each
 * parameter by name (pointers as offsets into a virtual arena). Per run it also counts what the host
 * did: launches, memsets, heap allocations (malloc, counted while the runner runs, the recording
 * driver's own work excluded), device allocations, image scans, module-cache lookups (the lock),
 * driver lookups, prepares (build choice: spec strings) and weight packs. tests/test_trt_launch.py
 * replays the operations on a host arena with the Triton interpreter and compares the result with
 * the PyTorch reference, so that the host code (build choice, workspace layout, weight packing,
 * strides, grids, zero bias, padding channels) is checked end to end without a GPU.
 *
 *   launch_recorder op=conv cc=80 type=fp16 mtype=fp32 xl=NHWC8 ml=NCHW N=1 C=16 H=9 W=9 Cout=32 \
 *       kh=3 kw=3 ... x=0 mask=4096 weight=... bias=-1 offset=-1 y=... ws=... [runs=2] [capture=1] [every=1] [weight2=...] [N2=...] [share=1] [clones=K]
 *   launch_recorder op=block ... (built with -DSAI_RECORD_BLOCK, sparseBlockLaunch.cpp and sparseBlockRunner.cpp)
 */
#include "interpolateKernel.h"
#include "saiTritonLaunch.h"
#include "sparseSampleConvKernel.h"
#ifdef SAI_RECORD_BLOCK // op=block (tests/test_trt_sparse_block_launch.py): SparseBlockRunner as well
#include "sparseBlockKernel.h"
#endif

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

// ---- heap allocations, counted while a runner runs (glibc: the executable's malloc interposes) ----
extern "C"
{
    void* __libc_malloc(size_t);
    void* __libc_calloc(size_t, size_t);
    void* __libc_realloc(void*, size_t);
    void __libc_free(void*);
}

namespace
{
bool gCounting = false;
long gMallocs = 0;

//! The recording driver's own work (building JSON text) is not the runner's.
struct Uncounted
{
    bool saved;
    Uncounted()
        : saved(gCounting)
    {
        gCounting = false;
    }
    ~Uncounted()
    {
        gCounting = saved;
    }
};
} // namespace

extern "C"
{
    void* malloc(size_t n)
    {
        if (gCounting)
            ++gMallocs;
        return __libc_malloc(n);
    }
    void* calloc(size_t n, size_t m)
    {
        if (gCounting)
            ++gMallocs;
        return __libc_calloc(n, m);
    }
    void* realloc(void* p, size_t n)
    {
        if (gCounting)
            ++gMallocs;
        return __libc_realloc(p, n);
    }
    void free(void* p)
    {
        __libc_free(p);
    }
}

namespace
{
using sai::kernels::KernelImage;

constexpr uint64_t kArena = 0x100000000ULL; // where the virtual arena starts
int gCc = 80;
bool gCapturing = false;
uint64_t gDeviceNext = 0; // the next device allocation (arena offset), past the workspace
uint64_t gDeviceBytes = 0;
std::string gOps;
long gMemsets = 0;
long gSyncs = 0;

void op(std::string const& text)
{
    gOps += (gOps.empty() ? "" : ",\n  ") + text;
}

std::string addr(uint64_t p)
{
    return p >= kArena ? std::to_string(p - kArena) : "\"raw:" + std::to_string(p) + "\"";
}

CUresult ctxGetCurrent(CUcontext* c)
{
    *c = reinterpret_cast<CUcontext>(0x1);
    return CUDA_SUCCESS;
}
CUresult ctxGetDevice(CUdevice* d)
{
    *d = 0;
    return CUDA_SUCCESS;
}
CUresult deviceGetAttribute(int* v, CUdevice_attribute a, CUdevice)
{
    if (a == CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
        *v = gCc / 10;
    else if (a == CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)
        *v = gCc % 10;
    else if (a == CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
        *v = 227 * 1024;
    else
        return CUDA_ERROR_INVALID_VALUE;
    return CUDA_SUCCESS;
}
CUresult moduleLoadData(CUmodule* m, void const* data)
{
    *m = reinterpret_cast<CUmodule>(const_cast<void*>(data));
    return CUDA_SUCCESS;
}
CUresult moduleUnload(CUmodule)
{
    return CUDA_SUCCESS;
}
CUresult moduleGetFunction(CUfunction* f, CUmodule m, char const*)
{
    *f = reinterpret_cast<CUfunction>(m);
    return CUDA_SUCCESS;
}
CUresult funcGetAttribute(int* v, CUfunction_attribute, CUfunction)
{
    *v = 0;
    return CUDA_SUCCESS;
}
CUresult funcSetAttribute(CUfunction, CUfunction_attribute, int)
{
    return CUDA_SUCCESS;
}
KernelImage const* imageOf(CUfunction f)
{
    size_t n = 0;
    KernelImage const* all = sai::kernels::embeddedImages(&n);
    for (size_t i = 0; i < n; ++i)
        if (static_cast<void const*>(all[i].cubin) == static_cast<void const*>(f))
            return &all[i];
    return nullptr;
}
CUresult launchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned, unsigned, unsigned,
    CUstream, void** params, void**)
{
    Uncounted guard;
    KernelImage const* img = imageOf(f);
    if (img == nullptr)
        return CUDA_ERROR_INVALID_HANDLE;
    std::string args;
    std::string plist = img->params;
    size_t pos = 0;
    for (int k = 0; k < img->numParams; ++k)
    {
        size_t end = plist.find(',', pos);
        if (end == std::string::npos)
            end = plist.size();
        std::string item = plist.substr(pos, end - pos);
        pos = end + 1;
        size_t colon = item.find(':');
        std::string name = item.substr(0, colon), type = item.substr(colon + 1);
        std::string value;
        if (type[0] == '*')
            value = addr(*static_cast<CUdeviceptr*>(params[k]));
        else if (type == "i32")
            value = std::to_string(*static_cast<int32_t*>(params[k]));
        else
        {
            char buf[64];
            std::snprintf(buf, sizeof(buf), "%.9g", static_cast<double>(*static_cast<float*>(params[k])));
            value = buf;
        }
        args += (args.empty() ? "" : ", ") + ("\"" + name + "\": ") + value;
    }
    uint64_t const scratch = *static_cast<CUdeviceptr*>(params[img->numParams]);
    uint64_t const profile = *static_cast<CUdeviceptr*>(params[img->numParams + 1]);
    op("{\"op\": \"launch\", \"spec\": \"" + std::string(img->spec) + "\", \"tactic\": " + std::to_string(img->tactic)
        + ", \"cc\": " + std::to_string(img->cc) + ", \"grid\": [" + std::to_string(gx) + ", " + std::to_string(gy) + ", "
        + std::to_string(gz) + "], \"threads\": " + std::to_string(bx) + ", \"hidden\": [" + std::to_string(scratch) + ", "
        + std::to_string(profile) + "], \"args\": {" + args + "}}");
    return CUDA_SUCCESS;
}
CUresult memsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, CUstream)
{
    Uncounted guard;
    ++gMemsets;
    op("{\"op\": \"memset\", \"dst\": " + addr(dst) + ", \"value\": " + std::to_string(v) + ", \"bytes\": "
        + std::to_string(n) + "}");
    return CUDA_SUCCESS;
}
CUresult memsetD2D8Async(CUdeviceptr dst, size_t pitch, unsigned char v, size_t w, size_t h, CUstream)
{
    Uncounted guard;
    ++gMemsets;
    op("{\"op\": \"memset2d\", \"dst\": " + addr(dst) + ", \"pitch\": " + std::to_string(pitch) + ", \"value\": "
        + std::to_string(v) + ", \"width\": " + std::to_string(w) + ", \"height\": " + std::to_string(h) + "}");
    return CUDA_SUCCESS;
}
CUresult memAlloc(CUdeviceptr* p, size_t n)
{
    Uncounted guard;
    *p = kArena + gDeviceNext;
    op("{\"op\": \"alloc\", \"dst\": " + std::to_string(gDeviceNext) + ", \"bytes\": " + std::to_string(n) + "}");
    gDeviceNext += (n + 255) / 256 * 256;
    gDeviceBytes += (n + 255) / 256 * 256;
    return CUDA_SUCCESS;
}
CUresult memFree(CUdeviceptr)
{
    return CUDA_SUCCESS;
}
CUresult streamSynchronize(CUstream)
{
    Uncounted guard;
    ++gSyncs;
    op("{\"op\": \"sync\"}");
    return CUDA_SUCCESS;
}
CUresult streamIsCapturing(CUstream, CUstreamCaptureStatus* s)
{
    *s = gCapturing ? CU_STREAM_CAPTURE_STATUS_ACTIVE : CU_STREAM_CAPTURE_STATUS_NONE;
    return CUDA_SUCCESS;
}
CUresult ctxPushCurrent(CUcontext)
{
    return CUDA_SUCCESS;
}
CUresult ctxPopCurrent(CUcontext* c)
{
    *c = reinterpret_cast<CUcontext>(0x1);
    return CUDA_SUCCESS;
}
sai::kernels::DriverApi const kRecorder = {ctxGetCurrent, ctxGetDevice, deviceGetAttribute, moduleLoadData,
    moduleUnload, moduleGetFunction, funcGetAttribute, funcSetAttribute, launchKernel, memsetD8Async, memsetD2D8Async,
    memAlloc, memFree, streamSynchronize, streamIsCapturing, ctxPushCurrent, ctxPopCurrent};

std::map<std::string, std::string> gArgs;

std::string str(char const* k)
{
    auto it = gArgs.find(k);
    if (it == gArgs.end())
    {
        std::fprintf(stderr, "launch_recorder: missing %s=\n", k);
        std::exit(2);
    }
    return it->second;
}
int64_t num(char const* k)
{
    return std::strtoll(str(k).c_str(), nullptr, 10);
}
void* at(char const* k)
{
    int64_t const off = num(k);
    return off < 0 ? nullptr : reinterpret_cast<void*>(static_cast<uintptr_t>(kArena + static_cast<uint64_t>(off)));
}
sai::SaiDataType dtype(std::string const& s)
{
    return s == "fp32" ? sai::SaiDataType::kFLOAT : (s == "fp16" ? sai::SaiDataType::kHALF : sai::SaiDataType::kBF16);
}
sai::SaiLayout layout(std::string const& s)
{
    return s == "NCHW" ? sai::SaiLayout::kNCHW
                       : (s == "NHWC" ? sai::SaiLayout::kNHWC
                                      : (s == "NHWC8" ? sai::SaiLayout::kNHWC8 : sai::SaiLayout::kNHWC16));
}
} // namespace

//! One run's counts (launcher statistics are process-wide: the difference over the run).
struct RunCounts
{
    sai::kernels::LauncherStats before{};
    long mallocs{0}, memsets{0}, syncs{0};
    int64_t prepares{0}, packs{0};
};

std::string countsJson(RunCounts const& c, sai::kernels::LauncherStats const& after, int64_t prepares, int64_t packs)
{
    return "\"launches\": " + std::to_string(after.launches - c.before.launches) + ", \"memsets\": "
        + std::to_string(gMemsets - c.memsets) + ", \"syncs\": " + std::to_string(gSyncs - c.syncs)
        + ", \"mallocs\": " + std::to_string(gMallocs - c.mallocs)
        + ", \"device_allocs\": " + std::to_string(after.deviceAllocs - c.before.deviceAllocs)
        + ", \"image_scans\": " + std::to_string(after.imageScans - c.before.imageScans)
        + ", \"module_lookups\": " + std::to_string(after.moduleLookups - c.before.moduleLookups)
        + ", \"driver_lookups\": " + std::to_string(after.driverLookups - c.before.driverLookups)
        + ", \"prepares\": " + std::to_string(prepares - c.prepares) + ", \"packs\": " + std::to_string(packs - c.packs);
}

//! op=typed: the generated typed launches of the real builds refuse what the build cannot take.
int typedChecks()
{
    using namespace sai::kernels;
    std::string out;
    auto one = [&](char const* name, ResolvedKernel const& k, auto const& args) {
        CUresult const r = launch(k, nullptr, 1, 1, 1, args);
        std::string msg = r == CUDA_SUCCESS ? "" : lastError();
        for (char& c : msg)
            if (c == '"' || c == '\\')
                c = '\'';
        out += (out.empty() ? "" : ",\n  ") + ("\"" + std::string(name) + "\": {\"result\": ") + std::to_string(r)
            + ", \"error\": \"" + msg + "\"}";
    };
    ResolvedKernel fast, any, part;
    if (resolveKernel(findImage("sparse_conv_fp16_k3_relu", gCc), &fast) != CUDA_SUCCESS
        || resolveKernel(findImage("sparse_conv_fp16_any_relu", gCc), &any) != CUDA_SUCCESS
        || resolveKernel(findImage("mask_partition_fp16_gt0", gCc), &part) != CUDA_SUCCESS)
    {
        std::printf("{\"error\": \"images missing\"}\n");
        return 2;
    }
    SparseConvKernelArgs a;
    a.x_ptr = kArena;
    a.w_ptr = kArena + 4096;
    a.b_ptr = kArena + 8192;
    a.off_ptr = kArena;
    a.idx_ptr = kArena + 12288;
    a.cnt_ptr = kArena + 16384;
    a.y_ptr = kArena + 20480;
    a.P = 64;
    a.H = a.W = a.Ho = a.Wo = 8;
    a.CIN_G = a.COUT_G = a.CIN_DG = 16;
    a.sxn = a.syn = 1024;
    a.sxh = a.syh = 128;
    a.sxw = a.syw = 16;
    a.sxc = a.syc = 1;
    a.son = a.soc = a.soh = a.sow = 0;
    a.STRIDE_H = a.STRIDE_W = a.DIL_H = a.DIL_W = 1;
    a.PAD_T = a.PAD_L = 1;
    a.KH = a.KW = 3;
    a.DEFORM = 0;
    a.RELU = 1;
    one("valid", fast, a);
    SparseConvKernelArgs b = a;
    b.RELU = 0;
    one("relu_mismatch", fast, b);
    b = a;
    b.KH = 1;
    one("kh_mismatch", fast, b);
    one("kh_any", any, b);
    b = a;
    b.x_ptr += 2;
    one("x_misaligned", fast, b);
    one("x_misaligned_any", any, b);
    b = a;
    b.CIN_G = 24;
    one("cin_not_16", fast, b);
    b = a;
    b.P = 1LL << 40;
    one("p_overflow", fast, b);
    b = a;
    b.y_ptr = kUnsetPointer;
    one("y_unset", fast, b);
    b = a;
    b.DEFORM = kUnsetInt;
    one("deform_unset", fast, b);
    MaskPartitionKernelArgs m;
    one("other_family", fast, m);
    std::printf("{\n  %s}\n", out.c_str());
    return 0;
}

int main(int argc, char** argv)
{
    for (int i = 1; i < argc; ++i)
    {
        char const* eq = std::strchr(argv[i], '=');
        if (eq != nullptr)
            gArgs[std::string(argv[i], static_cast<size_t>(eq - argv[i]))] = eq + 1;
    }
    gCc = static_cast<int>(num("cc"));
    if (str("op") == "typed")
    {
        sai::kernels::setDriverApi(&kRecorder);
        return typedChecks();
    }
    int const runs = gArgs.count("runs") ? static_cast<int>(num("runs")) : 1;
    gCapturing = gArgs.count("capture") && num("capture") != 0;
    sai::kernels::setDriverApi(&kRecorder);
    sai::SaiDataType const t = dtype(str("type"));
    sai::SaiDataType const mt = dtype(str("mtype"));
    size_t ws = 0;
    cudaError_t err = cudaSuccess;
    std::vector<std::string> runJson;
    auto measure = [&](auto&& body, int64_t const& prepares, int64_t const& packs) {
        RunCounts c;
        c.before = sai::kernels::launcherStats();
        c.mallocs = gMallocs;
        c.memsets = gMemsets;
        c.syncs = gSyncs;
        c.prepares = prepares;
        c.packs = packs;
        gCounting = true;
        err = body();
        gCounting = false;
        return c;
    };
#ifdef SAI_RECORD_BLOCK
    if (str("op") == "block")
    {
        sai::SaiBlockParams p;
        p.N = static_cast<int32_t>(num("N"));
        p.C = static_cast<int32_t>(num("C"));
        p.H = static_cast<int32_t>(num("H"));
        p.W = static_cast<int32_t>(num("W"));
        p.Cm = static_cast<int32_t>(num("Cm"));
        p.ka = static_cast<int32_t>(num("ka"));
        p.Cb = static_cast<int32_t>(num("Cb"));
        p.Cout = static_cast<int32_t>(num("Cout"));
        p.hasConv3 = num("wc") >= 0;
        p.hasDown = num("wd") >= 0;
        p.deform = num("wo") >= 0;
        p.stochastic = num("u1") >= 0;
        p.reluB = num("reluB") != 0;
        p.strideA = static_cast<int32_t>(num("sa"));
        p.strideB = static_cast<int32_t>(num("sb"));
        p.downStride = p.strideA * p.strideB;
        p.offsetStride = p.downStride;
        p.maskStride1 = p.strideA;
        p.maskStride2 = p.downStride;
        p.gridInterval = static_cast<int32_t>(num("grid"));
        p.sigma1 = std::strtof(str("sigma1").c_str(), nullptr);
        p.sigma2 = std::strtof(str("sigma2").c_str(), nullptr);
        p.eps = std::strtof(str("eps").c_str(), nullptr);
        p.temperature = std::strtof(str("temp").c_str(), nullptr);
        if (char const* why = sai::saiBlockFinalize(p))
        {
            std::printf("{\"error\": \"%s\"}\n", why);
            return 2;
        }
        sai::SaiBlockBuffers b;
        b.x = at("x");
        b.maskWeight = at("mw");
        b.maskBias = at("mb");
        b.wa = at("wa");
        b.ba = at("ba");
        b.wb = at("wb");
        b.bb = at("bb");
        b.wc = at("wc");
        b.tailBias = at("tb");
        b.wd = at("wd");
        b.bd = at("bd");
        b.wo = at("wo");
        b.bo = at("bo");
        b.noise1 = at("u1");
        b.noise2 = at("u2");
        b.y = at("y");
        b.xLayout = sai::saiTensorLayout(layout(str("xl")), t, p.C, p.H, p.W);
        b.yLayout = sai::saiTensorLayout(layout(str("xl")), t, p.Cout, p.H2, p.W2);
        ws = sai::sparseBlockWorkspaceSize(p, t);
        gDeviceNext = static_cast<uint64_t>(num("ws") < 0 ? 0 : num("ws")) + (ws + 255) / 256 * 256;
        sai::SparseBlockRunner runner;
        for (int i = 0; i < runs && err == cudaSuccess; ++i)
        {
            size_t const opsBefore = gOps.size();
            int64_t prepares = runner.prepares(), packs = runner.packs();
            RunCounts c = measure([&] { return runner.run(p, t, b, at("ws"), ws, nullptr); }, prepares, packs);
            std::string ops = gOps.substr(opsBefore);
            if (ops.rfind(",\n  ", 0) == 0)
                ops = ops.substr(4);
            runJson.push_back("{" + countsJson(c, sai::kernels::launcherStats(), runner.prepares(), runner.packs())
                + ", \"ops\": [\n  " + ops + "]}");
        }
    }
    else
#endif
    if (str("op") == "conv")
    {
        sai::SaiConvParams p;
        p.N = static_cast<int32_t>(num("N"));
        p.C = static_cast<int32_t>(num("C"));
        p.H = static_cast<int32_t>(num("H"));
        p.W = static_cast<int32_t>(num("W"));
        p.Cout = static_cast<int32_t>(num("Cout"));
        p.kh = static_cast<int32_t>(num("kh"));
        p.kw = static_cast<int32_t>(num("kw"));
        p.strideH = static_cast<int32_t>(num("sh"));
        p.strideW = static_cast<int32_t>(num("sw"));
        p.padTop = static_cast<int32_t>(num("pt"));
        p.padLeft = static_cast<int32_t>(num("pl"));
        p.padBottom = static_cast<int32_t>(num("pb"));
        p.padRight = static_cast<int32_t>(num("pr"));
        p.dilationH = static_cast<int32_t>(num("dh"));
        p.dilationW = static_cast<int32_t>(num("dw"));
        p.groups = static_cast<int32_t>(num("groups"));
        p.deformGroups = static_cast<int32_t>(num("dg"));
        p.activation = static_cast<int32_t>(num("act"));
        if (!sai::saiConvFinalize(p))
        {
            std::printf("{\"error\": \"invalid params\"}\n");
            return 2;
        }
        sai::SaiConvBuffers b;
        b.x = at("x");
        b.mask = at("mask");
        b.weight = at("weight");
        b.bias = at("bias");
        b.offset = at("offset");
        b.y = at("y");
        b.xLayout = sai::saiTensorLayout(layout(str("xl")), t, p.C, p.H, p.W);
        b.yLayout = sai::saiTensorLayout(layout(str("xl")), t, p.Cout, p.Ho, p.Wo);
        b.maskLayout = sai::saiTensorLayout(layout(str("ml")), mt, 1, p.Ho, p.Wo);
        b.offsetLayout = sai::saiTensorLayout(layout(str("xl")), t, 2 * p.deformGroups * p.kh * p.kw, p.Ho, p.Wo);
        b.tactic = static_cast<int32_t>(num("tactic"));
        ws = sai::sparseSampleConvWorkspaceSize(p, t);
        if (gArgs.count("N2") && num("N2") > p.N)
        {
            sai::SaiConvParams big = p; // the workspace of the profile's largest batch
            big.N = static_cast<int32_t>(num("N2"));
            sai::saiConvFinalize(big);
            ws = sai::sparseSampleConvWorkspaceSize(big, t);
        }
        gDeviceNext = static_cast<uint64_t>(num("ws") < 0 ? 0 : num("ws")) + (ws + 255) / 256 * 256;
        bool const share = gArgs.count("share") && num("share") != 0;
        sai::SparseSampleConvRunner runner(gArgs.count("every") && num("every") != 0, share);
        for (int i = 0; i < runs && err == cudaSuccess; ++i)
        {
            size_t const opsBefore = gOps.size();
            int64_t prepares = runner.prepares(), packs = runner.packs();
            if (i == 1 && gArgs.count("weight2"))
                b.weight = at("weight2"); // the second enqueue reads W from another address: packed again
            if (i == 1 && gArgs.count("N2"))
            {
                p.N = static_cast<int32_t>(num("N2")); // the second enqueue has another batch (dynamic shapes)
                sai::saiConvFinalize(p);
            }
            RunCounts c = measure([&] { return runner.run(p, t, b, at("ws"), ws, nullptr); }, prepares, packs);
            std::string ops = gOps.substr(opsBefore);
            if (ops.rfind(",\n  ", 0) == 0)
                ops = ops.substr(4);
            runJson.push_back("{" + countsJson(c, sai::kernels::launcherStats(), runner.prepares(), runner.packs())
                + ", \"ops\": [\n  " + ops + "]}");
        }
        // clones=K: K more runners (other execution contexts' instances of the node) run once each
        for (int i = 0; gArgs.count("clones") && i < num("clones") && err == cudaSuccess; ++i)
        {
            sai::SparseSampleConvRunner other(false, share);
            size_t const opsBefore = gOps.size();
            RunCounts c = measure([&] { return other.run(p, t, b, at("ws"), ws, nullptr); }, 0, 0);
            std::string ops = gOps.substr(opsBefore);
            if (ops.rfind(",\n  ", 0) == 0)
                ops = ops.substr(4);
            runJson.push_back("{\"clone\": true, " + countsJson(c, sai::kernels::launcherStats(), other.prepares(),
                other.packs()) + ", \"ops\": [\n  " + ops + "]}");
        }
    }
    else
    {
        sai::SaiInterpParams p;
        p.N = static_cast<int32_t>(num("N"));
        p.C = static_cast<int32_t>(num("C"));
        p.H = static_cast<int32_t>(num("H"));
        p.W = static_cast<int32_t>(num("W"));
        p.kernelSize = static_cast<int32_t>(num("k"));
        p.sigma = std::strtof(str("sigma").c_str(), nullptr);
        p.eps = std::strtof(str("eps").c_str(), nullptr);
        sai::SaiInterpLayouts l;
        l.feature = sai::saiTensorLayout(layout(str("xl")), t, p.C, p.H, p.W);
        l.out = l.feature;
        l.mask = sai::saiTensorLayout(layout(str("ml")), mt, 1, p.H, p.W);
        ws = sai::interpolateWorkspaceSize(p, t);
        if (gArgs.count("N2") && num("N2") > p.N)
        {
            sai::SaiInterpParams big = p; // the workspace of the profile's largest batch
            big.N = static_cast<int32_t>(num("N2"));
            ws = sai::interpolateWorkspaceSize(big, t);
        }
        int32_t const tactic = static_cast<int32_t>(num("tactic"));
        sai::InterpolateRunner runner;
        int64_t const noPacks = 0;
        for (int i = 0; i < runs && err == cudaSuccess; ++i)
        {
            size_t const opsBefore = gOps.size();
            int64_t prepares = runner.prepares();
            if (i == 1 && gArgs.count("N2"))
                p.N = static_cast<int32_t>(num("N2")); // the second enqueue has another batch (dynamic shapes)
            RunCounts c = measure(
                [&] { return runner.run(p, t, l, tactic, at("x"), at("mask"), at("y"), at("ws"), ws, nullptr); },
                prepares, noPacks);
            std::string ops = gOps.substr(opsBefore);
            if (ops.rfind(",\n  ", 0) == 0)
                ops = ops.substr(4);
            runJson.push_back("{" + countsJson(c, sai::kernels::launcherStats(), runner.prepares(), noPacks)
                + ", \"ops\": [\n  " + ops + "]}");
        }
    }
    std::string msg = sai::saiLastLaunchError();
    for (char& c : msg)
        if (c == '"' || c == '\\')
            c = '\'';
    std::string all;
    for (std::string const& r : runJson)
        all += (all.empty() ? "" : ",\n ") + r;
    std::printf("{\"workspace\": %zu, \"device_bytes\": %llu, \"result\": %d, \"error\": \"%s\", \"ops\": [\n  %s],\n"
                " \"runs\": [%s]}\n",
        ws, static_cast<unsigned long long>(gDeviceBytes), static_cast<int>(err), msg.c_str(), gOps.c_str(),
        all.c_str());
    return 0;
}
