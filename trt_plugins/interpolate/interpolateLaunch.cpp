/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * sai::Interpolate on the AOT-compiled Triton kernels (kernels/interpolate.py, built by
 * `make kernels`, embedded in the library); see interpolateKernel.h for the pipeline.
 */
#include "interpolateKernel.h"

#include "saiTritonLaunch.h"

#include <string>

namespace sai
{
namespace
{
using kernels::Arg;

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

} // namespace

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

cudaError_t interpolateLaunch(SaiInterpParams const& p, SaiDataType type, SaiInterpLayouts const& l, int32_t tactic,
    void const* feature, void const* mask, void* out, void* workspace, size_t workspaceSize, cudaStream_t cudaStream)
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
    auto const stream = reinterpret_cast<CUstream>(cudaStream);

    // 1. the positions with M < 1 first (they need the stencil), the count on the device
    cudaError_t err = saiPartition(mask, l.mask, positions, p.H, p.W, "lt1", ws.idx, ws.count, cudaStream);
    if (err != cudaSuccess)
    {
        return err;
    }

    // 2. the stencil where M < 1, M*F elsewhere; the Gaussian weights in fp32 in the kernel
    bool const fast = type != SaiDataType::kFLOAT && saiAligned16(l.feature, p.C) && saiAligned16(l.out, p.C)
        && saiAligned16(feature) && saiAligned16(out);
    std::string const spec = std::string("interpolate_") + saiTypeTag(type) + "_m" + saiTypeTag(l.mask.type)
        + (fast ? "" : "_any");
    kernels::KernelImage const* img = saiImage(spec, tactic, &err);
    if (img == nullptr)
    {
        return err;
    }
    float const s2 = p.sigma * p.sigma;
    constexpr float kTwoPi = 6.283185307179586F;
    SaiStrides const fs = l.feature.strides, ms = l.mask.strides, os = l.out.strides;
    Arg const args[] = {Arg::ptr("f_ptr", feature), Arg::ptr("m_ptr", mask), Arg::ptr("idx_ptr", ws.idx),
        Arg::ptr("cnt_ptr", ws.count), Arg::ptr("b_ptr", feature), Arg::ptr("id_ptr", feature), Arg::ptr("y_ptr", out),
        Arg::i("P", positions), Arg::i("C", p.C), Arg::i("H", p.H), Arg::i("W", p.W), Arg::i("sfn", fs.n),
        Arg::i("sfc", fs.c), Arg::i("sfh", fs.h), Arg::i("sfw", fs.w), Arg::i("smn", ms.n), Arg::i("smh", ms.h),
        Arg::i("smw", ms.w), Arg::i("sin_", fs.n), Arg::i("sic", fs.c), Arg::i("sih", fs.h), Arg::i("siw", fs.w),
        Arg::i("syn", os.n), Arg::i("syc", os.c), Arg::i("syh", os.h), Arg::i("syw", os.w),
        Arg::f("HALF_S2", s2 * 0.5F), Arg::f("NORM", s2 / kTwoPi), Arg::f("EPS", p.eps), Arg::i("KS", p.kernelSize),
        Arg::i("FUSED", 0)};
    CUresult const r = kernels::launchNamed(img, stream, saiGridDim(positions, img->tileRows), saiGridDim(p.C, img->tileCols), 1, args,
        static_cast<int>(sizeof(args) / sizeof(args[0])));
    if (r != CUDA_SUCCESS)
    {
        return saiLaunchError(r, spec + ": " + kernels::lastError());
    }

    // 3. zeros in the padding channels of a vectorised output
    return saiZeroPadChannels(l.out, out, p.C, positions, cudaStream);
}

} // namespace sai
