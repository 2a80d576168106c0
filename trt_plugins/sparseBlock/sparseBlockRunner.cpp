/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * SparseBlockRunner::run (sparseBlockKernel.h): the launch sequence of sai.kernels.sparse_block.sparse_block
 * on the typed launchers of the block_* and sparse_conv_* images (resolved once per configuration and
 * context), the weights packed once per W addresses and context.
 */
#include "sparseBlockKernel.h"

#include "saiTritonLaunch.h"

#include <array>
#include <cuda.h>
#include <exception>
#include <string>

namespace sai
{

namespace
{
//! What decides the builds (spec names): resolved again only when it changes.
using BuildKey = std::array<int64_t, 12>;

//! The weights' addresses and shapes, the context: packed again only when it changes.
using PackKey = std::array<int64_t, 16>;

int64_t ptrKey(void const* q)
{
    return static_cast<int64_t>(reinterpret_cast<uintptr_t>(q));
}

//! One weight's place in the packed buffer and its copy4d arguments.
struct PackJob
{
    void const* src{nullptr};
    size_t offset{0};
    kernels::Copy4dKernelArgs args;
    bool b32{false};
};
} // namespace

struct SparseBlockRunner::State
{
    SaiLaunchContext lc;
    bool resolved{false};
    BuildKey builds{};
    int64_t prepares{0};
    int64_t packs{0};
    bool fast1{false}, fast2{false}, fast3{false};
    kernels::ResolvedKernel masks, conv1, interp, convOff, conv2, conv3, tail, copy16, copy32;
    kernels::DeviceBuffer packed{};
    PackKey packKey{};
    bool havePacked{false};
    // offsets into `packed` (the counters first)
    size_t oMaskW{0}, oWa{0}, oWb{0}, oWc{0}, oWd{0}, oWo{0}, oZero{0};
};

SparseBlockRunner::SparseBlockRunner()
    : mState(new State)
{
}

SparseBlockRunner::~SparseBlockRunner()
{
    if (mState->havePacked)
    {
        kernels::freeDevice(&mState->packed);
    }
    delete mState;
}

int64_t SparseBlockRunner::prepares() const noexcept
{
    return mState->prepares;
}

int64_t SparseBlockRunner::packs() const noexcept
{
    return mState->packs;
}

namespace
{
std::string convSpecName(SaiDataType t, int32_t k, bool fast, bool deform, bool relu)
{
    std::string s = std::string("sparse_conv_") + saiTypeTag(t);
    s += fast ? "_k" + std::to_string(k) : std::string("_any");
    s += deform ? "_deform" : "";
    s += relu ? "_relu" : "";
    return s;
}

cudaError_t resolveBuilds(SparseBlockRunner::State& s, SaiBlockParams const& p, SaiDataType t, BuildKey const& key)
{
    s.resolved = false;
    ++s.prepares;
    std::string const tag = saiTypeTag(t);
    cudaError_t err = cudaSuccess;
    auto even = [](int64_t c, int64_t bc) { return c % bc == 0 ? std::string("_even") : std::string("_c16"); };
    if ((err = saiResolve("block_masks_" + tag + (p.stochastic ? "_stoch" : "_det"), 1, &s.masks)) != cudaSuccess
        || (err = saiResolve(convSpecName(t, p.ka, s.fast1, false, true), 1, &s.conv1)) != cudaSuccess
        || (err = saiResolve("block_interp_" + tag + even(p.Cm, saiBlockInterpBc(t)), 1, &s.interp)) != cudaSuccess
        || (err = saiResolve(convSpecName(t, 3, s.fast2, p.deform, p.reluB), 1, &s.conv2)) != cudaSuccess
        || (err = saiResolve(std::string(p.hasDown ? "block_tail_down_" : "block_tail_") + tag
                    + even(p.Cout, kSAI_BLOCK_BC_SMALL),
                1, &s.tail))
            != cudaSuccess
        || (err = saiResolve("copy4d_b16", 1, &s.copy16)) != cudaSuccess
        || (err = saiResolve("copy4d_b32", 1, &s.copy32)) != cudaSuccess)
    {
        return err;
    }
    // the offsets have 18 channels: never the fast builds' 16-divisible output
    if (p.deform && (err = saiResolve(convSpecName(t, 3, false, false, false), 1, &s.convOff)) != cudaSuccess)
    {
        return err;
    }
    if (p.hasConv3 && (err = saiResolve(convSpecName(t, 1, s.fast3, false, false), 1, &s.conv3)) != cudaSuccess)
    {
        return err;
    }
    s.builds = key;
    s.resolved = true;
    return cudaSuccess;
}

//! copy4d arguments: W [Cout, Cin, kh, kw] -> [kh*kw, Cin, Cout] (the conv kernel's B operand).
kernels::Copy4dKernelArgs convPack(int64_t cout, int64_t cin, int64_t taps)
{
    kernels::Copy4dKernelArgs c{};
    c.TOTAL = cout * cin * taps;
    c.D1 = cout;
    c.D2 = cin;
    c.D3 = taps;
    c.ss0 = cout * cin * taps;
    c.ss1 = cin * taps;
    c.ss2 = taps;
    c.ss3 = 1;
    c.sd0 = taps * cin * cout;
    c.sd1 = 1;
    c.sd2 = cout;
    c.sd3 = cin * cout;
    return c;
}

size_t up256(size_t n)
{
    return (n + 255) / 256 * 256;
}

//! Allocates the runner's buffer (counters, packed weights, zero biases), packs and waits: once per
//! W addresses and context.
cudaError_t packWeights(SparseBlockRunner::State& s, SaiBlockParams const& p, SaiDataType t,
    SaiBlockBuffers const& b, CUstream stream)
{
    size_t const e = saiDataTypeSize(t);
    PackJob jobs[6];
    int n = 0;
    size_t at = 256; // int32 [8] counters first
    auto add = [&](void const* src, kernels::Copy4dKernelArgs const& a, size_t bytes, bool b32, size_t* off) {
        *off = at;
        jobs[n].src = src;
        jobs[n].offset = at;
        jobs[n].args = a;
        jobs[n].b32 = b32;
        ++n;
        at += up256(bytes);
    };
    // mask predictors [2, C, 3, 3] fp32 -> [2, 9, C]
    kernels::Copy4dKernelArgs m{};
    m.TOTAL = 2 * 9 * static_cast<int64_t>(p.C);
    m.D1 = p.C;
    m.D2 = 9;
    m.D3 = 1;
    m.ss0 = 9 * static_cast<int64_t>(p.C);
    m.ss1 = 9;
    m.ss2 = 1;
    m.ss3 = 1;
    m.sd0 = 9 * static_cast<int64_t>(p.C);
    m.sd1 = 1;
    m.sd2 = p.C;
    m.sd3 = 1;
    add(b.maskWeight, m, static_cast<size_t>(m.TOTAL) * 4, true, &s.oMaskW);
    int64_t const ta = static_cast<int64_t>(p.ka) * p.ka;
    add(b.wa, convPack(p.Cm, p.C, ta), static_cast<size_t>(p.Cm) * p.C * ta * e, e == 4, &s.oWa);
    add(b.wb, convPack(p.Cb, p.Cm, 9), static_cast<size_t>(p.Cb) * p.Cm * 9 * e, e == 4, &s.oWb);
    if (p.hasConv3)
    {
        add(b.wc, convPack(p.Cout, p.Cb, 1), static_cast<size_t>(p.Cout) * p.Cb * e, e == 4, &s.oWc);
    }
    if (p.hasDown)
    {
        add(b.wd, convPack(p.Cout, p.C, 1), static_cast<size_t>(p.Cout) * p.C * e, e == 4, &s.oWd);
    }
    if (p.deform)
    {
        add(b.wo, convPack(kSAI_BLOCK_OFFSET_CHANNELS, p.C, 9),
            static_cast<size_t>(kSAI_BLOCK_OFFSET_CHANNELS) * p.C * 9 * e, e == 4, &s.oWo);
    }
    s.oZero = at; // zeros of [Cout] (conv3's bias, a missing tail or conv bias)
    int64_t const zeros = p.Cout > p.Cb ? (p.Cout > p.Cm ? p.Cout : p.Cm) : (p.Cb > p.Cm ? p.Cb : p.Cm);
    at += up256(static_cast<size_t>(zeros > kSAI_BLOCK_OFFSET_CHANNELS ? zeros : kSAI_BLOCK_OFFSET_CHANNELS) * e);
    if (s.havePacked)
    {
        kernels::freeDevice(&s.packed);
        s.havePacked = false;
    }
    CUresult r = kernels::allocDevice(at, &s.packed);
    if (r != CUDA_SUCCESS)
    {
        return saiLaunchError(r, "SparseBlock: allocating the packed weights");
    }
    s.havePacked = true;
    ++s.packs;
    if ((r = s.lc.api->memsetD8Async(s.packed.pointer, 0, at, stream)) != CUDA_SUCCESS)
    {
        return saiLaunchError(r, "SparseBlock: zeroing the counters and biases");
    }
    for (int i = 0; i < n; ++i)
    {
        kernels::ResolvedKernel const& k = jobs[i].b32 ? s.copy32 : s.copy16;
        jobs[i].args.src_ptr = saiDevPtr(jobs[i].src);
        jobs[i].args.dst_ptr = s.packed.pointer + jobs[i].offset;
        r = kernels::launch(k, stream, saiGridDim(jobs[i].args.TOTAL, k.image->tileRows), 1, 1, jobs[i].args);
        if (r != CUDA_SUCCESS)
        {
            return saiLaunchError(r, std::string(k.image->spec) + ": " + kernels::lastError());
        }
    }
    // later runs may come on other streams: the packing is complete before any of them reads it
    if ((r = s.lc.api->streamSynchronize(stream)) != CUDA_SUCCESS)
    {
        return saiLaunchError(r, "SparseBlock: waiting for the weight packing");
    }
    return cudaSuccess;
}

void setLayoutStrides(SaiTensorLayout const& l, int64_t* n, int64_t* c, int64_t* h, int64_t* w)
{
    *n = l.strides.n;
    *c = l.strides.c;
    *h = l.strides.h;
    *w = l.strides.w;
}

//! A conv at a partition of an own or TensorRT tensor into an own NHWC buffer [N, Ho, Wo, cout].
cudaError_t launchConv(kernels::ResolvedKernel const& k, CUstream stream, void const* x, SaiStrides const& xs,
    int64_t n, int64_t h, int64_t w, int64_t cin, int64_t ho, int64_t wo, int64_t cout, int32_t ksize,
    int32_t stride, bool relu, CUdeviceptr weight, CUdeviceptr bias, void const* off, void const* idx,
    void const* cnt, void* y)
{
    kernels::SparseConvKernelArgs a{};
    a.x_ptr = saiDevPtr(x);
    a.w_ptr = weight;
    a.b_ptr = bias;
    a.off_ptr = saiDevPtr(off != nullptr ? off : x);
    a.idx_ptr = saiDevPtr(idx);
    a.cnt_ptr = saiDevPtr(cnt);
    a.y_ptr = saiDevPtr(y);
    a.P = n * ho * wo;
    a.H = h;
    a.W = w;
    a.Ho = ho;
    a.Wo = wo;
    a.CIN_G = cin;
    a.COUT_G = cout;
    a.CIN_DG = cin;
    a.sxn = xs.n;
    a.sxc = xs.c;
    a.sxh = xs.h;
    a.sxw = xs.w;
    int64_t const oc = kSAI_BLOCK_OFFSET_CHANNELS;
    a.son = off != nullptr ? ho * wo * oc : 0;
    a.soc = 1;
    a.soh = off != nullptr ? wo * oc : 0;
    a.sow = off != nullptr ? oc : 0;
    a.syn = ho * wo * cout;
    a.syc = 1;
    a.syh = wo * cout;
    a.syw = cout;
    a.STRIDE_H = stride;
    a.STRIDE_W = stride;
    a.PAD_T = ksize / 2;
    a.PAD_L = ksize / 2;
    a.DIL_H = 1;
    a.DIL_W = 1;
    a.KH = ksize;
    a.KW = ksize;
    a.DEFORM = off != nullptr ? 1 : 0;
    a.RELU = relu ? 1 : 0;
    CUresult const r
        = kernels::launch(k, stream, saiGridDim(a.P, k.image->tileRows), saiGridDim(cout, k.image->tileCols), 1, a);
    return r == CUDA_SUCCESS ? cudaSuccess
                             : saiLaunchError(r, std::string(k.image->spec) + ": " + kernels::lastError());
}
} // namespace

cudaError_t SparseBlockRunner::run(SaiBlockParams const& p, SaiDataType type, SaiBlockBuffers const& b,
    void* workspace, size_t workspaceSize, cudaStream_t cudaStream) noexcept
{
    try
    {
        saiClearLaunchError();
        SaiKernelCaps const& caps = sparseBlockKernelCaps();
        for (SaiTensorLayout const* l : {&b.xLayout, &b.yLayout})
        {
            if (l->type != type || !saiCapsLayout(caps, type, l->layout) || l->strides.c != 1)
            {
                return saiLaunchError(
                    CUDA_ERROR_NOT_SUPPORTED, "SparseBlock: X/Y must be channel-last of the block's type");
            }
        }
        if (p.C % 16 != 0 || p.Cm % 16 != 0 || p.Cb % 16 != 0 || p.Cout % 16 != 0 || !saiAligned16(b.xLayout, p.C)
            || !saiAligned16(b.yLayout, p.Cout) || !saiAligned16(b.x) || !saiAligned16(b.y))
        {
            return saiLaunchError(CUDA_ERROR_NOT_SUPPORTED,
                "SparseBlock: the block builds need 16-divisible channel counts and 16-byte aligned X/Y; export "
                "this block with the per-op plugins");
        }
        SaiBlockWorkspace const ws = saiBlockWorkspace(p, type, workspace);
        if (workspace == nullptr || workspaceSize < ws.total)
        {
            return saiLaunchError(CUDA_ERROR_INVALID_VALUE,
                std::string("SparseBlock: workspace ")
                    + (workspace == nullptr ? "missing" : "of " + std::to_string(workspaceSize) + " bytes") + ", "
                    + std::to_string(ws.total) + " bytes needed");
        }
        int64_t const p1 = static_cast<int64_t>(p.N) * p.H1 * p.W1;
        int64_t const p2 = static_cast<int64_t>(p.N) * p.H2 * p.W2;
        if (p1 == 0 || p2 == 0)
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
        // every activation is channel-last, 16-divisible and aligned (checked above; the own buffers are):
        // the fast conv builds run but for fp32, which has only the any builds
        s.fast1 = s.fast2 = s.fast3 = type != SaiDataType::kFLOAT;
        BuildKey const key{static_cast<int64_t>(type), p.ka, p.deform, p.hasConv3, p.hasDown, p.stochastic, p.reluB,
            s.fast1, p.Cm % saiBlockInterpBc(type) == 0, p.Cout % kSAI_BLOCK_BC_SMALL == 0, s.fast2, s.fast3};
        if (changed || !s.resolved || key != s.builds)
        {
            if ((err = resolveBuilds(s, p, type, key)) != cudaSuccess)
            {
                return err;
            }
        }
        PackKey const pk{ptrKey(s.lc.ctx), ptrKey(b.maskWeight), ptrKey(b.wa), ptrKey(b.wb), ptrKey(b.wc),
            ptrKey(b.wd), ptrKey(b.wo), static_cast<int64_t>(type), p.C, p.Cm, p.Cb, p.Cout, p.ka, p.hasConv3,
            p.hasDown, p.deform};
        if (!s.havePacked || pk != s.packKey)
        {
            CUstreamCaptureStatus capture = CU_STREAM_CAPTURE_STATUS_NONE;
            CUresult r = s.lc.api->streamIsCapturing(stream, &capture);
            if (r != CUDA_SUCCESS)
            {
                return saiLaunchError(r, "SparseBlock: querying the stream's capture status");
            }
            if (capture != CU_STREAM_CAPTURE_STATUS_NONE)
            {
                return saiLaunchError(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
                    "SparseBlock: the first enqueue packs the weights (allocation, wait): run one enqueue before "
                    "capturing a CUDA graph");
            }
            if ((err = packWeights(s, p, type, b, stream)) != cudaSuccess)
            {
                s.havePacked = false;
                return err;
            }
            s.packKey = pk;
        }
        CUdeviceptr const base = s.packed.pointer;
        CUdeviceptr const zero = base + s.oZero;
        SaiStrides const own1{static_cast<int64_t>(p.H1) * p.W1 * p.Cm, 1, static_cast<int64_t>(p.W1) * p.Cm, p.Cm};

        // 1-2. the masks and their partitions, one launch per mask (each partition 16-byte aligned)
        kernels::BlockMasksKernelArgs m{};
        m.x_ptr = saiDevPtr(b.x);
        m.wm_ptr = base + s.oMaskW;
        m.bm_ptr = saiDevPtr(b.maskBias);
        m.acc_ptr = base;
        m.N = p.N;
        m.C = p.C;
        m.H = p.H;
        m.W = p.W;
        m.sxn = b.xLayout.strides.n;
        m.sxh = b.xLayout.strides.h;
        m.sxw = b.xLayout.strides.w;
        m.TD = p.temperature + 1e-8F;
        m.GRID = p.gridInterval;
        m.STOCH = p.stochastic ? 1 : 0;
        unsigned const rows = s.masks.image->tileRows;
        for (int i = 0; i < 2; ++i)
        {
            bool const second = i == 1;
            void const* u = second ? b.noise2 : b.noise1;
            int64_t const ho = second ? p.H2 : p.H1, wo = second ? p.W2 : p.W1;
            unsigned const grid = saiGridDim(second ? p2 : p1, rows);
            m.u1_ptr = saiDevPtr(u != nullptr ? u : (second ? ws.m2 : ws.m1));
            m.u2_ptr = m.u1_ptr;
            m.m_ptr = saiDevPtr(second ? ws.m2 : ws.m1);
            m.idx_ptr = saiDevPtr(second ? ws.idx2 : ws.idx1);
            m.cnt_ptr = saiDevPtr(ws.cnt + (second ? 24 : 0)); // m2's count lands at +32
            // m1: every program is one of m1's (NB1 = NPROG); m2: none is (NB1 = 0, H1 = W1 = 0: base 0)
            m.H1 = second ? 0 : ho;
            m.W1 = second ? 0 : wo;
            m.H2 = ho;
            m.W2 = wo;
            m.S1 = second ? p.maskStride2 : p.maskStride1;
            m.S2 = m.S1;
            m.NB1 = second ? 0 : grid;
            m.NPROG = grid;
            int64_t const sn = u != nullptr ? 2 * ho * wo : 0, sc = u != nullptr ? ho * wo : 0;
            m.s1n = m.s2n = sn;
            m.s1c = m.s2c = sc;
            m.s1h = m.s2h = u != nullptr ? wo : 0;
            m.s1w = m.s2w = u != nullptr ? 1 : 0;
            CUresult const r = kernels::launch(s.masks, stream, grid, 1, 1, m);
            if (r != CUDA_SUCCESS)
            {
                return saiLaunchError(r, std::string(s.masks.image->spec) + ": " + kernels::lastError());
            }
        }
        void const* cnt1 = ws.cnt;
        void const* cnt2 = ws.cnt + 32;

        // 3. conv1 at m1's positions (ReLU)
        CUdeviceptr const ba = b.ba != nullptr ? saiDevPtr(b.ba) : zero;
        if ((err = launchConv(s.conv1, stream, b.x, b.xLayout.strides, p.N, p.H, p.W, p.C, p.H1, p.W1, p.Cm, p.ka,
                 p.strideA, true, base + s.oWa, ba, nullptr, ws.idx1, cnt1, ws.a))
            != cudaSuccess)
        {
            return err;
        }

        // 4. Interpolate(a, m1): two separable passes
        kernels::InterpSepKernelArgs in{};
        auto interpArgs = [&](kernels::InterpSepKernelArgs& a, void const* f, void const* mask, int64_t c, int64_t h,
                              int64_t w) {
            a.f_ptr = saiDevPtr(f);
            a.m_ptr = saiDevPtr(mask);
            a.t_ptr = saiDevPtr(ws.scratch);
            a.C = c;
            a.H = h;
            a.W = w;
            a.NTY = saiGridDim(h, kSAI_BLOCK_TH);
            a.NTX = saiGridDim(w, kSAI_BLOCK_TW);
            a.sfn = h * w * c;
            a.sfh = w * c;
            a.sfw = c;
            a.smn = h * w;
            a.smh = w;
            a.smw = 1;
            a.EPS = p.eps;
        };
        interpArgs(in, ws.a, ws.m1, p.Cm, p.H1, p.W1);
        unsigned const g1x = static_cast<unsigned>(p.N) * static_cast<unsigned>(in.NTY * in.NTX);
        unsigned const g1y = saiGridDim(p.Cm, s.interp.image->tileCols);
        int64_t const bc1 = s.interp.image->tileCols;
        in.td_ptr = saiDevPtr(ws.scratch + static_cast<int64_t>(g1x) * g1y * kSAI_BLOCK_HRP * kSAI_BLOCK_TW * bc1);
        in.y_ptr = saiDevPtr(ws.ai);
        in.syn = in.sfn;
        in.syh = in.sfh;
        in.syw = in.sfw;
        in.b_ptr = in.id_ptr = in.xd_ptr = in.wd_ptr = in.bd_ptr = in.f_ptr; // not read without FUSED
        in.CIN = p.Cm;
        in.DS = 1;
        in.sin_ = in.sdn = in.sfn;
        in.sic = in.sdc = 1;
        in.sih = in.sdh = in.sfh;
        in.siw = in.sdw = in.sfw;
        double const s1 = static_cast<double>(p.sigma1) * p.sigma1;
        double const kPi = 3.14159265358979323846;
        in.HALF_S2 = static_cast<float>(s1 / 2.0);
        in.NORM = static_cast<float>(s1 / (2.0 * kPi));
        in.FUSED = 0;
        in.HAS_BIAS = 0;
        in.DOWN = 0;
        in.EVEN_C = p.Cm % bc1 == 0 ? 1 : 0;
        CUresult r = kernels::launch(s.interp, stream, g1x, g1y, 1, in);
        if (r != CUDA_SUCCESS)
        {
            return saiLaunchError(r, std::string(s.interp.image->spec) + ": " + kernels::lastError());
        }

        // 5. [DCN] the offsets (3x3 conv of X at m2's positions), 6. conv2, 7. [conv3]
        SaiStrides const own2{static_cast<int64_t>(p.H2) * p.W2 * p.Cb, 1, static_cast<int64_t>(p.W2) * p.Cb, p.Cb};
        if (p.deform
            && (err = launchConv(s.convOff, stream, b.x, b.xLayout.strides, p.N, p.H, p.W, p.C, p.H2, p.W2,
                    kSAI_BLOCK_OFFSET_CHANNELS, 3, p.offsetStride, false, base + s.oWo,
                    b.bo != nullptr ? saiDevPtr(b.bo) : zero, nullptr, ws.idx2, cnt2, ws.off))
                != cudaSuccess)
        {
            return err;
        }
        if ((err = launchConv(s.conv2, stream, ws.ai, own1, p.N, p.H1, p.W1, p.Cm, p.H2, p.W2, p.Cb, 3, p.strideB,
                 p.reluB, base + s.oWb, b.bb != nullptr ? saiDevPtr(b.bb) : zero, p.deform ? ws.off : nullptr,
                 ws.idx2, cnt2, ws.b))
            != cudaSuccess)
        {
            return err;
        }
        void const* last = ws.b;
        if (p.hasConv3)
        {
            if ((err = launchConv(s.conv3, stream, ws.b, own2, p.N, p.H2, p.W2, p.Cb, p.H2, p.W2, p.Cout, 1, 1, false,
                     base + s.oWc, zero, nullptr, ws.idx2, cnt2, ws.c))
                != cudaSuccess)
            {
                return err;
            }
            last = ws.c;
        }

        // 8. the tail: Interpolate(c, m2) + bias + identity (X or its 1x1 downsample conv), ReLU
        kernels::InterpSepKernelArgs tl{};
        interpArgs(tl, last, ws.m2, p.Cout, p.H2, p.W2);
        unsigned const g2x = static_cast<unsigned>(p.N) * static_cast<unsigned>(tl.NTY * tl.NTX);
        unsigned const g2y = saiGridDim(p.Cout, s.tail.image->tileCols);
        int64_t const bc2 = s.tail.image->tileCols;
        tl.td_ptr = saiDevPtr(ws.scratch + static_cast<int64_t>(g2x) * g2y * kSAI_BLOCK_HRP * kSAI_BLOCK_TW * bc2);
        tl.y_ptr = saiDevPtr(b.y);
        int64_t unused = 0;
        setLayoutStrides(b.yLayout, &tl.syn, &unused, &tl.syh, &tl.syw);
        tl.b_ptr = b.tailBias != nullptr ? saiDevPtr(b.tailBias) : zero;
        tl.id_ptr = saiDevPtr(b.x);
        tl.xd_ptr = saiDevPtr(b.x);
        tl.wd_ptr = p.hasDown ? base + s.oWd : saiDevPtr(b.x);
        tl.bd_ptr = p.hasDown && b.bd != nullptr ? saiDevPtr(b.bd) : zero;
        tl.CIN = p.C;
        tl.DS = p.downStride;
        setLayoutStrides(b.xLayout, &tl.sin_, &tl.sic, &tl.sih, &tl.siw);
        setLayoutStrides(b.xLayout, &tl.sdn, &tl.sdc, &tl.sdh, &tl.sdw);
        double const s2 = static_cast<double>(p.sigma2) * p.sigma2;
        tl.HALF_S2 = static_cast<float>(s2 / 2.0);
        tl.NORM = static_cast<float>(s2 / (2.0 * kPi));
        tl.FUSED = 1;
        tl.HAS_BIAS = 1;
        tl.DOWN = p.hasDown ? 1 : 0;
        tl.EVEN_C = p.Cout % bc2 == 0 ? 1 : 0;
        r = kernels::launch(s.tail, stream, g2x, g2y, 1, tl);
        if (r != CUDA_SUCCESS)
        {
            return saiLaunchError(r, std::string(s.tail.image->spec) + ": " + kernels::lastError());
        }
        return cudaSuccess;
    }
    catch (std::exception const& e)
    {
        return saiLaunchError(CUDA_ERROR_UNKNOWN, std::string("SparseBlock launch: ") + e.what());
    }
}

} // namespace sai
