/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * sai::Interpolate on the AOT-compiled Triton kernels (kernels/interpolate.py, built by
 * `make kernels`, embedded in the library); see interpolateKernel.h for the pipeline.
 */
#include "interpolateKernel.h"

#include "saiTritonLaunch.h"

#include <array>
#include <cstring>
#include <exception>
#include <string>

namespace sai
{
namespace
{
struct InterpWorkspace
{
    void* idx;   //!< int32 [P]: positions with M < 1 first
    void* count; //!< int32 [2]
    size_t total;
};

InterpWorkspace interpWorkspace(SaiInterpParams const& p, void* base)
{
    SaiWorkspace ws(base);
    int64_t const positions = static_cast<int64_t>(p.N) * p.H * p.W;
    InterpWorkspace w{};
    w.idx = ws.take(static_cast<size_t>(positions > 0 ? positions : 1) * 4);
    w.count = ws.take(2 * 4);
    w.total = ws.used();
    return w;
}

//! Everything that decides the builds and their arguments (but the buffers' addresses).
using InterpKey = std::array<int64_t, 28>;

InterpKey interpKey(SaiInterpParams const& p, SaiDataType type, SaiInterpLayouts const& l, int32_t tactic, bool fast)
{
    InterpKey key{};
    int64_t* k = key.data();
    float const f[2] = {p.sigma, p.eps};
    int32_t bits[2];
    std::memcpy(bits, f, sizeof(bits));
    for (int64_t v : {static_cast<int64_t>(p.N), static_cast<int64_t>(p.C), static_cast<int64_t>(p.H),
             static_cast<int64_t>(p.W), static_cast<int64_t>(p.kernelSize), static_cast<int64_t>(bits[0]),
             static_cast<int64_t>(bits[1]), static_cast<int64_t>(type), static_cast<int64_t>(tactic),
             static_cast<int64_t>(fast ? 1 : 0)})
    {
        *k++ = v;
    }
    for (SaiTensorLayout const* t : {&l.feature, &l.mask, &l.out})
    {
        for (int64_t v : {static_cast<int64_t>(t->layout), static_cast<int64_t>(t->type), t->strides.n, t->strides.c,
                 t->strides.h, t->strides.w})
        {
            *k++ = v;
        }
    }
    return key;
}

} // namespace

struct InterpolateRunner::State
{
    SaiLaunchContext lc;
    bool resolved{false};
    std::array<int64_t, 4> builds{};
    bool prepared{false};
    InterpKey key{};
    int64_t prepares{0};
    SaiPartitionPlan partition;
    kernels::ResolvedKernel interp;
    kernels::InterpolateKernelArgs args;
    unsigned gridX{0};
    unsigned gridY{0};
};

InterpolateRunner::InterpolateRunner()
    : mState(new State)
{
}

InterpolateRunner::~InterpolateRunner()
{
    delete mState;
}

int64_t InterpolateRunner::prepares() const noexcept
{
    return mState->prepares;
}

SaiKernelCaps const& interpolateKernelCaps()
{
    static int32_t const kIds[] = {1};
    static char const* const kNames[] = {"triton-tuned"};
    static SaiKernelCaps const caps = saiTritonCaps(1, kIds, kNames);
    return caps;
}

size_t interpolateWorkspaceSize(SaiInterpParams const& p, SaiDataType /*type*/)
{
    return interpWorkspace(p, nullptr).total;
}

namespace
{
//! Chooses the builds of one configuration and resolves them in the current context (string
//! work, image scan, module cache): once per build key and context.
cudaError_t resolveBuilds(InterpolateRunner::State& s, SaiDataType type, SaiInterpLayouts const& l, int32_t tactic,
    bool fast, std::array<int64_t, 4> const& builds)
{
    s.resolved = false;
    s.prepared = false;
    ++s.prepares;
    cudaError_t err = saiPartitionResolve(l.mask.type, "lt1", &s.partition);
    if (err != cudaSuccess)
    {
        return err;
    }
    std::string const spec = std::string("interpolate_") + saiTypeTag(type) + "_m" + saiTypeTag(l.mask.type)
        + (fast ? "" : "_any");
    if ((err = saiResolve(spec, tactic, &s.interp)) != cudaSuccess)
    {
        return err;
    }
    s.builds = builds;
    s.resolved = true;
    return cudaSuccess;
}

//! The arguments (but the buffers) and grids of one configuration: integers only.
void setArgs(InterpolateRunner::State& s, SaiInterpParams const& p, SaiInterpLayouts const& l, InterpKey const& key)
{
    int64_t const positions = static_cast<int64_t>(p.N) * p.H * p.W;
    saiPartitionArgs(l.mask, positions, p.H, p.W, true, &s.partition);
    float const s2 = p.sigma * p.sigma;
    constexpr float kTwoPi = 6.283185307179586F;
    SaiStrides const fs = l.feature.strides, ms = l.mask.strides, os = l.out.strides;
    kernels::InterpolateKernelArgs& a = s.args;
    a = kernels::InterpolateKernelArgs{};
    a.P = positions;
    a.C = p.C;
    a.H = p.H;
    a.W = p.W;
    a.sfn = fs.n;
    a.sfc = fs.c;
    a.sfh = fs.h;
    a.sfw = fs.w;
    a.smn = ms.n;
    a.smh = ms.h;
    a.smw = ms.w;
    a.sin_ = fs.n; // the identity of the fused tail: unused without FUSED
    a.sic = fs.c;
    a.sih = fs.h;
    a.siw = fs.w;
    a.syn = os.n;
    a.syc = os.c;
    a.syh = os.h;
    a.syw = os.w;
    a.HALF_S2 = s2 * 0.5F;
    a.NORM = s2 / kTwoPi;
    a.EPS = p.eps;
    a.KS = p.kernelSize;
    s.gridX = saiGridDim(positions, s.interp.image->tileRows);
    s.gridY = saiGridDim(p.C, s.interp.image->tileCols);
    s.key = key;
    s.prepared = true;
}
} // namespace

cudaError_t InterpolateRunner::run(SaiInterpParams const& p, SaiDataType type, SaiInterpLayouts const& l,
    int32_t tactic, void const* feature, void const* mask, void* out, void* workspace, size_t workspaceSize,
    cudaStream_t cudaStream) noexcept
{
    try
    {
        saiClearLaunchError();
        SaiKernelCaps const& caps = interpolateKernelCaps();
        if (!saiInterpParamsValid(p))
        {
            return saiLaunchError(CUDA_ERROR_INVALID_VALUE, "invalid Interpolate parameters");
        }
        for (SaiTensorLayout const* t : {&l.feature, &l.out})
        {
            if (t->type != type || !saiCapsLayout(caps, type, t->layout))
            {
                return saiLaunchError(CUDA_ERROR_NOT_SUPPORTED, "feature/output layout or type not supported");
            }
        }
        if (l.mask.type != type && !(caps.fp32Mask && l.mask.type == SaiDataType::kFLOAT))
        {
            return saiLaunchError(CUDA_ERROR_NOT_SUPPORTED, "mask type not supported");
        }
        if (tactic != 0 && !saiCapsTactic(caps, tactic))
        {
            return saiLaunchError(CUDA_ERROR_INVALID_VALUE, "unknown tactic " + std::to_string(tactic));
        }
        InterpWorkspace const ws = interpWorkspace(p, workspace);
        if (workspace == nullptr || workspaceSize < ws.total)
        {
            return saiLaunchError(CUDA_ERROR_INVALID_VALUE,
                "workspace of " + std::to_string(workspaceSize) + " bytes, " + std::to_string(ws.total) + " needed");
        }
        int64_t const positions = static_cast<int64_t>(p.N) * p.H * p.W;
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
        bool const fast = type != SaiDataType::kFLOAT && saiAligned16(l.feature, p.C) && saiAligned16(l.out, p.C)
            && saiAligned16(feature) && saiAligned16(out);
        std::array<int64_t, 4> const builds = {
            static_cast<int64_t>(type), static_cast<int64_t>(l.mask.type), fast ? 1 : 0, tactic};
        if (changed || !s.resolved || builds != s.builds)
        {
            if ((err = resolveBuilds(s, type, l, tactic, fast, builds)) != cudaSuccess)
            {
                return err;
            }
        }
        InterpKey const key = interpKey(p, type, l, tactic, fast);
        if (!s.prepared || key != s.key)
        {
            setArgs(s, p, l, key);
        }

        // 1. the positions with M < 1 first (they need the stencil), the count on the device
        if ((err = saiPartitionRun(s.lc.api, s.partition, mask, ws.idx, ws.count, stream)) != cudaSuccess)
        {
            return err;
        }

        // 2. the stencil where M < 1, M*F elsewhere; the Gaussian weights in fp32 in the kernel
        kernels::InterpolateKernelArgs& a = s.args;
        a.f_ptr = saiDevPtr(feature);
        a.m_ptr = saiDevPtr(mask);
        a.idx_ptr = saiDevPtr(ws.idx);
        a.cnt_ptr = saiDevPtr(ws.count);
        a.b_ptr = saiDevPtr(feature); // the fused tail's bias and identity: never read without FUSED
        a.id_ptr = saiDevPtr(feature);
        a.y_ptr = saiDevPtr(out);
        CUresult const r = kernels::launch(s.interp, stream, s.gridX, s.gridY, 1, a);
        if (r != CUDA_SUCCESS)
        {
            return saiLaunchError(r, std::string(s.interp.image->spec) + ": " + kernels::lastError());
        }

        // 3. zeros in the padding channels of a vectorised output
        return saiZeroPadChannels(s.lc.api, l.out, out, p.C, positions, stream);
    }
    catch (std::exception const& e)
    {
        return saiLaunchError(CUDA_ERROR_UNKNOWN, std::string("Interpolate launch: ") + e.what());
    }
}

} // namespace sai
