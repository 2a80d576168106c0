/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * sai::SparseBlock's launch plan (sparseBlockKernel.h): what the kernels take (saiBlockFinalize, the
 * formats) and the workspace plan. No kernel launcher here (the glue and its tests link this alone);
 * SparseBlockRunner::run is sparseBlockRunner.cpp.
 */
#include "sparseBlockKernel.h"

namespace sai
{
namespace
{
int64_t cdiv(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

//! fp32 elements of the separable Interpolate's scratch for a map [N, C, H, W] with BC channels a program.
int64_t interpScratch(int64_t n, int64_t c, int64_t h, int64_t w, int64_t bc)
{
    int64_t const nprog = n * cdiv(h, kSAI_BLOCK_TH) * cdiv(w, kSAI_BLOCK_TW) * cdiv(c, bc);
    return nprog * kSAI_BLOCK_HRP * kSAI_BLOCK_TW * (bc + 1);
}

} // namespace

int64_t saiBlockInterpBc(SaiDataType t)
{
    return t == SaiDataType::kFLOAT ? kSAI_BLOCK_BC_SMALL : kSAI_BLOCK_BC;
}

SaiBlockWorkspace saiBlockWorkspace(SaiBlockParams const& p, SaiDataType t, void* base)
{
    struct Carver // 256-byte aligned pieces in the order taken
    {
        char* base;
        size_t used{0};
        void* take(size_t bytes)
        {
            size_t const at = used;
            used += (bytes + 255) / 256 * 256;
            return base + at;
        }
    } ws{static_cast<char*>(base)};
    size_t const e = saiDataTypeSize(t);
    size_t const p1 = static_cast<size_t>(p.N) * p.H1 * p.W1;
    size_t const p2 = static_cast<size_t>(p.N) * p.H2 * p.W2;
    SaiBlockWorkspace w{};
    w.m1 = ws.take(p1 * 4);
    w.m2 = ws.take(p2 * 4);
    w.idx1 = ws.take(p1 * 4);
    w.idx2 = ws.take(p2 * 4);
    w.cnt = static_cast<char*>(ws.take(48));
    w.a = ws.take(p1 * p.Cm * e);
    w.ai = ws.take(p1 * p.Cm * e);
    w.off = p.deform ? ws.take(p2 * kSAI_BLOCK_OFFSET_CHANNELS * e) : nullptr;
    w.b = ws.take(p2 * p.Cb * e);
    w.c = p.hasConv3 ? ws.take(p2 * p.Cout * e) : nullptr;
    int64_t const s1 = interpScratch(p.N, p.Cm, p.H1, p.W1, saiBlockInterpBc(t));
    int64_t const s2 = interpScratch(p.N, p.Cout, p.H2, p.W2, kSAI_BLOCK_BC_SMALL);
    w.scratchFloats = s1 > s2 ? s1 : s2;
    w.scratch = static_cast<float*>(ws.take(static_cast<size_t>(w.scratchFloats) * 4));
    w.total = ws.used;
    return w;
}

char const* saiBlockFinalize(SaiBlockParams& p)
{
    if (p.N < 0 || p.C < 1 || p.H < 0 || p.W < 0 || p.Cm < 1 || p.Cb < 1 || p.Cout < 1)
    {
        return "the channel counts must be >= 1 and the sizes >= 0";
    }
    if (p.C % 16 != 0 || p.Cm % 16 != 0 || p.Cb % 16 != 0 || p.Cout % 16 != 0)
    {
        return "the channel counts must be multiples of 16 (the block builds' vector loads): export this block "
               "with the per-op plugins";
    }
    if (p.ka != 1 && p.ka != 3)
    {
        return "conv1 (WA) must be 1x1 or 3x3";
    }
    if (p.strideA < 1 || p.strideB < 1 || p.downStride < 1 || p.offsetStride < 1)
    {
        return "the strides must be >= 1";
    }
    int32_t const s2 = p.strideA * p.strideB;
    if (p.maskStride1 != p.strideA || p.maskStride2 != s2)
    {
        return "mask_strides must be [stride_a, stride_a * stride_b] (m1 at conv1's positions, m2 at conv2's)";
    }
    if (p.hasDown && p.downStride != s2)
    {
        return "down_stride must be stride_a * stride_b (the identity at the block output's positions)";
    }
    if (!p.hasDown && (s2 != 1 || p.Cout != p.C))
    {
        return "without WD the identity is X: stride_a * stride_b must be 1 and the block must give X's channels";
    }
    if (p.deform && p.offsetStride != s2)
    {
        return "offset_stride must be stride_a * stride_b (the offsets at conv2's positions)";
    }
    if (p.kernelSize != kSAI_BLOCK_KERNEL_SIZE)
    {
        return "kernel_size must be 7: the separable Interpolate builds compile the 7x7 Gaussian in";
    }
    if (p.gridInterval < 1)
    {
        return "grid_interval must be >= 1: the mask builds compile the grid prior in";
    }
    if (!(p.temperature > 0.F) || !(p.sigma1 > 0.F) || !(p.sigma2 > 0.F) || !(p.eps >= 0.F))
    {
        return "temperature, sigma1 and sigma2 must be > 0 and eps >= 0";
    }
    int64_t const h1 = saiBlockOut(p.H, p.strideA);
    int64_t const w1 = saiBlockOut(p.W, p.strideA);
    p.H1 = static_cast<int32_t>(h1);
    p.W1 = static_cast<int32_t>(w1);
    p.H2 = static_cast<int32_t>(saiBlockOut(h1, p.strideB));
    p.W2 = static_cast<int32_t>(saiBlockOut(w1, p.strideB));
    int64_t const biggest = static_cast<int64_t>(p.N) * p.H * p.W * (p.C > p.Cm ? (p.C > p.Cout ? p.C : p.Cout) : p.Cm);
    if (biggest > INT32_MAX)
    {
        return "a tensor of the block has more than 2^31 - 1 elements (the kernels index in int32)";
    }
    return nullptr;
}

SaiKernelCaps const& sparseBlockKernelCaps()
{
    static SaiKernelCaps const caps = [] {
        SaiKernelCaps c;
        c.layouts[static_cast<int32_t>(SaiDataType::kFLOAT)] = saiLayoutBit(SaiLayout::kNHWC);
        c.layouts[static_cast<int32_t>(SaiDataType::kHALF)]
            = saiLayoutBit(SaiLayout::kNHWC8) | saiLayoutBit(SaiLayout::kNHWC16);
        c.layouts[static_cast<int32_t>(SaiDataType::kBF16)] = saiLayoutBit(SaiLayout::kNHWC8);
        c.fp32Mask = true;
        c.nbTactics = 1;
        c.tactics[0] = 1;
        c.tacticNames[0] = "tuned";
        return c;
    }();
    return caps;
}

size_t sparseBlockWorkspaceSize(SaiBlockParams const& p, SaiDataType t)
{
    return saiBlockWorkspace(p, t, nullptr).total;
}

} // namespace sai
