/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * Launcher of sai::Interpolate (docs/design.md 3.3) on the Triton kernels of kernels/ (compiled ahead
 * of time by `make kernels`, embedded in the library). No TensorRT types.
 *
 * InterpolateRunner holds the launch state of one node (one plugin instance): the builds chosen
 * and resolved once per CUDA context and build choice (types, tactic, alignment), the integer
 * arguments refilled when shapes or strides change; every run then issues, on `stream` (no host
 * synchronisation, CUDA-graph safe):
 *   1. zero the device-side counts; mask_partition_<mask type>_lt1: the positions with M < 1 first
 *   2. interpolate_<type>_m<mask type>[_any]: out = M*F + (1-M) * num / den where M < 1 (num and
 *      den = conv(M, K) + eps accumulated in fp32, K evaluated in fp32), M*F elsewhere; "fast"
 *      builds where the channels are innermost and 16-divisible, "any" builds for the rest
 *   3. zeros in the padding channels of an NHWC8 / NHWC16 output whose C is not a multiple of 8/16
 * A failed launch returns its cudaError_t; saiLastLaunchError() says what failed.
 */
#ifndef SAI_TRT_PLUGINS_INTERPOLATE_KERNEL_H
#define SAI_TRT_PLUGINS_INTERPOLATE_KERNEL_H

#include "interpolateMath.h"
#include "saiDataType.h"
#include "saiKernelCaps.h"

#include <cstddef>
#include <cstdint>
#include <cuda_runtime_api.h>

namespace sai
{

//! Layouts, element types and strides of F, M and the output.
struct SaiInterpLayouts
{
    SaiTensorLayout feature{};
    SaiTensorLayout mask{};
    SaiTensorLayout out{};
};

//! What these kernels read and write; the glue offers TensorRT only this.
SaiKernelCaps const& interpolateKernelCaps();

//! Device workspace bytes for these params; pass the largest dims at build time.
size_t interpolateWorkspaceSize(SaiInterpParams const& p, SaiDataType type);

//! The launch state of one Interpolate node; see the top of this file. Not thread safe.
class InterpolateRunner
{
public:
    InterpolateRunner();
    ~InterpolateRunner();
    InterpolateRunner(InterpolateRunner const&) = delete;
    InterpolateRunner& operator=(InterpolateRunner const&) = delete;

    //! Runs docs/design.md 3.3 on the device: feature and out [N,C,H,W], mask [N,1,H,W], in `layouts`;
    //! `tactic` is one of interpolateKernelCaps().tactics (0: the default).
    cudaError_t run(SaiInterpParams const& p, SaiDataType type, SaiInterpLayouts const& layouts, int32_t tactic,
        void const* feature, void const* mask, void* out, void* workspace, size_t workspaceSize,
        cudaStream_t stream) noexcept;

    //! How many runs chose and resolved the builds (spec names, image scan, module cache).
    int64_t prepares() const noexcept;

    struct State;

private:
    State* mState;
};

} // namespace sai

#endif // SAI_TRT_PLUGINS_INTERPOLATE_KERNEL_H
