/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * CUDA kernels of sai::SparseSampleConv (docs/design.md 3.2); see sparseSampleConvKernel.h for the
 * pipeline. The per-element math comes from common/sparseSampleConvMath.h (shared with the CPU
 * build that the test suite checks). Device code also compiles under NVRTC (__CUDACC_RTC__), which
 * is how `make cuda-check` builds it with CUDA 12; the host launchers are nvcc-only.
 */
#if !defined(__CUDACC_RTC__)
#include "sparseSampleConvKernel.h"
#endif
#include "saiCudaUtils.cuh"
#include "sparseSampleConvMath.h"

#include <cuda_fp16.h>

namespace sai
{

// ------------------------------------------------------------------------------------------------
// kernels
// ------------------------------------------------------------------------------------------------

//! Compaction: appends every position with mask > 0 to `list`; the count stays on the device.
template <typename T>
__global__ void __launch_bounds__(kSAI_THREADS) sscCompactKernel(
    T const* __restrict__ mask, int32_t total, int32_t* __restrict__ list, int32_t* __restrict__ count)
{
    int32_t const stride = static_cast<int32_t>(gridDim.x * blockDim.x);
    for (int32_t base = static_cast<int32_t>(blockIdx.x * blockDim.x); base < total; base += stride)
    {
        int32_t const i = base + static_cast<int32_t>(threadIdx.x);
        bool const active = i < total && saiMaskActive(saiToFloat(mask[i]));
        saiCompactAppend(active, i, list, count);
    }
}

//! im2col of rows [rowStart, rowStart + rows) of the active list: cols[row][c*taps + k].
template <typename T>
__global__ void __launch_bounds__(kSAI_THREADS) sscGatherKernel(SaiConvParams p, T const* __restrict__ x,
    T const* __restrict__ offset, int32_t const* __restrict__ list, int32_t const* __restrict__ count,
    int32_t rowStart, int32_t maxRows, T* __restrict__ cols)
{
    int32_t const valid = min(maxRows, *count - rowStart);
    if (valid <= 0)
    {
        return;
    }
    int64_t const width = static_cast<int64_t>(p.C) * p.kernelTaps;
    int64_t const total = static_cast<int64_t>(valid) * width;
    int64_t const stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride)
    {
        int32_t const row = static_cast<int32_t>(i / width);
        int32_t const col = static_cast<int32_t>(i - static_cast<int64_t>(row) * width);
        int32_t n;
        int32_t oy;
        int32_t ox;
        saiPositionDecode(p, list[rowStart + row], &n, &oy, &ox);
        int32_t const c = col / p.kernelTaps;
        int32_t const k = col - c * p.kernelTaps;
        int32_t const ky = k / p.kw;
        int32_t const kx = k - ky * p.kw;
        cols[i] = saiFromFloat<T>(saiConvGather(p, x, offset, n, oy, ox, c, ky, kx));
    }
}

//! Epilogue and scatter: y[n, co, oy, ox] = act(acc[row][co] + bias[co]) for the active rows.
template <typename T>
__global__ void __launch_bounds__(kSAI_THREADS) sscScatterKernel(SaiConvParams p, float const* __restrict__ acc,
    T const* __restrict__ bias, int32_t const* __restrict__ list, int32_t const* __restrict__ count,
    int32_t rowStart, int32_t maxRows, T* __restrict__ y)
{
    int32_t const valid = min(maxRows, *count - rowStart);
    if (valid <= 0)
    {
        return;
    }
    int64_t const total = static_cast<int64_t>(valid) * p.Cout;
    int64_t const stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    int64_t const hwo = static_cast<int64_t>(p.Ho) * p.Wo;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride)
    {
        // row-fastest order: neighbouring threads write neighbouring positions of one channel
        int32_t const co = static_cast<int32_t>(i / valid);
        int32_t const row = static_cast<int32_t>(i - static_cast<int64_t>(co) * valid);
        int32_t const pos = list[rowStart + row];
        int64_t const nIdx = pos / hwo;
        int64_t const at = pos - nIdx * hwo;
        float const v = saiConvEpilogue(p, acc[static_cast<int64_t>(row) * p.Cout + co], bias, co);
        y[(nIdx * p.Cout + co) * hwo + at] = saiFromFloat<T>(v);
    }
}

// Tiled SIMT GEMM: 64x64 output tile per block, 16-deep K slices, 256 threads x (4x4) outputs.
constexpr int32_t kGemmTileM = 64;
constexpr int32_t kGemmTileN = 64;
constexpr int32_t kGemmTileK = 16;

template <typename T>
__global__ void __launch_bounds__(256) saiGemmKernel(int32_t const* __restrict__ dRowCount, int32_t rowStart,
    int32_t maxRows, int32_t n, int32_t k, T const* __restrict__ A, int64_t lda, int64_t strideA,
    T const* __restrict__ B, int64_t ldb, int64_t strideB, float* __restrict__ C, int64_t ldc, int64_t strideC)
{
    int32_t const rows = min(maxRows, *dRowCount - rowStart);
    int32_t const tileRow = static_cast<int32_t>(blockIdx.y) * kGemmTileM;
    int32_t const tileCol = static_cast<int32_t>(blockIdx.x) * kGemmTileN;
    if (tileRow >= rows || tileCol >= n)
    {
        return; // early exit: the grid is sized for the worst case
    }
    int32_t const b = static_cast<int32_t>(blockIdx.z);
    A += b * strideA;
    B += b * strideB;
    C += b * strideC;

    __shared__ float sA[kGemmTileK][kGemmTileM + 1];
    __shared__ float sB[kGemmTileK][kGemmTileN + 1];
    int32_t const tid = static_cast<int32_t>(threadIdx.x);
    int32_t const ty = tid / 16; // 0..15: 4 rows each
    int32_t const tx = tid % 16; // 0..15: 4 cols each
    float acc[4][4] = {};

    for (int32_t k0 = 0; k0 < k; k0 += kGemmTileK)
    {
        // 64 x 16 elements of A and of B per slice, 4 per thread; k fastest for coalescing
        for (int32_t e = tid; e < kGemmTileM * kGemmTileK; e += 256)
        {
            int32_t const r = e / kGemmTileK;
            int32_t const kk = e % kGemmTileK;
            int32_t const gr = tileRow + r;
            int32_t const gk = k0 + kk;
            sA[kk][r] = (gr < rows && gk < k) ? saiToFloat(A[static_cast<int64_t>(gr) * lda + gk]) : 0.F;
            int32_t const gc = tileCol + r;
            sB[kk][r] = (gc < n && gk < k) ? saiToFloat(B[static_cast<int64_t>(gc) * ldb + gk]) : 0.F;
        }
        __syncthreads();
#pragma unroll
        for (int32_t kk = 0; kk < kGemmTileK; ++kk)
        {
            float a[4];
            float bv[4];
#pragma unroll
            for (int32_t i = 0; i < 4; ++i)
            {
                a[i] = sA[kk][ty * 4 + i];
                bv[i] = sB[kk][tx * 4 + i];
            }
#pragma unroll
            for (int32_t i = 0; i < 4; ++i)
            {
#pragma unroll
                for (int32_t j = 0; j < 4; ++j)
                {
                    acc[i][j] += a[i] * bv[j];
                }
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int32_t i = 0; i < 4; ++i)
    {
        int32_t const gr = tileRow + ty * 4 + i;
        if (gr >= rows)
        {
            continue;
        }
#pragma unroll
        for (int32_t j = 0; j < 4; ++j)
        {
            int32_t const gc = tileCol + tx * 4 + j;
            if (gc < n)
            {
                C[static_cast<int64_t>(gr) * ldc + gc] = acc[i][j];
            }
        }
    }
}

// Explicit instantiations: make the device code exist in a device-only (NVRTC) build too.
template __global__ void sscCompactKernel<float>(float const*, int32_t, int32_t*, int32_t*);
template __global__ void sscCompactKernel<__half>(__half const*, int32_t, int32_t*, int32_t*);
template __global__ void sscGatherKernel<float>(
    SaiConvParams, float const*, float const*, int32_t const*, int32_t const*, int32_t, int32_t, float*);
template __global__ void sscGatherKernel<__half>(
    SaiConvParams, __half const*, __half const*, int32_t const*, int32_t const*, int32_t, int32_t, __half*);
template __global__ void sscScatterKernel<float>(
    SaiConvParams, float const*, float const*, int32_t const*, int32_t const*, int32_t, int32_t, float*);
template __global__ void sscScatterKernel<__half>(
    SaiConvParams, float const*, __half const*, int32_t const*, int32_t const*, int32_t, int32_t, __half*);
template __global__ void saiGemmKernel<float>(int32_t const*, int32_t, int32_t, int32_t, int32_t, float const*,
    int64_t, int64_t, float const*, int64_t, int64_t, float*, int64_t, int64_t);
template __global__ void saiGemmKernel<__half>(int32_t const*, int32_t, int32_t, int32_t, int32_t, __half const*,
    int64_t, int64_t, __half const*, int64_t, int64_t, float*, int64_t, int64_t);

#if !defined(__CUDACC_RTC__)

// ------------------------------------------------------------------------------------------------
// host launchers
// ------------------------------------------------------------------------------------------------

namespace
{

constexpr int64_t kAlign = 256;
//! Budget for one chunk's im2col rows plus GEMM output; bounds the workspace for large inputs.
constexpr int64_t kChunkBudgetBytes = int64_t{64} << 20;

struct SscWorkspaceLayout
{
    int64_t countOffset{0};
    int64_t listOffset{0};
    int64_t colsOffset{0};
    int64_t accOffset{0};
    int64_t total{0};
    int32_t chunkRows{0};
};

SscWorkspaceLayout sscLayout(SaiConvParams const& p, SaiDataType type)
{
    SscWorkspaceLayout l;
    int64_t const positions = static_cast<int64_t>(p.N) * p.Ho * p.Wo;
    l.chunkRows = sparseSampleConvChunkRows(p, type);
    int64_t const width = static_cast<int64_t>(p.C) * p.kernelTaps;
    l.countOffset = 0;
    l.listOffset = kAlign;
    l.colsOffset = l.listOffset + saiAlignUp(positions * 4, kAlign);
    l.accOffset = l.colsOffset + saiAlignUp(l.chunkRows * width * static_cast<int64_t>(saiDataTypeSize(type)), kAlign);
    l.total = l.accOffset + saiAlignUp(static_cast<int64_t>(l.chunkRows) * p.Cout * 4, kAlign);
    return l;
}

int32_t gridFor(int64_t work)
{
    int64_t const blocks = saiCeilDiv(work, kSAI_THREADS);
    return static_cast<int32_t>(blocks < 1 ? 1 : (blocks > kSAI_MAX_GRID_BLOCKS ? kSAI_MAX_GRID_BLOCKS : blocks));
}

template <typename T>
cudaError_t sscLaunchTyped(SaiConvParams const& p, SaiDataType type, SaiConvBuffers const& b, void* workspace,
    size_t workspaceSize, cudaStream_t stream)
{
    int64_t const positions = static_cast<int64_t>(p.N) * p.Ho * p.Wo;
    size_t const yBytes = static_cast<size_t>(positions) * static_cast<size_t>(p.Cout) * sizeof(T);
    cudaError_t err = cudaMemsetAsync(b.y, 0, yBytes, stream);
    if (err != cudaSuccess || positions == 0)
    {
        return err;
    }
    SscWorkspaceLayout const l = sscLayout(p, type);
    if (workspace == nullptr || static_cast<int64_t>(workspaceSize) < l.total)
    {
        return cudaErrorInvalidValue;
    }
    auto* ws = static_cast<char*>(workspace);
    auto* count = reinterpret_cast<int32_t*>(ws + l.countOffset);
    auto* list = reinterpret_cast<int32_t*>(ws + l.listOffset);
    auto* cols = reinterpret_cast<T*>(ws + l.colsOffset);
    auto* acc = reinterpret_cast<float*>(ws + l.accOffset);
    auto const* x = static_cast<T const*>(b.x);
    auto const* mask = static_cast<T const*>(b.mask);
    auto const* bias = static_cast<T const*>(b.bias);
    auto const* offset = static_cast<T const*>(b.offset);
    auto* y = static_cast<T*>(b.y);

    err = cudaMemsetAsync(count, 0, sizeof(int32_t), stream);
    if (err != cudaSuccess)
    {
        return err;
    }
    auto const total = static_cast<int32_t>(positions);
    sscCompactKernel<T><<<gridFor(total), kSAI_THREADS, 0, stream>>>(mask, total, list, count);

    int64_t const width = static_cast<int64_t>(p.C) * p.kernelTaps;
    for (int32_t rowStart = 0; rowStart < total; rowStart += l.chunkRows)
    {
        int32_t const maxRows = l.chunkRows < total - rowStart ? l.chunkRows : total - rowStart;
        sscGatherKernel<T><<<gridFor(maxRows * width), kSAI_THREADS, 0, stream>>>(
            p, x, offset, list, count, rowStart, maxRows, cols);
        // per group g: acc[:, g*coutPG + j] = cols[:, g*kdim : (g+1)*kdim] . W[g*coutPG + j, :]
        err = saiGemmLaunch(type, count, rowStart, maxRows, p.coutPerGroup, p.kdim, p.groups, cols, width, p.kdim,
            b.weight, p.kdim, static_cast<int64_t>(p.coutPerGroup) * p.kdim, acc, p.Cout, p.coutPerGroup, stream);
        if (err != cudaSuccess)
        {
            return err;
        }
        sscScatterKernel<T><<<gridFor(static_cast<int64_t>(maxRows) * p.Cout), kSAI_THREADS, 0, stream>>>(
            p, acc, bias, list, count, rowStart, maxRows, y);
    }
    return cudaGetLastError();
}

} // namespace

int32_t sparseSampleConvChunkRows(SaiConvParams const& p, SaiDataType type)
{
    int64_t const rowBytes = static_cast<int64_t>(p.C) * p.kernelTaps * static_cast<int64_t>(saiDataTypeSize(type))
        + static_cast<int64_t>(p.Cout) * 4;
    int64_t rows = kChunkBudgetBytes / (rowBytes > 0 ? rowBytes : 1);
    rows = rows / kGemmTileM * kGemmTileM;
    if (rows < kGemmTileM)
    {
        rows = kGemmTileM;
    }
    int64_t const positions = saiAlignUp(static_cast<int64_t>(p.N) * p.Ho * p.Wo, kGemmTileM);
    if (positions > 0 && rows > positions)
    {
        rows = positions;
    }
    // grid.y of the GEMM is rows / 64 <= 65535
    return static_cast<int32_t>(rows > (int64_t{1} << 20) ? (int64_t{1} << 20) : rows);
}

size_t sparseSampleConvWorkspaceSize(SaiConvParams const& p, SaiDataType type)
{
    return static_cast<size_t>(sscLayout(p, type).total);
}

SaiKernelCaps const& sparseSampleConvKernelCaps()
{
    // the SIMT kernels: dense NCHW FP32/FP16, mask of the activations' type, one tactic
    static SaiKernelCaps const caps = [] {
        SaiKernelCaps c;
        c.layouts[static_cast<int32_t>(SaiDataType::kFLOAT)] = saiLayoutBit(SaiLayout::kNCHW);
        c.layouts[static_cast<int32_t>(SaiDataType::kHALF)] = saiLayoutBit(SaiLayout::kNCHW);
        c.nbTactics = 1;
        c.tactics[0] = 1;
        c.tacticNames[0] = "simt-im2col-gemm";
        return c;
    }();
    return caps;
}

cudaError_t sparseSampleConvLaunch(SaiConvParams const& p, SaiDataType type, SaiConvBuffers const& buffers,
    void* workspace, size_t workspaceSize, cudaStream_t stream)
{
    SaiKernelCaps const& caps = sparseSampleConvKernelCaps();
    for (SaiTensorLayout const* l : {&buffers.xLayout, &buffers.maskLayout, &buffers.yLayout})
    {
        if (l->type != type || !saiCapsLayout(caps, type, l->layout))
        {
            return cudaErrorNotSupported;
        }
    }
    if (buffers.offset != nullptr
        && (buffers.offsetLayout.type != type || !saiCapsLayout(caps, type, buffers.offsetLayout.layout)))
    {
        return cudaErrorNotSupported;
    }
    if (buffers.tactic != 0 && !saiCapsTactic(caps, buffers.tactic))
    {
        return cudaErrorInvalidValue;
    }
    if (type == SaiDataType::kHALF)
    {
        return sscLaunchTyped<__half>(p, type, buffers, workspace, workspaceSize, stream);
    }
    return sscLaunchTyped<float>(p, type, buffers, workspace, workspaceSize, stream);
}

cudaError_t saiGemmLaunch(SaiDataType type, int32_t const* dRowCount, int32_t rowStart, int32_t maxRows, int32_t n,
    int32_t k, int32_t batch, void const* A, int64_t lda, int64_t strideA, void const* B, int64_t ldb, int64_t strideB,
    float* C, int64_t ldc, int64_t strideC, cudaStream_t stream)
{
    if (maxRows <= 0 || n <= 0 || batch <= 0)
    {
        return cudaSuccess;
    }
    dim3 const grid(static_cast<unsigned>(saiCeilDiv(n, kGemmTileN)), static_cast<unsigned>(saiCeilDiv(maxRows, kGemmTileM)),
        static_cast<unsigned>(batch));
    if (type == SaiDataType::kHALF)
    {
        saiGemmKernel<__half><<<grid, 256, 0, stream>>>(dRowCount, rowStart, maxRows, n, k,
            static_cast<__half const*>(A), lda, strideA, static_cast<__half const*>(B), ldb, strideB, C, ldc, strideC);
    }
    else
    {
        saiGemmKernel<float><<<grid, 256, 0, stream>>>(dRowCount, rowStart, maxRows, n, k,
            static_cast<float const*>(A), lda, strideA, static_cast<float const*>(B), ldb, strideB, C, ldc, strideC);
    }
    return cudaGetLastError();
}

#endif // !__CUDACC_RTC__

} // namespace sai
