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

CUdeviceptr devptr(void const* p)
{
    return static_cast<CUdeviceptr>(reinterpret_cast<uintptr_t>(p));
}

} // namespace

SaiKernelCaps const& interpolateKernelCaps()
{
    static SaiKernelCaps const caps = [] {
        SaiKernelCaps c;
        uint32_t const hwc = saiLayoutBit(SaiLayout::kNHWC) | saiLayoutBit(SaiLayout::kNHWC8)
            | saiLayoutBit(SaiLayout::kNHWC16);
        c.layouts[static_cast<int32_t>(SaiDataType::kFLOAT)] = saiLayoutBit(SaiLayout::kNCHW) | saiLayoutBit(SaiLayout::kNHWC);
        c.layouts[static_cast<int32_t>(SaiDataType::kHALF)] = saiLayoutBit(SaiLayout::kNCHW) | hwc;
        c.layouts[static_cast<int32_t>(SaiDataType::kBF16)] = saiLayoutBit(SaiLayout::kNCHW) | hwc;
        c.fp32Mask = true;
        c.nbTactics = 1;
        c.tactics[0] = 1;
        c.tacticNames[0] = "triton-tuned";
        return c;
    }();
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
    std::string const partSpec = std::string("mask_partition_") + saiTypeTag(l.mask.type) + "_lt1";
    cudaError_t err = cudaSuccess;
    kernels::KernelImage const* part = saiImage(partSpec, 1, &err);
    if (part == nullptr)
    {
        return err;
    }
    CUresult r = kernels::memsetAsync(devptr(ws.count), 0, 8, stream);
    if (r != CUDA_SUCCESS)
    {
        return saiLaunchError(r, "zeroing the counts");
    }
    Arg const partArgs[] = {Arg::ptr("m_ptr", mask), Arg::ptr("idx_ptr", ws.idx), Arg::ptr("cnt_ptr", ws.count),
        Arg::i("P", positions), Arg::i("H", p.H), Arg::i("W", p.W), Arg::i("smn", l.mask.strides.n),
        Arg::i("smh", l.mask.strides.h), Arg::i("smw", l.mask.strides.w)};
    r = kernels::launchNamed(part, stream, saiGridDim(positions, part->tileRows), 1, 1, partArgs,
        static_cast<int>(sizeof(partArgs) / sizeof(partArgs[0])));
    if (r != CUDA_SUCCESS)
    {
        return saiLaunchError(r, partSpec + ": " + kernels::lastError());
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
    r = kernels::launchNamed(img, stream, saiGridDim(positions, img->tileRows), saiGridDim(p.C, img->tileCols), 1, args,
        static_cast<int>(sizeof(args) / sizeof(args[0])));
    if (r != CUDA_SUCCESS)
    {
        return saiLaunchError(r, spec + ": " + kernels::lastError());
    }

    // 3. zeros in the padding channels of a vectorised output
    return saiZeroPadChannels(l.out, out, p.C, positions, cudaStream);
}

} // namespace sai
