/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * Launchers of the sai::SparseSampleConv CUDA kernels (docs/design.md 3.2). No TensorRT types: the
 * plugin glue calls these, and the kernels stay buildable and testable without TensorRT.
 *
 * Pipeline of sparseSampleConvLaunch (all on `stream`, no host synchronisation, CUDA-graph safe):
 *   1. zero the output and the device-side active count
 *   2. compaction: list of the positions n*Ho*Wo + oy*Wo + ox with mask > 0, count on the device
 *   3. for each chunk of at most `chunkRows` list entries (the host launches every chunk the
 *      worst case needs; kernels exit early past the device-side count):
 *        gather (im2col of the active positions; bilinear taps when an offset is given)
 *        -> GEMM per group (saiGemmLaunch, fp32 accumulation)
 *        -> epilogue (bias + activation) and scatter into the zeroed output
 */
#ifndef SAI_TRT_PLUGINS_SPARSE_SAMPLE_CONV_KERNEL_H
#define SAI_TRT_PLUGINS_SPARSE_SAMPLE_CONV_KERNEL_H

#include "saiDataType.h"
#include "saiKernelCaps.h"
#include "sparseSampleConvMath.h"

#include <cstddef>
#include <cstdint>
#include <cuda_runtime_api.h>

namespace sai
{

struct SaiConvBuffers
{
    void const* x{nullptr};
    void const* mask{nullptr};
    void const* weight{nullptr};
    void const* bias{nullptr};   //!< nullptr: no bias
    void const* offset{nullptr}; //!< nullptr: regular convolution; else deformable v1
    void* y{nullptr};
    //! Layouts, element types and strides of X, M, Offset, Y (W and B are always dense, type of X).
    SaiTensorLayout xLayout{};
    SaiTensorLayout maskLayout{};
    SaiTensorLayout offsetLayout{};
    SaiTensorLayout yLayout{};
    int32_t tactic{0}; //!< one of sparseSampleConvKernelCaps().tactics; 0: the default
};

//! What these kernels read and write; the glue offers TensorRT only this.
SaiKernelCaps const& sparseSampleConvKernelCaps();

//! Rows (active positions) processed per gather/GEMM/scatter round; independent of N, H, W.
int32_t sparseSampleConvChunkRows(SaiConvParams const& p, SaiDataType type);

//! Device workspace bytes for these (finalized) params; pass the largest dims at build time.
size_t sparseSampleConvWorkspaceSize(SaiConvParams const& p, SaiDataType type);

//! Runs docs/design.md 3.2 on the device. `p` must be finalized (saiConvFinalize).
cudaError_t sparseSampleConvLaunch(SaiConvParams const& p, SaiDataType type, SaiConvBuffers const& buffers,
    void* workspace, size_t workspaceSize, cudaStream_t stream);

//! The one GEMM entry point (a tensor-core version can replace it behind this signature):
//!   for b < batch, r < rows, j < n:  C[b*strideC + r*ldc + j] = sum_k A[b*strideA + r*lda + k] * B[b*strideB + j*ldb + k]
//! with rows = clamp(*dRowCount - rowStart, 0, maxRows) read on the device. A and B have `type`,
//! C is fp32.
cudaError_t saiGemmLaunch(SaiDataType type, int32_t const* dRowCount, int32_t rowStart, int32_t maxRows, int32_t n,
    int32_t k, int32_t batch, void const* A, int64_t lda, int64_t strideA, void const* B, int64_t ldb, int64_t strideB,
    float* C, int64_t ldc, int64_t strideC, cudaStream_t stream);

} // namespace sai

#endif // SAI_TRT_PLUGINS_SPARSE_SAMPLE_CONV_KERNEL_H
