/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * Launcher of sai::SparseSampleConv (docs/design.md 3.2) on the Triton kernels of kernels/ (compiled
 * ahead of time by `make kernels` for sm_75..sm_120, embedded in the library). No TensorRT types:
 * the plugin glue calls these, and they build and are tested (a recording driver replays every
 * launch under the Triton interpreter, tests/test_trt_launch.py) without TensorRT or a GPU.
 *
 * Pipeline of sparseSampleConvLaunch (all on `stream`, no host synchronisation, CUDA-graph safe):
 *   1. zero the device-side counts; mask_partition_<mask type>_gt0: the output positions with
 *      mask > 0 first, then the others, and their count on the device
 *   2. copy4d: the weights packed to [g, tap, Cin/g, Cout/g] in the workspace (weights are plugin
 *      inputs, so this runs in every enqueue); a zero bias when the node has none
 *   3. sparse_conv_<type>_<k3|k1|any>[_deform][_relu]: the implicit GEMM over the active positions
 *      (tensor cores for FP16/BF16), bias and activation in the epilogue, every output position
 *      written once (0 where mask <= 0); "fast" builds where the channels are innermost and
 *      16-divisible, "any" builds (run-time strides and kernel size) for NCHW and the rest
 *   4. zeros in the padding channels of an NHWC8 / NHWC16 output
 * A failed launch returns its cudaError_t; saiLastLaunchError() says what failed.
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
    int32_t tactic{0}; //!< one of sparseSampleConvKernelCaps().tactics; 0: the default (1)
};

//! What these kernels read and write; the glue offers TensorRT only this.
SaiKernelCaps const& sparseSampleConvKernelCaps();

//! Device workspace bytes for these (finalized) params; pass the largest dims at build time.
size_t sparseSampleConvWorkspaceSize(SaiConvParams const& p, SaiDataType type);

//! Runs docs/design.md 3.2 on the device. `p` must be finalized (saiConvFinalize).
cudaError_t sparseSampleConvLaunch(SaiConvParams const& p, SaiDataType type, SaiConvBuffers const& buffers,
    void* workspace, size_t workspaceSize, cudaStream_t stream);

} // namespace sai

#endif // SAI_TRT_PLUGINS_SPARSE_SAMPLE_CONV_KERNEL_H
