/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * roiAlignV0Math.h: the math of sai::RoiAlignV0 (docs/design.md 9), mmdetection v0.6's non-aligned
 * RoIAlign, for every C++ implementation of it (the plugin's launchers and the CPU reference used by the
 * glue harness). No TensorRT or CUDA runtime types; __host__ __device__ under nvcc.
 *
 * One output value [r, c, ph, pw] of a RoI (x1, y1, x2, y2) in image pixels on the map of batch index b:
 *   start = (x1, y1) * scale, end = (x2 + 1, y2 + 1) * scale, size = max(end - start, 0) (v0.6: no
 *   clamp to 1, unlike ONNX RoiAlign / ROIAlign_TRT), bin = size / out;
 *   sample (iy, ix) of the n x n of a bin: start + p * bin + (i + 0.5) * bin / n;
 *   a sample outside [-1, H] x [-1, W] is 0; else clamped at 0, its low cell floor()ed and kept at most
 *   H - 1 (then the sample sits on it), bilinear over the 4 taps; the bin is the mean of its n^2 samples.
 * The float32 operations and their order are v0.6's roi_align_kernel.cu's.
 */
#ifndef SAI_TRT_PLUGINS_ROI_ALIGN_V0_MATH_H
#define SAI_TRT_PLUGINS_ROI_ALIGN_V0_MATH_H

#include <cstdint>

#if defined(__CUDACC__)
#define SAI_ROI_HD __host__ __device__
#else
#define SAI_ROI_HD
#endif

namespace sai
{

constexpr int32_t kSAI_ROI_ALIGN_MAX_OUT = 64;      //!< output_size 1..64
constexpr int32_t kSAI_ROI_ALIGN_MAX_SAMPLING = 16; //!< sampling_ratio 1..16 (v0.6's adaptive 0 is not taken)

//! Shapes and attributes of one RoiAlignV0 call: X [N, C, H, W], rois [R, 4], batch [R], Y [R, C, out, out].
struct SaiRoiAlignParams
{
    int32_t N{0};
    int32_t C{0};
    int32_t H{0};
    int32_t W{0};
    int32_t R{0};
    int32_t outSize{7};
    int32_t samplingRatio{2};
    float spatialScale{0.25F};
};

inline bool saiRoiAlignParamsValid(SaiRoiAlignParams const& p)
{
    bool const attrs = p.outSize >= 1 && p.outSize <= kSAI_ROI_ALIGN_MAX_OUT && p.samplingRatio >= 1
        && p.samplingRatio <= kSAI_ROI_ALIGN_MAX_SAMPLING && p.spatialScale > 0.F
        && p.spatialScale < 3.0e38F; // finite
    bool const dims = p.N >= 1 && p.C >= 1 && p.H >= 1 && p.W >= 1 && p.R >= 0;
    // every offset of X and Y fits an int64 product, and a plane index an int32
    bool const sizes = static_cast<int64_t>(p.H) * p.W <= INT32_MAX;
    return attrs && dims && sizes;
}

//! v0.6 bilinear_interpolate on one channel plane [H, W].
SAI_ROI_HD inline float saiRoiAlignV0Bilinear(float const* plane, int32_t H, int32_t W, float y, float x)
{
    if (y < -1.0F || y > static_cast<float>(H) || x < -1.0F || x > static_cast<float>(W))
    {
        return 0.F;
    }
    if (y <= 0.F)
    {
        y = 0.F;
    }
    if (x <= 0.F)
    {
        x = 0.F;
    }
    int32_t yLow = static_cast<int32_t>(y);
    int32_t xLow = static_cast<int32_t>(x);
    int32_t yHigh;
    int32_t xHigh;
    if (yLow >= H - 1)
    {
        yHigh = yLow = H - 1;
        y = static_cast<float>(yLow);
    }
    else
    {
        yHigh = yLow + 1;
    }
    if (xLow >= W - 1)
    {
        xHigh = xLow = W - 1;
        x = static_cast<float>(xLow);
    }
    else
    {
        xHigh = xLow + 1;
    }
    float const ly = y - static_cast<float>(yLow);
    float const lx = x - static_cast<float>(xLow);
    float const hy = 1.F - ly;
    float const hx = 1.F - lx;
    float const lt = plane[yLow * W + xLow];
    float const rt = plane[yLow * W + xHigh];
    float const lb = plane[yHigh * W + xLow];
    float const rb = plane[yHigh * W + xHigh];
    return hy * hx * lt + hy * lx * rt + ly * hx * lb + ly * lx * rb;
}

//! One output bin (ph, pw) of RoI `roi` (x1, y1, x2, y2) on the channel plane `plane` [H, W].
SAI_ROI_HD inline float saiRoiAlignV0Bin(float const* plane, int32_t H, int32_t W, float const* roi, float scale,
    int32_t outSize, int32_t n, int32_t ph, int32_t pw)
{
    float const startW = roi[0] * scale;
    float const startH = roi[1] * scale;
    float const endW = (roi[2] + 1.F) * scale;
    float const endH = (roi[3] + 1.F) * scale;
    float const roiW = endW - startW > 0.F ? endW - startW : 0.F;
    float const roiH = endH - startH > 0.F ? endH - startH : 0.F;
    float const binH = roiH / static_cast<float>(outSize);
    float const binW = roiW / static_cast<float>(outSize);
    float acc = 0.F;
    for (int32_t iy = 0; iy < n; ++iy)
    {
        float const y = startH + static_cast<float>(ph) * binH
            + (static_cast<float>(iy) + 0.5F) * binH / static_cast<float>(n);
        for (int32_t ix = 0; ix < n; ++ix)
        {
            float const x = startW + static_cast<float>(pw) * binW
                + (static_cast<float>(ix) + 0.5F) * binW / static_cast<float>(n);
            acc += saiRoiAlignV0Bilinear(plane, H, W, y, x);
        }
    }
    return acc / static_cast<float>(n * n);
}

//! The CPU reference: Y [R, C, out, out] from X [N, C, H, W] (NCHW, contiguous), rois [R, 4] and the batch
//! indices [R]; a RoI whose batch index is outside 0..N-1 gives zeros (never an out-of-bounds read).
template <typename IndexT>
inline void saiRoiAlignV0Reference(SaiRoiAlignParams const& p, float const* x, float const* rois,
    IndexT const* batch, float* y)
{
    int64_t const plane = static_cast<int64_t>(p.H) * p.W;
    int64_t const outPlane = static_cast<int64_t>(p.outSize) * p.outSize;
    for (int32_t r = 0; r < p.R; ++r)
    {
        int64_t const b = static_cast<int64_t>(batch[r]);
        bool const valid = b >= 0 && b < p.N;
        for (int32_t c = 0; c < p.C; ++c)
        {
            float* out = y + (static_cast<int64_t>(r) * p.C + c) * outPlane;
            float const* src = valid ? x + (b * p.C + c) * plane : x;
            for (int32_t ph = 0; ph < p.outSize; ++ph)
            {
                for (int32_t pw = 0; pw < p.outSize; ++pw)
                {
                    out[ph * p.outSize + pw] = valid ? saiRoiAlignV0Bin(src, p.H, p.W, rois + 4 * r,
                                                   p.spatialScale, p.outSize, p.samplingRatio, ph, pw)
                                                     : 0.F;
                }
            }
        }
    }
}

} // namespace sai

#endif // SAI_TRT_PLUGINS_ROI_ALIGN_V0_MATH_H
