/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * interpolateMath.h: the per-element math of sai::Interpolate (docs/design.md 3.3), shared by the CPU
 * kernels (the PyTorch C++ extension, libsai_ort_ops.so), the plugin's host code and the CPU test build
 * (trt_plugins/tests/cpu_ops.cpp). Header-only host C++, no TensorRT/CUDA types.
 *
 *   feature F [N, C, H, W], mask M [N, 1, H, W], output [N, C, H, W]; k = kernelSize (odd), r = (k-1)/2
 *   K[i,j]  = sigma^2/(2 pi) * exp(-(sigma^2/2) * (i^2 + j^2)),  i, j in [-r, r]
 *   num     = depthwise_conv(F * M, K, zero pad r)
 *   den     = conv(M, K, zero pad r) + eps
 *   out     = M * F + (1 - M) * num / den
 * num/den is only evaluated where M < 1; where M >= 1 the output is M * F (equal to F for M == 1,
 * the only value >= 1 a sampling mask takes).
 *
 * API (namespace sai; T is the storage type: float, __half, at::Half, ...; math in float)
 *   struct SaiInterpParams                 N, C, H, W, kernelSize, sigma, eps (plain fields).
 *   saiInterpParamsValid(p) -> bool        odd kernelSize >= 1, finite sigma, eps >= 0, sizes >= 1.
 *   saiGaussianWeight(sigma, i, j) -> float   K[i, j] (i, j are offsets in [-r, r]).
 *   saiGaussianTable(p, float* table)      fills table[(i+r)*k + (j+r)] = K[i, j] (k*k floats).
 *   saiInterpDen<T>(p, mask, table, n, y, x) -> float    conv(M, K) + eps at one position.
 *   saiInterpNum<T>(p, feature, mask, table, n, c, y, x) -> float   depthwise_conv(F*M, K) there.
 *   saiInterpCombine(m, f, num, den) -> float            M*F + (1-M)*num/den.
 *   saiInterpAt<T>(p, feature, mask, table, n, c, y, x) -> float
 *                                          the full output value of one element (reference path).
 * `table` may be nullptr in saiInterpDen/Num/At: the weights are then recomputed with exp().
 */
#ifndef SAI_TRT_PLUGINS_COMMON_INTERPOLATE_MATH_H
#define SAI_TRT_PLUGINS_COMMON_INTERPOLATE_MATH_H

#include "saiCommon.h"

namespace sai
{

struct SaiInterpParams
{
    int32_t N{1};
    int32_t C{1};
    int32_t H{1};
    int32_t W{1};
    int32_t kernelSize{7};
    float sigma{1.F};
    float eps{1e-5F};
};

//! Largest kernel size the plugins accept (the Gaussian table lives in a fixed-size array).
constexpr int32_t kSAI_MAX_INTERP_KERNEL = 31;

SAI_INLINE bool saiInterpParamsValid(SaiInterpParams const& p)
{
    return p.N >= 0 && p.C >= 1 && p.H >= 1 && p.W >= 1 && p.kernelSize >= 1 && (p.kernelSize % 2) == 1
        && p.kernelSize <= kSAI_MAX_INTERP_KERNEL && (p.sigma == p.sigma) && p.sigma - p.sigma == 0.F
        && p.eps >= 0.F;
}

SAI_INLINE float saiGaussianWeight(float sigma, int32_t i, int32_t j)
{
    float const s2 = sigma * sigma;
    constexpr float kTwoPi = 6.283185307179586F;
    return s2 / kTwoPi * expf(-(s2 * 0.5F) * static_cast<float>(i * i + j * j));
}

SAI_INLINE void saiGaussianTable(SaiInterpParams const& p, float* table)
{
    int32_t const r = (p.kernelSize - 1) / 2;
    for (int32_t i = -r; i <= r; ++i)
    {
        for (int32_t j = -r; j <= r; ++j)
        {
            table[(i + r) * p.kernelSize + (j + r)] = saiGaussianWeight(p.sigma, i, j);
        }
    }
}

SAI_INLINE float saiInterpWeight(SaiInterpParams const& p, float const* table, int32_t i, int32_t j)
{
    int32_t const r = (p.kernelSize - 1) / 2;
    return table != nullptr ? table[(i + r) * p.kernelSize + (j + r)] : saiGaussianWeight(p.sigma, i, j);
}

//! conv(M, K, zero pad r) + eps at position (n, y, x).
template <typename T>
SAI_INLINE float saiInterpDen(SaiInterpParams const& p, T const* mask, float const* table, int32_t n, int32_t y,
    int32_t x)
{
    int32_t const r = (p.kernelSize - 1) / 2;
    T const* m = mask + static_cast<int64_t>(n) * p.H * p.W;
    float acc = 0.F;
    for (int32_t i = -r; i <= r; ++i)
    {
        int32_t const yy = y + i;
        if (yy < 0 || yy >= p.H)
        {
            continue;
        }
        for (int32_t j = -r; j <= r; ++j)
        {
            int32_t const xx = x + j;
            if (xx < 0 || xx >= p.W)
            {
                continue;
            }
            acc += saiInterpWeight(p, table, i, j) * saiToFloat(m[static_cast<int64_t>(yy) * p.W + xx]);
        }
    }
    return acc + p.eps;
}

//! depthwise_conv(F * M, K, zero pad r) at element (n, c, y, x). Taps with M == 0 are skipped, so
//! the feature values there never matter (docs/design.md 3.3), even when they are inf or NaN.
template <typename T>
SAI_INLINE float saiInterpNum(SaiInterpParams const& p, T const* feature, T const* mask, float const* table,
    int32_t n, int32_t c, int32_t y, int32_t x)
{
    int32_t const r = (p.kernelSize - 1) / 2;
    T const* m = mask + static_cast<int64_t>(n) * p.H * p.W;
    T const* f = feature + (static_cast<int64_t>(n) * p.C + c) * p.H * p.W;
    float acc = 0.F;
    for (int32_t i = -r; i <= r; ++i)
    {
        int32_t const yy = y + i;
        if (yy < 0 || yy >= p.H)
        {
            continue;
        }
        for (int32_t j = -r; j <= r; ++j)
        {
            int32_t const xx = x + j;
            if (xx < 0 || xx >= p.W)
            {
                continue;
            }
            int64_t const at = static_cast<int64_t>(yy) * p.W + xx;
            float const mv = saiToFloat(m[at]);
            if (mv != 0.F)
            {
                acc += saiInterpWeight(p, table, i, j) * (saiToFloat(f[at]) * mv);
            }
        }
    }
    return acc;
}

SAI_INLINE float saiInterpCombine(float m, float f, float num, float den)
{
    return m * f + (1.F - m) * (num / den);
}

//! The output value of element (n, c, y, x): M*F where M >= 1, the full formula where M < 1.
template <typename T>
SAI_INLINE float saiInterpAt(SaiInterpParams const& p, T const* feature, T const* mask, float const* table,
    int32_t n, int32_t c, int32_t y, int32_t x)
{
    int64_t const pos = (static_cast<int64_t>(n) * p.H + y) * p.W + x;
    float const m = saiToFloat(mask[pos]);
    float const fv = saiToFloat(feature[(static_cast<int64_t>(n) * p.C + c) * p.H * p.W + static_cast<int64_t>(y) * p.W + x]);
    if (!saiMaskNeedsInterp(m))
    {
        return m * fv;
    }
    float const num = saiInterpNum(p, feature, mask, table, n, c, y, x);
    float const den = saiInterpDen(p, mask, table, n, y, x);
    // M == 0: the feature value there must not matter (it may be garbage): 0 * f is skipped.
    return m == 0.F ? num / den : saiInterpCombine(m, fv, num, den);
}

} // namespace sai

#endif // SAI_TRT_PLUGINS_COMMON_INTERPOLATE_MATH_H
