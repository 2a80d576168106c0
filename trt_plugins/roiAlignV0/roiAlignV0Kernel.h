/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * Launcher of sai::RoiAlignV0 (docs/design.md 9; math: roiAlignV0Math.h). No TensorRT types.
 *
 * roiAlignV0Launch computes Y [R, C, out, out] (FP32, NCHW) from X [N, C, H, W] (FP32, NCHW), rois [R, 4]
 * (FP32) and the batch indices [R] (INT32 or INT64) on `stream`, with no host synchronisation; R = 0
 * launches nothing. A failed launch returns its cudaError_t.
 *
 * Status: the GPU kernel (a Triton kernel in kernels/, compiled ahead of time like the other plugins')
 * is not written yet, so libsai_trt_plugins.so does not register this plugin; the glue is built and
 * driven on the CPU by tests/test_detector_trt_plugin.py with a stand-in launcher that runs the CPU
 * reference on host memory (trt_plugins/tests/roi_align_v0_harness.cpp).
 */
#ifndef SAI_TRT_PLUGINS_ROI_ALIGN_V0_KERNEL_H
#define SAI_TRT_PLUGINS_ROI_ALIGN_V0_KERNEL_H

#include "roiAlignV0Math.h"
#include "saiKernelCaps.h"

#include <cstdint>
#include <cuda_runtime_api.h>

namespace sai
{

//! The element type of the batch indices input.
enum class SaiIndexType : int32_t
{
    kINT32 = 0,
    kINT64 = 1,
};

//! What the kernel reads and writes (FP32 NCHW) and its tactics; the glue offers TensorRT only this.
SaiKernelCaps const& roiAlignV0KernelCaps();

cudaError_t roiAlignV0Launch(SaiRoiAlignParams const& p, void const* x, void const* rois, void const* batch,
    SaiIndexType batchType, void* y, cudaStream_t stream) noexcept;

} // namespace sai

#endif // SAI_TRT_PLUGINS_ROI_ALIGN_V0_KERNEL_H
