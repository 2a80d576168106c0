/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * Launcher of sai::SparseSampleConv (docs/design.md 3.2) on the Triton kernels of kernels/ (compiled
 * ahead of time by `make kernels` for sm_75..sm_120, embedded in the library). No TensorRT types:
 * the plugin glue calls these, and they build and are tested (a recording driver replays every
 * launch under the Triton interpreter, tests/test_trt_launch.py) without TensorRT or a GPU.
 *
 * SparseSampleConvRunner holds the launch state of one node (one plugin instance). Its first run in a
 * CUDA context, and the first after a change of what picks the builds (types, tactic, the layouts'
 * and addresses' alignment, kernel size, activation), chooses the builds and resolves them (spec
 * names, image scan, module cache); other changes (shapes, strides) only refill the integer
 * arguments. Every run then issues, on `stream` (no host synchronisation, CUDA-graph safe):
 *   1. zero the device-side counts; mask_partition_<mask type>_gt0: the output positions with
 *      mask > 0 first, then the others, and their count on the device
 *   2. sparse_conv_<type>_<k3|k1|any>[_deform][_relu]: the implicit GEMM over the active positions
 *      (tensor cores for FP16/BF16), bias and activation in the epilogue, every output position
 *      written once (0 where mask <= 0); "fast" builds where the channels are innermost and
 *      16-divisible, "any" builds (run-time strides and kernel size) for NCHW and the rest
 *   3. zeros in the padding channels of an NHWC8 / NHWC16 output whose C is not a multiple of 8/16
 * The weights: W [Cout, Cin/g, kh, kw] packed to [g, tap, Cin/g, Cout/g] (copy4d) and, for a node
 * without bias, a zero bias, once per W address and context into device memory the runner owns
 * (the first run allocates it, packs on `stream` and waits for it: run one enqueue before capturing
 * a CUDA graph; a first run inside a capture packs into the workspace instead, as every run does
 * with packEveryLaunch); runners made with shareWeights (the plugin instances of an engine's
 * execution contexts) share one copy per W. W must therefore be a constant of the engine, as every
 * model sai exports has.
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

//! The launch state of one SparseSampleConv node; see the top of this file. Not thread safe:
//! TensorRT never runs one plugin instance's enqueue concurrently.
class SparseSampleConvRunner
{
public:
    //! `packEveryLaunch`: pack W into the workspace in every run (for a W that changes between runs).
    //! `shareWeights`: share the packed copy with the other sharing runners of the same W address in
    //! the same context (the instances of one engine's execution contexts, which never outlive it).
    explicit SparseSampleConvRunner(bool packEveryLaunch = false, bool shareWeights = false);
    ~SparseSampleConvRunner();
    SparseSampleConvRunner(SparseSampleConvRunner const&) = delete;
    SparseSampleConvRunner& operator=(SparseSampleConvRunner const&) = delete;

    //! Runs docs/design.md 3.2 on the device. `p` must be finalized (saiConvFinalize). A failed
    //! run returns its cudaError_t; saiLastLaunchError() says what failed.
    cudaError_t run(SaiConvParams const& p, SaiDataType type, SaiConvBuffers const& buffers, void* workspace,
        size_t workspaceSize, cudaStream_t stream) noexcept;

    //! How many runs chose and resolved the builds (spec names, image scan, module cache).
    int64_t prepares() const noexcept;
    //! How many runs packed the weights (every run with packEveryLaunch).
    int64_t packs() const noexcept;

    struct State;

private:
    State* mState;
};

} // namespace sai

#endif // SAI_TRT_PLUGINS_SPARSE_SAMPLE_CONV_KERNEL_H
