/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * cpu_ops.cpp: a CPU build of the shared kernel math (models/csrc/common), loaded with ctypes by
 * tests/test_trt_math.py and compared there with independent references (PyTorch conv, ONNX
 * Runtime DeformConv, the docs/design.md 3.3 formula).
 *
 * Two evaluations of SparseSampleConv:
 *   sai_cpu_ssc_direct_f32    saiConvOutputMasked per output element (the per-element reference)
 *   sai_cpu_ssc_pipeline_f32  the CUDA pipeline replayed on the CPU with the same buffer layouts:
 *                             compaction -> chunked im2col (saiConvGather) -> grouped GEMM with the
 *                             launcher's strides -> epilogue + scatter into a zeroed output
 * and of Interpolate:
 *   sai_cpu_interp_direct_f32    saiInterpAt per element
 *   sai_cpu_interp_pipeline_f32  compaction of M < 1 -> den per position -> num per channel, as the kernels
 *
 * Conv int parameters (array of 18): N, C, H, W, Cout, kh, kw, strideH, strideW, padTop, padLeft,
 * padBottom, padRight, dilationH, dilationW, groups, deformGroups, activation. Returns 0 on
 * success, -1 for invalid parameters.
 */
#include "interpolateMath.h"
#include "sparseSampleConvMath.h"

#include <cstdint>
#include <vector>

using namespace sai;

namespace
{

bool makeParams(int32_t const* ip, SaiConvParams& p)
{
    int32_t const w[4] = {ip[4], 0, ip[5], ip[6]}; // Cout, (C/group: not read), kh, kw
    p = saiConvParamsOf(ip, w, ip + 7, ip + 9, ip + 13, ip[15], ip[16], ip[17]);
    return saiConvFinalize(p);
}

} // namespace

extern "C"
{

//! Output size along one axis (for the test to check the floor rule).
int32_t sai_cpu_conv_output_size(int32_t size, int32_t k, int32_t stride, int32_t padBegin, int32_t padEnd, int32_t dil)
{
    return saiConvOutputSize(size, k, stride, padBegin, padEnd, dil);
}

//! Bilinear sample of one plane (for direct tests of the torchvision boundary rules).
float sai_cpu_bilinear_f32(float const* plane, int32_t H, int32_t W, float y, float x)
{
    return saiBilinear(plane, H, W, y, x);
}

float sai_cpu_gaussian_weight(float sigma, int32_t i, int32_t j)
{
    return saiGaussianWeight(sigma, i, j);
}

int32_t sai_cpu_ssc_direct_f32(int32_t const* ip, float const* x, float const* mask, float const* weight,
    float const* bias, float const* offset, float* y)
{
    SaiConvParams p;
    if (!makeParams(ip, p))
    {
        return -1;
    }
    for (int32_t n = 0; n < p.N; ++n)
    {
        for (int32_t co = 0; co < p.Cout; ++co)
        {
            for (int32_t oy = 0; oy < p.Ho; ++oy)
            {
                for (int32_t ox = 0; ox < p.Wo; ++ox)
                {
                    y[((static_cast<int64_t>(n) * p.Cout + co) * p.Ho + oy) * p.Wo + ox]
                        = saiConvOutputMasked(p, x, mask, weight, bias, offset, n, co, oy, ox);
                }
            }
        }
    }
    return 0;
}

//! The CUDA pipeline of sparseSampleConvLaunch, step by step on the CPU (chunkRows >= 1).
//! `activeCount` receives the compacted count.
int32_t sai_cpu_ssc_pipeline_f32(int32_t const* ip, float const* x, float const* mask, float const* weight,
    float const* bias, float const* offset, float* y, int32_t chunkRows, int32_t* activeCount)
{
    SaiConvParams p;
    if (!makeParams(ip, p) || chunkRows < 1)
    {
        return -1;
    }
    int64_t const positions = static_cast<int64_t>(p.N) * p.Ho * p.Wo;
    for (int64_t i = 0; i < positions * p.Cout; ++i)
    {
        y[i] = 0.F;
    }
    // compaction (reverse order, to show that consumers do not depend on the list order)
    std::vector<int32_t> list;
    for (int64_t i = positions - 1; i >= 0; --i)
    {
        if (saiMaskActive(mask[i]))
        {
            list.push_back(static_cast<int32_t>(i));
        }
    }
    int32_t const count = static_cast<int32_t>(list.size());
    *activeCount = count;
    int64_t const width = static_cast<int64_t>(p.C) * p.kernelTaps;
    std::vector<float> cols(static_cast<size_t>(chunkRows * width));
    std::vector<float> acc(static_cast<size_t>(chunkRows) * p.Cout);
    int64_t const hwo = static_cast<int64_t>(p.Ho) * p.Wo;
    for (int32_t rowStart = 0; rowStart < positions; rowStart += chunkRows)
    {
        int32_t const maxRows = chunkRows < positions - rowStart ? chunkRows : static_cast<int32_t>(positions - rowStart);
        int32_t const valid = maxRows < count - rowStart ? maxRows : count - rowStart;
        if (valid <= 0)
        {
            continue; // the device kernels exit early here
        }
        // gather: cols[row][c*taps + k]
        for (int64_t i = 0; i < valid * width; ++i)
        {
            int32_t const row = static_cast<int32_t>(i / width);
            int32_t const col = static_cast<int32_t>(i % width);
            int32_t n;
            int32_t oy;
            int32_t ox;
            saiPositionDecode(p, list[rowStart + row], &n, &oy, &ox);
            int32_t const c = col / p.kernelTaps;
            int32_t const k = col % p.kernelTaps;
            cols[i] = saiConvGather(p, x, offset, n, oy, ox, c, k / p.kw, k % p.kw);
        }
        // GEMM with the launcher's arguments: batch = groups, n = coutPG, k = kdim,
        // A = cols (lda = width, strideA = kdim), B = weight (ldb = kdim, strideB = coutPG*kdim),
        // C = acc (ldc = Cout, strideC = coutPG)
        for (int32_t b = 0; b < p.groups; ++b)
        {
            float const* A = cols.data() + static_cast<int64_t>(b) * p.kdim;
            float const* B = weight + static_cast<int64_t>(b) * p.coutPerGroup * p.kdim;
            float* C = acc.data() + static_cast<int64_t>(b) * p.coutPerGroup;
            for (int32_t r = 0; r < valid; ++r)
            {
                for (int32_t j = 0; j < p.coutPerGroup; ++j)
                {
                    float s = 0.F;
                    for (int32_t kk = 0; kk < p.kdim; ++kk)
                    {
                        s += A[r * width + kk] * B[static_cast<int64_t>(j) * p.kdim + kk];
                    }
                    C[static_cast<int64_t>(r) * p.Cout + j] = s;
                }
            }
        }
        // epilogue + scatter
        for (int64_t i = 0; i < static_cast<int64_t>(valid) * p.Cout; ++i)
        {
            int32_t const co = static_cast<int32_t>(i / valid);
            int32_t const row = static_cast<int32_t>(i % valid);
            int32_t const pos = list[rowStart + row];
            int64_t const nIdx = pos / hwo;
            int64_t const at = pos - nIdx * hwo;
            y[(nIdx * p.Cout + co) * hwo + at] = saiConvEpilogue(p, acc[static_cast<int64_t>(row) * p.Cout + co], bias, co);
        }
    }
    return 0;
}

int32_t sai_cpu_interp_direct_f32(int32_t N, int32_t C, int32_t H, int32_t W, int32_t kernelSize, float sigma,
    float eps, float const* feature, float const* mask, float* out)
{
    SaiInterpParams p{N, C, H, W, kernelSize, sigma, eps};
    if (!saiInterpParamsValid(p))
    {
        return -1;
    }
    std::vector<float> table(static_cast<size_t>(kernelSize * kernelSize));
    saiGaussianTable(p, table.data());
    for (int32_t n = 0; n < N; ++n)
    {
        for (int32_t c = 0; c < C; ++c)
        {
            for (int32_t yy = 0; yy < H; ++yy)
            {
                for (int32_t xx = 0; xx < W; ++xx)
                {
                    out[((static_cast<int64_t>(n) * C + c) * H + yy) * W + xx]
                        = saiInterpAt(p, feature, mask, table.data(), n, c, yy, xx);
                }
            }
        }
    }
    return 0;
}

//! The CUDA pipeline of interpolateLaunch on the CPU (weights recomputed, no table: table == nullptr path).
int32_t sai_cpu_interp_pipeline_f32(int32_t N, int32_t C, int32_t H, int32_t W, int32_t kernelSize, float sigma,
    float eps, float const* feature, float const* mask, float* out, int32_t* interpCount)
{
    SaiInterpParams p{N, C, H, W, kernelSize, sigma, eps};
    if (!saiInterpParamsValid(p))
    {
        return -1;
    }
    int32_t const hw = H * W;
    std::vector<int32_t> list;
    for (int32_t i = N * hw - 1; i >= 0; --i)
    {
        float const m = mask[i];
        if (saiMaskNeedsInterp(m))
        {
            list.push_back(i);
            continue;
        }
        int64_t const n = i / hw;
        int64_t const at = i - n * hw;
        for (int32_t c = 0; c < C; ++c)
        {
            int64_t const e = (n * C + c) * hw + at;
            out[e] = m * feature[e];
        }
    }
    int32_t const valid = static_cast<int32_t>(list.size());
    *interpCount = valid;
    std::vector<float> den(list.size());
    for (int32_t i = 0; i < valid; ++i)
    {
        int32_t const n = list[i] / hw;
        int32_t const at = list[i] - n * hw;
        den[i] = saiInterpDen(p, mask, static_cast<float const*>(nullptr), n, at / W, at % W);
    }
    for (int64_t i = 0; i < static_cast<int64_t>(valid) * C; ++i)
    {
        int32_t const c = static_cast<int32_t>(i / valid);
        int32_t const row = static_cast<int32_t>(i % valid);
        int32_t const pos = list[row];
        int32_t const n = pos / hw;
        int32_t const at = pos - n * hw;
        int64_t const e = (static_cast<int64_t>(n) * C + c) * hw + at;
        float const m = mask[pos];
        float const num = saiInterpNum(p, feature, mask, static_cast<float const*>(nullptr), n, c, at / W, at % W);
        out[e] = m == 0.F ? num / den[row] : saiInterpCombine(m, feature[e], num, den[row]);
    }
    return 0;
}

} // extern "C"
