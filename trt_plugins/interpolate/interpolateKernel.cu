/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * CUDA kernels of sai::Interpolate (docs/design.md 3.3); see interpolateKernel.h for the pipeline. The
 * per-element math comes from common/interpolateMath.h (shared with the CPU build that the test
 * suite checks). Device code also compiles under NVRTC (CUDA 12 check); host launchers are nvcc-only.
 */
#if !defined(__CUDACC_RTC__)
#include "interpolateKernel.h"
#endif
#include "interpolateMath.h"
#include "saiCudaUtils.cuh"

#include <cuda_fp16.h>

namespace sai
{

constexpr int32_t kTableSize = kSAI_MAX_INTERP_KERNEL * kSAI_MAX_INTERP_KERNEL;

//! Fills the block's shared Gaussian table (k*k weights) and synchronises.
__device__ inline void interpLoadTable(SaiInterpParams const& p, float* table)
{
    int32_t const r = (p.kernelSize - 1) / 2;
    int32_t const kk = p.kernelSize * p.kernelSize;
    for (int32_t t = static_cast<int32_t>(threadIdx.x); t < kk; t += static_cast<int32_t>(blockDim.x))
    {
        int32_t const i = t / p.kernelSize - r;
        int32_t const j = t % p.kernelSize - r;
        table[t] = saiGaussianWeight(p.sigma, i, j);
    }
    __syncthreads();
}

//! Compaction of the positions with M < 1; positions with M >= 1 get out = M * F for every channel.
template <typename T>
__global__ void __launch_bounds__(kSAI_THREADS) interpCompactKernel(SaiInterpParams p, T const* __restrict__ feature,
    T const* __restrict__ mask, T* __restrict__ out, int32_t* __restrict__ list, int32_t* __restrict__ count)
{
    int32_t const hw = p.H * p.W;
    int32_t const total = p.N * hw;
    int32_t const stride = static_cast<int32_t>(gridDim.x * blockDim.x);
    for (int32_t base = static_cast<int32_t>(blockIdx.x * blockDim.x); base < total; base += stride)
    {
        int32_t const i = base + static_cast<int32_t>(threadIdx.x);
        float m = 1.F;
        bool needs = false;
        if (i < total)
        {
            m = saiToFloat(mask[i]);
            needs = saiMaskNeedsInterp(m);
        }
        saiCompactAppend(needs, i, list, count);
        if (i < total && !needs)
        {
            int64_t const n = i / hw;
            int64_t const at = i - n * hw;
            for (int32_t c = 0; c < p.C; ++c)
            {
                int64_t const e = (n * p.C + c) * hw + at;
                out[e] = saiFromFloat<T>(m * saiToFloat(feature[e]));
            }
        }
    }
}

//! den = conv(M, K) + eps for every compacted position.
template <typename T>
__global__ void __launch_bounds__(kSAI_THREADS) interpDenKernel(SaiInterpParams p, T const* __restrict__ mask,
    int32_t const* __restrict__ list, int32_t const* __restrict__ count, float* __restrict__ den)
{
    __shared__ float table[kTableSize];
    int32_t const valid = *count;
    if (static_cast<int32_t>(blockIdx.x * blockDim.x) >= valid)
    {
        return; // block-uniform early exit, before the barrier in interpLoadTable
    }
    interpLoadTable(p, table);
    int32_t const hw = p.H * p.W;
    int32_t const stride = static_cast<int32_t>(gridDim.x * blockDim.x);
    for (int32_t i = static_cast<int32_t>(blockIdx.x * blockDim.x + threadIdx.x); i < valid; i += stride)
    {
        int32_t const pos = list[i];
        int32_t const n = pos / hw;
        int32_t const at = pos - n * hw;
        int32_t const y = at / p.W;
        int32_t const x = at - y * p.W;
        den[i] = saiInterpDen(p, mask, table, n, y, x);
    }
}

//! out = M*F + (1-M) * num / den for every compacted position and channel (position fastest).
template <typename T>
__global__ void __launch_bounds__(kSAI_THREADS) interpFillKernel(SaiInterpParams p, T const* __restrict__ feature,
    T const* __restrict__ mask, int32_t const* __restrict__ list, int32_t const* __restrict__ count,
    float const* __restrict__ den, T* __restrict__ out)
{
    __shared__ float table[kTableSize];
    int32_t const valid = *count;
    int64_t const total = static_cast<int64_t>(valid) * p.C;
    if (static_cast<int64_t>(blockIdx.x) * blockDim.x >= total)
    {
        return;
    }
    interpLoadTable(p, table);
    int32_t const hw = p.H * p.W;
    int64_t const stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride)
    {
        int32_t const c = static_cast<int32_t>(i / valid);
        int32_t const row = static_cast<int32_t>(i - static_cast<int64_t>(c) * valid);
        int32_t const pos = list[row];
        int32_t const n = pos / hw;
        int32_t const at = pos - n * hw;
        int32_t const y = at / p.W;
        int32_t const x = at - y * p.W;
        int64_t const e = (static_cast<int64_t>(n) * p.C + c) * hw + at;
        float const m = saiToFloat(mask[pos]);
        float const num = saiInterpNum(p, feature, mask, table, n, c, y, x);
        // M == 0: the feature there must not matter (docs/design.md 3.3), so it is not read
        float const v = m == 0.F ? num / den[row] : saiInterpCombine(m, saiToFloat(feature[e]), num, den[row]);
        out[e] = saiFromFloat<T>(v);
    }
}

template __global__ void interpCompactKernel<float>(
    SaiInterpParams, float const*, float const*, float*, int32_t*, int32_t*);
template __global__ void interpCompactKernel<__half>(
    SaiInterpParams, __half const*, __half const*, __half*, int32_t*, int32_t*);
template __global__ void interpDenKernel<float>(SaiInterpParams, float const*, int32_t const*, int32_t const*, float*);
template __global__ void interpDenKernel<__half>(
    SaiInterpParams, __half const*, int32_t const*, int32_t const*, float*);
template __global__ void interpFillKernel<float>(
    SaiInterpParams, float const*, float const*, int32_t const*, int32_t const*, float const*, float*);
template __global__ void interpFillKernel<__half>(
    SaiInterpParams, __half const*, __half const*, int32_t const*, int32_t const*, float const*, __half*);

#if !defined(__CUDACC_RTC__)

namespace
{

constexpr int64_t kAlign = 256;

struct InterpWorkspaceLayout
{
    int64_t countOffset{0};
    int64_t listOffset{0};
    int64_t denOffset{0};
    int64_t total{0};
};

InterpWorkspaceLayout interpLayout(SaiInterpParams const& p)
{
    InterpWorkspaceLayout l;
    int64_t const positions = static_cast<int64_t>(p.N) * p.H * p.W;
    l.countOffset = 0;
    l.listOffset = kAlign;
    l.denOffset = l.listOffset + saiAlignUp(positions * 4, kAlign);
    l.total = l.denOffset + saiAlignUp(positions * 4, kAlign);
    return l;
}

int32_t gridFor(int64_t work)
{
    int64_t const blocks = saiCeilDiv(work, kSAI_THREADS);
    return static_cast<int32_t>(blocks < 1 ? 1 : (blocks > kSAI_MAX_GRID_BLOCKS ? kSAI_MAX_GRID_BLOCKS : blocks));
}

template <typename T>
cudaError_t interpLaunchTyped(SaiInterpParams const& p, void const* featureV, void const* maskV, void* outV,
    void* workspace, size_t workspaceSize, cudaStream_t stream)
{
    int64_t const positions = static_cast<int64_t>(p.N) * p.H * p.W;
    if (positions == 0)
    {
        return cudaSuccess;
    }
    InterpWorkspaceLayout const l = interpLayout(p);
    if (workspace == nullptr || static_cast<int64_t>(workspaceSize) < l.total)
    {
        return cudaErrorInvalidValue;
    }
    auto* ws = static_cast<char*>(workspace);
    auto* count = reinterpret_cast<int32_t*>(ws + l.countOffset);
    auto* list = reinterpret_cast<int32_t*>(ws + l.listOffset);
    auto* den = reinterpret_cast<float*>(ws + l.denOffset);
    auto const* feature = static_cast<T const*>(featureV);
    auto const* mask = static_cast<T const*>(maskV);
    auto* out = static_cast<T*>(outV);

    cudaError_t const err = cudaMemsetAsync(count, 0, sizeof(int32_t), stream);
    if (err != cudaSuccess)
    {
        return err;
    }
    interpCompactKernel<T><<<gridFor(positions), kSAI_THREADS, 0, stream>>>(p, feature, mask, out, list, count);
    interpDenKernel<T><<<gridFor(positions), kSAI_THREADS, 0, stream>>>(p, mask, list, count, den);
    interpFillKernel<T><<<gridFor(positions * p.C), kSAI_THREADS, 0, stream>>>(
        p, feature, mask, list, count, den, out);
    return cudaGetLastError();
}

} // namespace

size_t interpolateWorkspaceSize(SaiInterpParams const& p, SaiDataType /*type*/)
{
    return static_cast<size_t>(interpLayout(p).total);
}

SaiKernelCaps const& interpolateKernelCaps()
{
    // the SIMT kernels: dense NCHW FP32/FP16, mask of the feature's type, one tactic
    static SaiKernelCaps const caps = [] {
        SaiKernelCaps c;
        c.layouts[static_cast<int32_t>(SaiDataType::kFLOAT)] = saiLayoutBit(SaiLayout::kNCHW);
        c.layouts[static_cast<int32_t>(SaiDataType::kHALF)] = saiLayoutBit(SaiLayout::kNCHW);
        c.nbTactics = 1;
        c.tactics[0] = 1;
        c.tacticNames[0] = "simt";
        return c;
    }();
    return caps;
}

cudaError_t interpolateLaunch(SaiInterpParams const& p, SaiDataType type, SaiInterpLayouts const& layouts,
    int32_t tactic, void const* feature, void const* mask, void* out, void* workspace, size_t workspaceSize,
    cudaStream_t stream)
{
    SaiKernelCaps const& caps = interpolateKernelCaps();
    for (SaiTensorLayout const* l : {&layouts.feature, &layouts.mask, &layouts.out})
    {
        if (l->type != type || !saiCapsLayout(caps, type, l->layout))
        {
            return cudaErrorNotSupported;
        }
    }
    if (tactic != 0 && !saiCapsTactic(caps, tactic))
    {
        return cudaErrorInvalidValue;
    }
    if (type == SaiDataType::kHALF)
    {
        return interpLaunchTyped<__half>(p, feature, mask, out, workspace, workspaceSize, stream);
    }
    return interpLaunchTyped<float>(p, feature, mask, out, workspace, workspaceSize, stream);
}

#endif // !__CUDACC_RTC__

} // namespace sai
