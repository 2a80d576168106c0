/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * Launchers of the sai::Interpolate CUDA kernels (docs/design.md 3.3). No TensorRT types.
 *
 * Pipeline of interpolateLaunch (all on `stream`, no host synchronisation, CUDA-graph safe):
 *   1. zero the device-side count; compaction of the positions with mask < 1, count on the device;
 *      every position with mask >= 1 is written directly as M * F (all channels) in the same pass
 *   2. den = conv(M, K) + eps once per compacted position
 *   3. out = M*F + (1-M) * num / den per compacted position and channel (grid-stride loops sized
 *      for the worst case that read the count on the device)
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

//! Runs docs/design.md 3.3 on the device: feature and out [N,C,H,W], mask [N,1,H,W], in `layouts`;
//! `tactic` is one of interpolateKernelCaps().tactics (0: the default).
cudaError_t interpolateLaunch(SaiInterpParams const& p, SaiDataType type, SaiInterpLayouts const& layouts,
    int32_t tactic, void const* feature, void const* mask, void* out, void* workspace, size_t workspaceSize,
    cudaStream_t stream);

} // namespace sai

#endif // SAI_TRT_PLUGINS_INTERPOLATE_KERNEL_H
