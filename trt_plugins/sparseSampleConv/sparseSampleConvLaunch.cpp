/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * sai::SparseSampleConv on the AOT-compiled Triton kernels (kernels/sparse_sample_conv.py, built by
 * `make kernels` for sm_75..sm_120 and embedded in the library); see sparseSampleConvKernel.h for
 * the pipeline. Host code only: every step is a stream-ordered memset or kernel launch.
 */
#include "sparseSampleConvKernel.h"

#include "saiTritonLaunch.h"

#include <array>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

namespace sai
{
namespace
{
struct ConvWorkspace
{
    void* idx;    //!< int32 [P]: the partition of the output positions, active first
    void* count;  //!< int32 [2]: active, inactive
    void* weight; //!< [g, tap, Cin/g, Cout/g], the type of X (packEveryLaunch, a first run in a capture)
    void* bias;   //!< [Cout] zeros, the type of X (the builds always read a bias), as `weight`
    size_t total;
};

ConvWorkspace convWorkspace(SaiConvParams const& p, SaiDataType type, void* base)
{
    SaiWorkspace ws(base);
    size_t const es = saiDataTypeSize(type);
    int64_t const positions = static_cast<int64_t>(p.N) * p.Ho * p.Wo;
    ConvWorkspace w{};
    w.idx = ws.take(static_cast<size_t>(positions > 0 ? positions : 1) * 4);
    w.count = ws.take(2 * 4);
    w.weight = ws.take(static_cast<size_t>(p.Cout) * p.cinPerGroup * p.kh * p.kw * es);
    w.bias = ws.take(static_cast<size_t>(p.Cout) * es);
    w.total = ws.used();
    return w;
}

//! Whether this call fits the "fast" builds (the layouts, sizes and buffer addresses allow it).
bool convFast(SaiConvParams const& p, SaiDataType type, SaiConvBuffers const& b)
{
    bool const deform = b.offset != nullptr;
    bool const square = p.kh == p.kw && (p.kh == 3 || (p.kh == 1 && !deform));
    return type != SaiDataType::kFLOAT && square && p.cinPerGroup % 16 == 0 && p.coutPerGroup % 16 == 0
        && saiAligned16(b.xLayout, p.C) && saiAligned16(b.yLayout, p.Cout) && saiAligned16(b.x) && saiAligned16(b.y)
        && (!deform || b.offsetLayout.strides.c == 1);
}

//! The name of the build that runs this configuration.
std::string convSpec(SaiConvParams const& p, SaiDataType type, bool deform, bool fast)
{
    std::string spec = std::string("sparse_conv_") + saiTypeTag(type);
    spec += fast ? "_k" + std::to_string(p.kh) : std::string("_any");
    spec += deform ? "_deform" : "";
    spec += p.activation == kSAI_ACT_RELU ? "_relu" : "";
    return spec;
}

//! Everything that decides the builds and their arguments (but the buffers' addresses).
constexpr size_t kKeyLen = 48;
using ConvKey = std::array<int64_t, kKeyLen>;

void putLayout(int64_t*& k, SaiTensorLayout const& l)
{
    *k++ = static_cast<int64_t>(l.layout);
    *k++ = static_cast<int64_t>(l.type);
    *k++ = l.strides.n;
    *k++ = l.strides.c;
    *k++ = l.strides.h;
    *k++ = l.strides.w;
}

ConvKey convKey(SaiConvParams const& p, SaiDataType type, SaiConvBuffers const& b, bool fast)
{
    ConvKey key{};
    int64_t* k = key.data();
    for (int64_t v : {p.N, p.C, p.H, p.W, p.Cout, p.kh, p.kw, p.strideH, p.strideW, p.padTop, p.padLeft, p.padBottom,
             p.padRight, p.dilationH, p.dilationW, p.groups, p.deformGroups, p.activation, p.Ho, p.Wo})
    {
        *k++ = v;
    }
    *k++ = static_cast<int64_t>(type);
    *k++ = b.tactic;
    *k++ = b.offset != nullptr ? 1 : 0;
    *k++ = fast ? 1 : 0;
    putLayout(k, b.xLayout);
    putLayout(k, b.maskLayout);
    putLayout(k, b.offset != nullptr ? b.offsetLayout : SaiTensorLayout{});
    putLayout(k, b.yLayout);
    return key;
}

//! What decides the builds (spec names, tactic): resolved again only when it changes.
using BuildKey = std::array<int64_t, 7>;

BuildKey buildKey(SaiConvParams const& p, SaiDataType type, SaiConvBuffers const& b, bool fast)
{
    return {static_cast<int64_t>(type), static_cast<int64_t>(b.maskLayout.type), fast ? 1 : 0,
        b.offset != nullptr ? 1 : 0, p.activation, p.kh, b.tactic};
}

//! What the packed weights depend on, and the W they were packed from.
using WeightKey = std::array<int64_t, 8>;

WeightKey weightKey(SaiConvParams const& p, SaiDataType type, void const* weight, bool zeroBias)
{
    return {p.Cout, p.cinPerGroup, p.kh, p.kw, p.groups, static_cast<int64_t>(type),
        static_cast<int64_t>(reinterpret_cast<uintptr_t>(weight)), zeroBias ? 1 : 0};
}

//! Packed weights (and zero bias) in device memory, shared by the sharing runners of one W in one
//! context: the execution contexts of an engine share its constants, so their plugin instances
//! (attachToContext) share one copy, packed by the first and freed with the last. Only those: a W
//! address is an identity only while the engine that owns it lives, which its execution contexts'
//! instances never outlive (a build-phase instance might, and a later engine could reuse the address).
struct PackedWeights
{
    kernels::DeviceBuffer buffer;
};
using PackedKey = std::pair<CUcontext, WeightKey>;
std::mutex gPackedMutex;

std::map<PackedKey, std::weak_ptr<PackedWeights>>& packedRegistry()
{
    static auto* registry = new std::map<PackedKey, std::weak_ptr<PackedWeights>>(); // never destroyed
    return *registry;
}

} // namespace

struct SparseSampleConvRunner::State
{
    bool packEveryLaunch{false};
    bool shareWeights{false};
    SaiLaunchContext lc;
    bool resolved{false};
    BuildKey builds{};
    bool prepared{false};
    ConvKey key{};
    int64_t prepares{0};
    int64_t packs{0};
    SaiPartitionPlan partition;
    kernels::ResolvedKernel conv;
    kernels::SparseConvKernelArgs convArgs;
    unsigned convGridX{0};
    unsigned convGridY{0};
    kernels::ResolvedKernel pack;
    kernels::Copy4dKernelArgs packArgs;
    unsigned packGrid{0};
    std::shared_ptr<PackedWeights> packed; //!< packed W, then Cout zeros (the bias of a node without one)
    PackedKey packedKey{};
};

namespace
{
//! Chooses the builds of one configuration and resolves them in the current context (string
//! work, image scan, module cache): once per build key and context.
cudaError_t resolveBuilds(SparseSampleConvRunner::State& s, SaiConvParams const& p, SaiDataType type,
    SaiConvBuffers const& b, bool fast, BuildKey const& builds)
{
    s.resolved = false;
    s.prepared = false;
    ++s.prepares;
    cudaError_t err = saiPartitionResolve(b.maskLayout.type, "gt0", &s.partition);
    if (err != cudaSuccess)
    {
        return err;
    }
    if ((err = saiResolve(convSpec(p, type, b.offset != nullptr, fast), b.tactic, &s.conv)) != cudaSuccess)
    {
        return err;
    }
    // W [Cout, Cin/g, kh, kw] viewed as [g, Cout/g, Cin/g, tap] -> [g, tap, Cin/g, Cout/g]
    if ((err = saiResolve(saiDataTypeSize(type) == 2 ? "copy4d_b16" : "copy4d_b32", 1, &s.pack)) != cudaSuccess)
    {
        return err;
    }
    s.builds = builds;
    s.resolved = true;
    return cudaSuccess;
}

//! The arguments (but the buffers) and grids of one configuration: integers only.
void setArgs(SparseSampleConvRunner::State& s, SaiConvParams const& p, SaiConvBuffers const& b, ConvKey const& key)
{
    int64_t const positions = static_cast<int64_t>(p.N) * p.Ho * p.Wo;
    saiPartitionArgs(b.maskLayout, positions, p.Ho, p.Wo, false, &s.partition);
    bool const deform = b.offset != nullptr;
    SaiStrides const xs = b.xLayout.strides, ys = b.yLayout.strides;
    SaiStrides const os = deform ? b.offsetLayout.strides : SaiStrides{};
    kernels::SparseConvKernelArgs& a = s.convArgs;
    a = kernels::SparseConvKernelArgs{};
    a.P = positions;
    a.H = p.H;
    a.W = p.W;
    a.Ho = p.Ho;
    a.Wo = p.Wo;
    a.CIN_G = p.cinPerGroup;
    a.COUT_G = p.coutPerGroup;
    a.CIN_DG = p.C / (p.deformGroups > 0 ? p.deformGroups : 1);
    a.sxn = xs.n;
    a.sxc = xs.c;
    a.sxh = xs.h;
    a.sxw = xs.w;
    a.son = os.n;
    a.soc = os.c;
    a.soh = os.h;
    a.sow = os.w;
    a.syn = ys.n;
    a.syc = ys.c;
    a.syh = ys.h;
    a.syw = ys.w;
    a.STRIDE_H = p.strideH;
    a.STRIDE_W = p.strideW;
    a.PAD_T = p.padTop;
    a.PAD_L = p.padLeft;
    a.DIL_H = p.dilationH;
    a.DIL_W = p.dilationW;
    a.KH = p.kh;
    a.KW = p.kw;
    a.DEFORM = deform ? 1 : 0; // checked against the build (HAS_BIAS and UPCAST_DOT are the same in all)
    a.RELU = p.activation == kSAI_ACT_RELU ? 1 : 0;
    s.convGridX = saiGridDim(positions, s.conv.image->tileRows);
    s.convGridY = static_cast<unsigned>(p.groups) * saiGridDim(p.coutPerGroup, s.conv.image->tileCols);
    int64_t const g = p.groups, cog = p.coutPerGroup, cig = p.cinPerGroup, taps = p.kh * p.kw;
    kernels::Copy4dKernelArgs& c = s.packArgs;
    c = kernels::Copy4dKernelArgs{};
    c.TOTAL = g * cog * cig * taps;
    c.D1 = cog;
    c.D2 = cig;
    c.D3 = taps;
    c.ss0 = cog * cig * taps;
    c.ss1 = cig * taps;
    c.ss2 = taps;
    c.ss3 = 1;
    c.sd0 = taps * cig * cog;
    c.sd1 = 1;
    c.sd2 = cog;
    c.sd3 = cig * cog;
    s.packGrid = saiGridDim(c.TOTAL, s.pack.image->tileRows);
    s.key = key;
    s.prepared = true;
}

//! Packs W into `packed` (and zeros `zeroBias`, when not 0) on `stream`.
cudaError_t packWeights(SparseSampleConvRunner::State& s, void const* weight, CUdeviceptr packed, CUdeviceptr zeroBias,
    size_t biasBytes, CUstream stream)
{
    ++s.packs;
    s.packArgs.src_ptr = saiDevPtr(weight);
    s.packArgs.dst_ptr = packed;
    CUresult r = kernels::launch(s.pack, stream, s.packGrid, 1, 1, s.packArgs);
    if (r != CUDA_SUCCESS)
    {
        return saiLaunchError(r, std::string(s.pack.image->spec) + ": " + kernels::lastError());
    }
    if (zeroBias != 0 && (r = s.lc.api->memsetD8Async(zeroBias, 0, biasBytes, stream)) != CUDA_SUCCESS)
    {
        return saiLaunchError(r, "zeroing the bias");
    }
    return cudaSuccess;
}

size_t roundUp256(size_t n)
{
    return (n + 255) / 256 * 256;
}

//! The packed weights of `key` (W at its address in the current context): the ones another runner
//! made, else allocated, packed on `stream` and waited for here. Under the registry's lock: runners
//! of one W never pack it twice, nor read it half packed.
cudaError_t acquirePacked(SparseSampleConvRunner::State& s, PackedKey const& key, void const* weight, size_t wBytes,
    size_t biasBytes, bool zeroBias, CUstream stream, std::shared_ptr<PackedWeights>* out)
{
    std::lock_guard<std::mutex> lock(gPackedMutex);
    auto& registry = packedRegistry();
    auto it = s.shareWeights ? registry.find(key) : registry.end();
    if (it != registry.end())
    {
        if ((*out = it->second.lock()) != nullptr)
        {
            return cudaSuccess;
        }
    }
    kernels::DeviceBuffer buffer;
    CUresult r = kernels::allocDevice(wBytes + biasBytes, &buffer);
    if (r != CUDA_SUCCESS)
    {
        return saiLaunchError(r, "allocating the packed weights");
    }
    CUdeviceptr const zb = zeroBias ? buffer.pointer + wBytes : 0;
    cudaError_t err = packWeights(s, weight, buffer.pointer, zb, biasBytes, stream);
    // later runs may come on other streams: the packing is complete before any of them reads it
    if (err == cudaSuccess && (r = s.lc.api->streamSynchronize(stream)) != CUDA_SUCCESS)
    {
        err = saiLaunchError(r, "waiting for the weight packing");
    }
    if (err != cudaSuccess)
    {
        kernels::freeDevice(&buffer);
        return err;
    }
    // the deleter takes the lock: the last reference is never dropped while it is held
    std::shared_ptr<PackedWeights> packed(new PackedWeights{buffer}, [key](PackedWeights* pw) {
        kernels::freeDevice(&pw->buffer);
        delete pw;
        std::lock_guard<std::mutex> guard(gPackedMutex);
        auto& reg = packedRegistry();
        auto found = reg.find(key);
        if (found != reg.end() && found->second.expired())
        {
            reg.erase(found);
        }
    });
    if (s.shareWeights)
    {
        registry[key] = packed;
    }
    *out = std::move(packed);
    return cudaSuccess;
}

} // namespace

SparseSampleConvRunner::SparseSampleConvRunner(bool packEveryLaunch, bool shareWeights)
    : mState(new State)
{
    mState->packEveryLaunch = packEveryLaunch;
    mState->shareWeights = shareWeights;
}

SparseSampleConvRunner::~SparseSampleConvRunner()
{
    delete mState; // the last runner of a W frees its packed copy
}

int64_t SparseSampleConvRunner::prepares() const noexcept
{
    return mState->prepares;
}

int64_t SparseSampleConvRunner::packs() const noexcept
{
    return mState->packs;
}

SaiKernelCaps const& sparseSampleConvKernelCaps()
{
    // the Triton builds: channel-last layouts (fast where aligned) and NCHW, a mask in FP32 beside
    // FP16/BF16 activations, two tile configs as tactics (aot.py TACTICS: 1 tuned, 2 64x64x32)
    static int32_t const kIds[] = {1, 2};
    static char const* const kNames[] = {"triton-tuned", "triton-tile64x64x32"};
    static SaiKernelCaps const caps = saiTritonCaps(2, kIds, kNames);
    return caps;
}

size_t sparseSampleConvWorkspaceSize(SaiConvParams const& p, SaiDataType type)
{
    return convWorkspace(p, type, nullptr).total;
}

cudaError_t SparseSampleConvRunner::run(SaiConvParams const& p, SaiDataType type, SaiConvBuffers const& b,
    void* workspace, size_t workspaceSize, cudaStream_t cudaStream) noexcept
{
    try
    {
        saiClearLaunchError();
        SaiKernelCaps const& caps = sparseSampleConvKernelCaps();
        for (SaiTensorLayout const* l : {&b.xLayout, &b.yLayout})
        {
            if (l->type != type || !saiCapsLayout(caps, type, l->layout))
            {
                return saiLaunchError(CUDA_ERROR_NOT_SUPPORTED, "X/Y layout or type not supported");
            }
        }
        if (b.maskLayout.type != type && !(caps.fp32Mask && b.maskLayout.type == SaiDataType::kFLOAT))
        {
            return saiLaunchError(CUDA_ERROR_NOT_SUPPORTED, "mask type not supported");
        }
        if (b.offset != nullptr && b.offsetLayout.type != type)
        {
            return saiLaunchError(CUDA_ERROR_NOT_SUPPORTED, "offset type differs from X");
        }
        if (b.tactic != 0 && !saiCapsTactic(caps, b.tactic))
        {
            return saiLaunchError(CUDA_ERROR_INVALID_VALUE, "unknown tactic " + std::to_string(b.tactic));
        }
        ConvWorkspace const ws = convWorkspace(p, type, workspace);
        if (workspace == nullptr || workspaceSize < ws.total)
        {
            return saiLaunchError(CUDA_ERROR_INVALID_VALUE,
                "workspace of " + std::to_string(workspaceSize) + " bytes, " + std::to_string(ws.total) + " needed");
        }
        int64_t const positions = static_cast<int64_t>(p.N) * p.Ho * p.Wo;
        if (positions == 0)
        {
            return cudaSuccess;
        }
        State& s = *mState;
        auto const stream = reinterpret_cast<CUstream>(cudaStream);
        bool changed = false;
        cudaError_t err = saiCurrentContext(s.lc, &changed);
        if (err != cudaSuccess)
        {
            return err;
        }
        bool const fast = convFast(p, type, b);
        BuildKey const builds = buildKey(p, type, b, fast);
        if (changed || !s.resolved || builds != s.builds)
        {
            if ((err = resolveBuilds(s, p, type, b, fast, builds)) != cudaSuccess)
            {
                return err;
            }
        }
        ConvKey const key = convKey(p, type, b, fast);
        if (!s.prepared || key != s.key)
        {
            setArgs(s, p, b, key);
        }

        // 1. the weights in the kernel's order, a zero bias where the node has none: once per W
        //    address and context, or into the workspace (packEveryLaunch, a first run in a capture)
        size_t const es = saiDataTypeSize(type);
        size_t const wBytes = roundUp256(static_cast<size_t>(p.Cout) * p.cinPerGroup * p.kh * p.kw * es);
        size_t const biasBytes = static_cast<size_t>(p.Cout) * es;
        bool const zeroBias = b.bias == nullptr;
        PackedKey const pkey{s.lc.ctx, weightKey(p, type, b.weight, zeroBias)};
        bool inWorkspace = s.packEveryLaunch;
        if (!inWorkspace && !(s.packed != nullptr && pkey == s.packedKey))
        {
            CUstreamCaptureStatus capture = CU_STREAM_CAPTURE_STATUS_NONE;
            CUresult r = s.lc.api->streamIsCapturing(stream, &capture);
            if (r != CUDA_SUCCESS)
            {
                return saiLaunchError(r, "querying the stream's capture status");
            }
            if (capture != CU_STREAM_CAPTURE_STATUS_NONE)
            {
                inWorkspace = true; // no allocation or wait inside a capture: this run packs as it goes
            }
            else
            {
                std::shared_ptr<PackedWeights> packed;
                s.packed.reset(); // released outside the registry's lock (its deleter takes it)
                err = acquirePacked(s, pkey, b.weight, wBytes, biasBytes, zeroBias, stream, &packed);
                if (err != cudaSuccess)
                {
                    return err;
                }
                s.packed = std::move(packed);
                s.packedKey = pkey;
            }
        }
        CUdeviceptr weights = s.packed != nullptr ? s.packed->buffer.pointer : 0;
        CUdeviceptr bias = zeroBias ? weights + wBytes : saiDevPtr(b.bias);
        if (inWorkspace)
        {
            CUdeviceptr const zb = zeroBias ? saiDevPtr(ws.bias) : 0;
            if ((err = packWeights(s, b.weight, saiDevPtr(ws.weight), zb, biasBytes, stream)) != cudaSuccess)
            {
                return err;
            }
            weights = saiDevPtr(ws.weight);
            bias = zeroBias ? zb : bias;
        }

        // 2. the partition of the output positions: mask > 0 first, the count on the device
        if ((err = saiPartitionRun(s.lc.api, s.partition, b.mask, ws.idx, ws.count, stream)) != cudaSuccess)
        {
            return err;
        }

        // 3. the implicit GEMM over the active positions; every output position written once
        kernels::SparseConvKernelArgs& a = s.convArgs;
        a.x_ptr = saiDevPtr(b.x);
        a.w_ptr = weights;
        a.b_ptr = bias;
        a.off_ptr = saiDevPtr(b.offset != nullptr ? b.offset : b.x);
        a.idx_ptr = saiDevPtr(ws.idx);
        a.cnt_ptr = saiDevPtr(ws.count);
        a.y_ptr = saiDevPtr(b.y);
        CUresult const r = kernels::launch(s.conv, stream, s.convGridX, s.convGridY, 1, a);
        if (r != CUDA_SUCCESS)
        {
            return saiLaunchError(r, std::string(s.conv.image->spec) + ": " + kernels::lastError());
        }

        // 4. zeros in the padding channels of a vectorised output
        return saiZeroPadChannels(s.lc.api, b.yLayout, b.y, p.Cout, positions, stream);
    }
    catch (std::exception const& e)
    {
        return saiLaunchError(CUDA_ERROR_UNKNOWN, std::string("SparseSampleConv launch: ") + e.what());
    }
}

} // namespace sai
