/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * sparseSampleConvMath.h: the per-element math of sai::SparseSampleConv (docs/design.md 3.2), shared by
 * the CPU kernels (the PyTorch C++ extension, libsai_ort_ops.so), the plugin's host code and the CPU test
 * build (trt_plugins/tests/cpu_ops.cpp). Header-only host C++, no TensorRT/CUDA types.
 *
 * Tensors are NCHW, contiguous:
 *   x      [N, C, H, W]                      input
 *   mask   [N, 1, Ho, Wo]                    computed where mask > 0, output exactly 0 elsewhere
 *   weight [Cout, C/groups, kh, kw]
 *   bias   [Cout] or nullptr
 *   offset [N, 2*deformGroups*kh*kw, Ho, Wo] or nullptr; channel g*2*K + 2*k + {0: dy, 1: dx}
 *          for deform group g and tap k = ky*kw + kx (ONNX DeformConv / torchvision layout)
 *   y      [N, Cout, Ho, Wo]
 *
 * API (namespace sai; T is the storage type: float, __half, at::Half, ...; math in float)
 *   struct SaiConvParams            the shapes and attributes above (plain ints; see fields).
 *   saiConvParamsOf(x, w, strides, pads, dilations, groups, deformGroups, activation) -> SaiConvParams
 *                                                  the one filler of the "inputs" part (every user).
 *   saiConvOutputSize(size, k, stride, padBegin, padEnd, dilation) -> int  (floor rule).
 *   saiConvFinalize(SaiConvParams&) fills Ho, Wo, Cin/Cout per group, Kdim; returns false if invalid.
 *   saiConvTapCoord(p, oy, ox, ky, kx, &iy, &ix)   integer input coordinates of one kernel tap.
 *   saiBilinear<T>(plane, H, W, y, x) -> float     torchvision/ONNX DeformConv bilinear sample:
 *                                                  0 if y <= -1, y >= H, x <= -1 or x >= W; each
 *                                                  corner contributes only if inside the image.
 *   saiConvColumnIndex / saiConvColumnDecode      column r of an im2col row <-> (c_in_group, ky, kx):
 *                                                  r = (c_local*kh + ky)*kw + kx, the weight layout.
 *   saiConvGather<T>(p, x, offset, n, oy, ox, c, ky, kx) -> float
 *                                                  the im2col element: input channel c (absolute)
 *                                                  at tap (ky, kx) for output position (n, oy, ox);
 *                                                  zero padding, bilinear when offset != nullptr.
 *   saiConvEpilogue<T>(p, acc, bias, co) -> float  acc + bias[co] (if any), then the activation.
 *   saiConvAt<T>(p, x, weight, bias, offset, n, co, oy, ox) -> float
 *                                                  the full output value (before masking) of one
 *                                                  element: a direct dot product (reference path).
 *   saiConvOutputMasked<T>(p, ..., mask, n, co, oy, ox) -> float
 *                                                  docs/design.md 3.2 for one element: saiConvAt where
 *                                                  mask > 0, else exactly 0.
 *   saiPositionEncode / saiPositionDecode          linear active-position index n*Ho*Wo + oy*Wo + ox.
 */
#ifndef SAI_TRT_PLUGINS_COMMON_SPARSE_SAMPLE_CONV_MATH_H
#define SAI_TRT_PLUGINS_COMMON_SPARSE_SAMPLE_CONV_MATH_H

#include "saiCommon.h"

namespace sai
{

//! Shapes and attributes of one SparseSampleConv. Fill the "inputs" part, then saiConvFinalize().
struct SaiConvParams
{
    // inputs
    int32_t N{1};
    int32_t C{1};    //!< input channels
    int32_t H{1};
    int32_t W{1};
    int32_t Cout{1}; //!< output channels (weight dim 0)
    int32_t kh{1};
    int32_t kw{1};
    int32_t strideH{1};
    int32_t strideW{1};
    int32_t padTop{0};
    int32_t padLeft{0};
    int32_t padBottom{0};
    int32_t padRight{0};
    int32_t dilationH{1};
    int32_t dilationW{1};
    int32_t groups{1};
    int32_t deformGroups{1};
    int32_t activation{kSAI_ACT_NONE};
    // derived by saiConvFinalize
    int32_t Ho{0};
    int32_t Wo{0};
    int32_t cinPerGroup{0};  //!< C / groups (weight dim 1)
    int32_t coutPerGroup{0}; //!< Cout / groups
    int32_t kernelTaps{0};   //!< kh * kw
    int32_t kdim{0};         //!< cinPerGroup * kh * kw: GEMM reduction length of one group
};

SAI_INLINE int32_t saiConvOutputSize(
    int32_t size, int32_t k, int32_t stride, int32_t padBegin, int32_t padEnd, int32_t dilation)
{
    int32_t const span = size + padBegin + padEnd - dilation * (k - 1) - 1;
    // floor division (span may be negative for too small inputs: then the result is < 1)
    int32_t const q = span >= 0 ? span / stride : -((-span + stride - 1) / stride);
    return q + 1;
}

//! The "inputs" part of SaiConvParams (the one filler: onnxruntime op, TensorRT plugin, CPU extension,
//! tests): x = X's dims [N, C, H, W]; w = W's dims [Cout, C/group, kh, kw] (w[1] is not read: the
//! caller compares it with cinPerGroup after saiConvFinalize); strides [2]; pads [4] top, left,
//! bottom, right; dilations [2]. Values are narrowed to int32 (callers bound them first).
template <typename TX, typename TW, typename TA>
SAI_INLINE SaiConvParams saiConvParamsOf(TX const* x, TW const* w, TA const* strides, TA const* pads,
    TA const* dilations, int64_t groups, int64_t deformGroups, int32_t activation)
{
    SaiConvParams p;
    p.N = static_cast<int32_t>(x[0]);
    p.C = static_cast<int32_t>(x[1]);
    p.H = static_cast<int32_t>(x[2]);
    p.W = static_cast<int32_t>(x[3]);
    p.Cout = static_cast<int32_t>(w[0]);
    p.kh = static_cast<int32_t>(w[2]);
    p.kw = static_cast<int32_t>(w[3]);
    p.strideH = static_cast<int32_t>(strides[0]);
    p.strideW = static_cast<int32_t>(strides[1]);
    p.padTop = static_cast<int32_t>(pads[0]);
    p.padLeft = static_cast<int32_t>(pads[1]);
    p.padBottom = static_cast<int32_t>(pads[2]);
    p.padRight = static_cast<int32_t>(pads[3]);
    p.dilationH = static_cast<int32_t>(dilations[0]);
    p.dilationW = static_cast<int32_t>(dilations[1]);
    p.groups = static_cast<int32_t>(groups);
    p.deformGroups = static_cast<int32_t>(deformGroups);
    p.activation = activation;
    return p;
}

//! Derives Ho, Wo and per-group sizes; false when the attributes or shapes are inconsistent.
SAI_INLINE bool saiConvFinalize(SaiConvParams& p)
{
    if (p.N < 0 || p.C < 1 || p.H < 1 || p.W < 1 || p.Cout < 1 || p.kh < 1 || p.kw < 1 || p.strideH < 1
        || p.strideW < 1 || p.dilationH < 1 || p.dilationW < 1 || p.padTop < 0 || p.padLeft < 0
        || p.padBottom < 0 || p.padRight < 0 || p.groups < 1 || p.deformGroups < 1)
    {
        return false;
    }
    if (p.C % p.groups != 0 || p.Cout % p.groups != 0 || p.C % p.deformGroups != 0)
    {
        return false;
    }
    p.Ho = saiConvOutputSize(p.H, p.kh, p.strideH, p.padTop, p.padBottom, p.dilationH);
    p.Wo = saiConvOutputSize(p.W, p.kw, p.strideW, p.padLeft, p.padRight, p.dilationW);
    p.cinPerGroup = p.C / p.groups;
    p.coutPerGroup = p.Cout / p.groups;
    p.kernelTaps = p.kh * p.kw;
    p.kdim = p.cinPerGroup * p.kernelTaps;
    return p.Ho >= 1 && p.Wo >= 1;
}

SAI_INLINE int64_t saiPositionEncode(SaiConvParams const& p, int32_t n, int32_t oy, int32_t ox)
{
    return (static_cast<int64_t>(n) * p.Ho + oy) * p.Wo + ox;
}

SAI_INLINE void saiPositionDecode(SaiConvParams const& p, int64_t pos, int32_t* n, int32_t* oy, int32_t* ox)
{
    int64_t const hw = static_cast<int64_t>(p.Ho) * p.Wo;
    *n = static_cast<int32_t>(pos / hw);
    int64_t const r = pos - static_cast<int64_t>(*n) * hw;
    *oy = static_cast<int32_t>(r / p.Wo);
    *ox = static_cast<int32_t>(r - static_cast<int64_t>(*oy) * p.Wo);
}

//! Integer input coordinates of tap (ky, kx) of output position (oy, ox), before any offset.
SAI_INLINE void saiConvTapCoord(
    SaiConvParams const& p, int32_t oy, int32_t ox, int32_t ky, int32_t kx, int32_t* iy, int32_t* ix)
{
    *iy = oy * p.strideH - p.padTop + ky * p.dilationH;
    *ix = ox * p.strideW - p.padLeft + kx * p.dilationW;
}

//! Column of an im2col row (one group's slice) for (channel within group, ky, kx).
SAI_INLINE int32_t saiConvColumnIndex(SaiConvParams const& p, int32_t cLocal, int32_t ky, int32_t kx)
{
    return (cLocal * p.kh + ky) * p.kw + kx;
}

SAI_INLINE void saiConvColumnDecode(SaiConvParams const& p, int32_t r, int32_t* cLocal, int32_t* ky, int32_t* kx)
{
    *cLocal = r / p.kernelTaps;
    int32_t const k = r - *cLocal * p.kernelTaps;
    *ky = k / p.kw;
    *kx = k - *ky * p.kw;
}

//! Bilinear sample of one H x W plane at real coordinates (y, x); torchvision/ONNX DeformConv rules.
template <typename T>
SAI_INLINE float saiBilinear(T const* plane, int32_t H, int32_t W, float y, float x)
{
    if (!(y > -1.F) || !(y < static_cast<float>(H)) || !(x > -1.F) || !(x < static_cast<float>(W)))
    {
        return 0.F; // also catches NaN offsets
    }
    float const y0f = floorf(y);
    float const x0f = floorf(x);
    int32_t const y0 = static_cast<int32_t>(y0f);
    int32_t const x0 = static_cast<int32_t>(x0f);
    int32_t const y1 = y0 + 1;
    int32_t const x1 = x0 + 1;
    float const ly = y - y0f;
    float const lx = x - x0f;
    float const hy = 1.F - ly;
    float const hx = 1.F - lx;
    bool const y0ok = y0 >= 0;
    bool const y1ok = y1 <= H - 1;
    bool const x0ok = x0 >= 0;
    bool const x1ok = x1 <= W - 1;
    float v00 = (y0ok && x0ok) ? saiToFloat(plane[static_cast<int64_t>(y0) * W + x0]) : 0.F;
    float v01 = (y0ok && x1ok) ? saiToFloat(plane[static_cast<int64_t>(y0) * W + x1]) : 0.F;
    float v10 = (y1ok && x0ok) ? saiToFloat(plane[static_cast<int64_t>(y1) * W + x0]) : 0.F;
    float v11 = (y1ok && x1ok) ? saiToFloat(plane[static_cast<int64_t>(y1) * W + x1]) : 0.F;
    return hy * hx * v00 + hy * lx * v01 + ly * hx * v10 + ly * lx * v11;
}

//! The im2col element: input channel c (absolute) at tap (ky, kx) of output position (n, oy, ox).
template <typename T>
SAI_INLINE float saiConvGather(SaiConvParams const& p, T const* x, T const* offset, int32_t n, int32_t oy,
    int32_t ox, int32_t c, int32_t ky, int32_t kx)
{
    int32_t iy;
    int32_t ix;
    saiConvTapCoord(p, oy, ox, ky, kx, &iy, &ix);
    T const* plane = x + (static_cast<int64_t>(n) * p.C + c) * p.H * p.W;
    if (offset == nullptr)
    {
        if (iy < 0 || iy >= p.H || ix < 0 || ix >= p.W)
        {
            return 0.F;
        }
        return saiToFloat(plane[static_cast<int64_t>(iy) * p.W + ix]);
    }
    int32_t const g = c / (p.C / p.deformGroups);
    int32_t const k = ky * p.kw + kx;
    int64_t const hwo = static_cast<int64_t>(p.Ho) * p.Wo;
    int64_t const chY = static_cast<int64_t>(n) * 2 * p.deformGroups * p.kernelTaps
        + static_cast<int64_t>(g) * 2 * p.kernelTaps + 2 * k;
    int64_t const at = static_cast<int64_t>(oy) * p.Wo + ox;
    float const dy = saiToFloat(offset[chY * hwo + at]);
    float const dx = saiToFloat(offset[(chY + 1) * hwo + at]);
    return saiBilinear(plane, p.H, p.W, static_cast<float>(iy) + dy, static_cast<float>(ix) + dx);
}

//! acc + bias[co] (when bias != nullptr), then the activation.
template <typename T>
SAI_INLINE float saiConvEpilogue(SaiConvParams const& p, float acc, T const* bias, int32_t co)
{
    if (bias != nullptr)
    {
        acc += saiToFloat(bias[co]);
    }
    return saiApplyActivation(acc, p.activation);
}

//! One output element before masking, by a direct dot product over the group's taps.
template <typename T>
SAI_INLINE float saiConvAt(SaiConvParams const& p, T const* x, T const* weight, T const* bias, T const* offset,
    int32_t n, int32_t co, int32_t oy, int32_t ox)
{
    int32_t const g = co / p.coutPerGroup;
    T const* wrow = weight + static_cast<int64_t>(co) * p.kdim;
    float acc = 0.F;
    for (int32_t r = 0; r < p.kdim; ++r)
    {
        int32_t cl;
        int32_t ky;
        int32_t kx;
        saiConvColumnDecode(p, r, &cl, &ky, &kx);
        acc += saiToFloat(wrow[r]) * saiConvGather(p, x, offset, n, oy, ox, g * p.cinPerGroup + cl, ky, kx);
    }
    return saiConvEpilogue(p, acc, bias, co);
}

//! docs/design.md 3.2 for one output element: the convolution where mask > 0, exactly 0 elsewhere.
template <typename T>
SAI_INLINE float saiConvOutputMasked(SaiConvParams const& p, T const* x, T const* mask, T const* weight,
    T const* bias, T const* offset, int32_t n, int32_t co, int32_t oy, int32_t ox)
{
    float const m = saiToFloat(mask[saiPositionEncode(p, n, oy, ox)]);
    if (!saiMaskActive(m))
    {
        return 0.F;
    }
    return saiConvAt(p, x, weight, bias, offset, n, co, oy, ox);
}

} // namespace sai

#endif // SAI_TRT_PLUGINS_COMMON_SPARSE_SAMPLE_CONV_MATH_H
