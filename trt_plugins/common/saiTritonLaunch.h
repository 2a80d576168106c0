/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * saiTritonLaunch.h: what the launchers of both ops share on top of the kernels' launcher
 * (kernels/launcher/sai_kernel_launcher.h, the AOT-compiled Triton cubins of `make kernels`).
 * Host code only, no TensorRT types:
 *
 *   SaiWorkspace            carves 256-byte aligned sub-buffers out of the plugin workspace
 *   saiLaunchError(...)     records why a launch failed (saiLastLaunchError) and maps the driver's
 *                           CUresult to the cudaError_t the glue reports
 *   saiTypeTag(t)           "fp32" / "fp16" / "bf16": the dtype part of the kernels' spec names
 *   saiAligned16(l, C)      whether a tensor fits the "fast" builds (channel stride 1, 16-divisible
 *                           channels and position strides; saiAligned16(ptr): its start); else the
 *                           "any" builds run
 *   saiImage(spec, tactic)  the image for the current device, or an error naming what is missing
 *   saiResolve(spec, ...)   that image resolved in the current context (kernel handle, block, shared memory)
 *   SaiLaunchContext        the driver and context a runner's resolved kernels belong to (one atomic
 *                           load + cuCtxGetCurrent per run says whether they still hold)
 *   SaiPartitionPlan        the mask partition (memset of the counts + mask_partition) resolved once
 *   saiZeroPadChannels(...) writes 0 to the padding channels of an NHWC8 / NHWC16 output
 *
 * The runners of both ops (SparseSampleConvRunner, InterpolateRunner) choose and resolve their
 * builds once per configuration and CUDA context (prepare: spec names, image scan, module cache);
 * a run then only fills the typed arguments (sai_kernels_generated.h) with the buffers' addresses
 * and launches: no allocation, no string, no lock, no image scan.
 */
#ifndef SAI_TRT_PLUGINS_COMMON_SAI_TRITON_LAUNCH_H
#define SAI_TRT_PLUGINS_COMMON_SAI_TRITON_LAUNCH_H

#include "saiDataType.h"
#include "saiKernelCaps.h"
#include "sai_kernel_launcher.h"
#include "sai_kernels_generated.h"

#include <cstddef>
#include <cstdint>
#include <cuda_runtime_api.h>
#include <string>

namespace sai
{

//! Records `what` (with the driver's code) as the last launch error; returns the matching cudaError_t.
cudaError_t saiLaunchError(CUresult r, std::string const& what);

//! Clears the last launch error (at the start of each launch).
void saiClearLaunchError();

inline char const* saiTypeTag(SaiDataType t)
{
    return t == SaiDataType::kFLOAT ? "fp32" : (t == SaiDataType::kHALF ? "fp16" : "bf16");
}

//! Sub-buffers of one workspace, each 256-byte aligned, in the order they are taken.
class SaiWorkspace
{
public:
    explicit SaiWorkspace(void* base = nullptr)
        : mBase(static_cast<char*>(base))
    {
    }
    //! Reserves `bytes` and returns where they start (nullptr + offset when sizing without a base).
    void* take(size_t bytes)
    {
        size_t const at = mUsed;
        mUsed += (bytes + kAlign - 1) / kAlign * kAlign;
        return mBase + at;
    }
    size_t used() const
    {
        return mUsed;
    }
    static constexpr size_t kAlign = 256;

private:
    char* mBase;
    size_t mUsed{0};
};

//! Channel stride 1 and 16-divisible channels and n/h/w strides: what the "fast" builds assume.
inline bool saiAligned16(SaiTensorLayout const& l, int64_t channels)
{
    return l.layout != SaiLayout::kNCHW && l.strides.c == 1 && channels % 16 == 0 && l.strides.n % 16 == 0
        && l.strides.h % 16 == 0 && l.strides.w % 16 == 0;
}

//! Whether a TensorRT buffer starts on a 16-byte boundary (what the fast builds assume of X and Y;
//! a tensor inside a concatenation need not).
inline bool saiAligned16(void const* p)
{
    return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

//! The image of `spec` (tactic, falling back to 1) for the current device; nullptr + the error set.
kernels::KernelImage const* saiImage(std::string const& spec, int32_t tactic, cudaError_t* err);

//! `spec` (tactic, falling back to 1) for the current device, resolved in the current context.
cudaError_t saiResolve(std::string const& spec, int32_t tactic, kernels::ResolvedKernel* out);

//! The driver and CUDA context of a runner's resolved kernels.
struct SaiLaunchContext
{
    kernels::DriverApi const* api{nullptr};
    CUcontext ctx{nullptr};
    uint64_t generation{0};
};

//! Refreshes `c` for this run: the driver (looked up only when none is held or the launcher's
//! generation moved) and the current context; *changed when the resolved kernels must be resolved again.
cudaError_t saiCurrentContext(SaiLaunchContext& c, bool* changed);

//! The mask partition of one configuration: mask_partition_<mask type>_<mode> resolved, its
//! arguments set but for the buffers, its grid.
struct SaiPartitionPlan
{
    kernels::ResolvedKernel kernel;
    kernels::MaskPartitionKernelArgs args;
    unsigned grid{0};
};

//! Resolves the partition of a mask of type `maskType` ("gt0": M > 0 first, for the conv; "lt1":
//! M < 1 first, for Interpolate) in the current context.
cudaError_t saiPartitionResolve(SaiDataType maskType, char const* mode, SaiPartitionPlan* plan);

//! Sets its arguments (but the buffers) and grid for the N*H*W positions of a mask in `maskLayout`
//! (integers only: a shape change costs no string work or lookup).
void saiPartitionArgs(SaiTensorLayout const& maskLayout, int64_t positions, int32_t H, int32_t W, bool lt1,
    SaiPartitionPlan* plan);

//! Zeros the counts (int32 [2]) and launches the partition of `mask` into `idx` / `count`.
cudaError_t saiPartitionRun(kernels::DriverApi const* api, SaiPartitionPlan& plan, void const* mask, void* idx,
    void* count, CUstream stream);

//! Zeros the channels [C, Cpadded) of every position of an NHWC8 / NHWC16 tensor of `positions`
//! positions (nothing for other layouts or when C is a multiple of the vector).
cudaError_t saiZeroPadChannels(kernels::DriverApi const* api, SaiTensorLayout const& l, void* data, int64_t C,
    int64_t positions, CUstream stream);

inline CUdeviceptr saiDevPtr(void const* p)
{
    return static_cast<CUdeviceptr>(reinterpret_cast<uintptr_t>(p));
}

//! What both ops' Triton builds take: FP32 kLINEAR/kHWC, FP16 and BF16 in every channel-last layout
//! and kLINEAR, an FP32 mask beside FP16/BF16; tactics `ids` with `names` (best first).
SaiKernelCaps saiTritonCaps(int32_t nbTactics, int32_t const* ids, char const* const* names);

//! ceil(a / b) for the grids, as unsigned.
inline unsigned saiGridDim(int64_t a, int64_t b)
{
    return static_cast<unsigned>((a + b - 1) / b);
}

} // namespace sai

#endif // SAI_TRT_PLUGINS_COMMON_SAI_TRITON_LAUNCH_H
