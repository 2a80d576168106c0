/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * saiTritonLaunch.cpp: see saiTritonLaunch.h.
 */
#include "saiTritonLaunch.h"

namespace sai
{
namespace
{
thread_local std::string tLaunchError;

cudaError_t toCudaError(CUresult r)
{
    switch (r)
    {
    case CUDA_SUCCESS: return cudaSuccess;
    case CUDA_ERROR_INVALID_VALUE: return cudaErrorInvalidValue;
    case CUDA_ERROR_NO_BINARY_FOR_GPU: return cudaErrorNoKernelImageForDevice;
    case CUDA_ERROR_NOT_INITIALIZED: return cudaErrorInitializationError;
    case CUDA_ERROR_INVALID_CONTEXT: return cudaErrorDeviceUninitialized;
    case CUDA_ERROR_OUT_OF_MEMORY: return cudaErrorMemoryAllocation;
    case CUDA_ERROR_NOT_SUPPORTED: return cudaErrorNotSupported;
    default: return cudaErrorLaunchFailure;
    }
}
} // namespace

char const* saiLastLaunchError()
{
    return tLaunchError.c_str();
}

void saiClearLaunchError()
{
    tLaunchError.clear();
}

cudaError_t saiLaunchError(CUresult r, std::string const& what)
{
    tLaunchError = what + " (CUresult " + std::to_string(static_cast<int32_t>(r)) + ")";
    return toCudaError(r);
}

kernels::KernelImage const* saiImage(std::string const& spec, int32_t tactic, cudaError_t* err)
{
    int cc = 0;
    CUresult const r = kernels::currentCapability(&cc);
    if (r != CUDA_SUCCESS)
    {
        *err = saiLaunchError(r, "no CUDA driver or context for " + spec);
        return nullptr;
    }
    kernels::KernelImage const* img = kernels::findImage(spec.c_str(), cc, tactic > 0 ? tactic : 1);
    if (img == nullptr)
    {
        *err = saiLaunchError(CUDA_ERROR_NO_BINARY_FOR_GPU,
            "the library carries no " + spec + " kernel for sm_" + std::to_string(cc) + " (rebuild with make kernels)");
    }
    return img;
}

SaiKernelCaps saiTritonCaps(int32_t nbTactics, int32_t const* ids, char const* const* names)
{
    SaiKernelCaps c;
    uint32_t const hwc
        = saiLayoutBit(SaiLayout::kNHWC) | saiLayoutBit(SaiLayout::kNHWC8) | saiLayoutBit(SaiLayout::kNHWC16);
    c.layouts[static_cast<int32_t>(SaiDataType::kFLOAT)] = saiLayoutBit(SaiLayout::kNCHW) | saiLayoutBit(SaiLayout::kNHWC);
    c.layouts[static_cast<int32_t>(SaiDataType::kHALF)] = saiLayoutBit(SaiLayout::kNCHW) | hwc;
    c.layouts[static_cast<int32_t>(SaiDataType::kBF16)] = saiLayoutBit(SaiLayout::kNCHW) | hwc;
    c.fp32Mask = true;
    c.nbTactics = nbTactics;
    for (int32_t i = 0; i < nbTactics && i < kSAI_MAX_TACTICS; ++i)
    {
        c.tactics[i] = ids[i];
        c.tacticNames[i] = names[i];
    }
    return c;
}

cudaError_t saiResolve(std::string const& spec, int32_t tactic, kernels::ResolvedKernel* out)
{
    cudaError_t err = cudaSuccess;
    kernels::KernelImage const* img = saiImage(spec, tactic, &err);
    if (img == nullptr)
    {
        return err;
    }
    CUresult const r = kernels::resolveKernel(img, out);
    return r == CUDA_SUCCESS ? cudaSuccess : saiLaunchError(r, "loading " + spec);
}

cudaError_t saiCurrentContext(SaiLaunchContext& c, bool* changed)
{
    uint64_t const gen = kernels::generation();
    *changed = false;
    if (c.api == nullptr || c.generation != gen)
    {
        CUresult const r = kernels::driverApi(&c.api);
        if (r != CUDA_SUCCESS)
        {
            return saiLaunchError(r, "no CUDA driver");
        }
        c.generation = gen;
        *changed = true;
    }
    CUcontext ctx = nullptr;
    CUresult const r = c.api->ctxGetCurrent(&ctx);
    if (r != CUDA_SUCCESS || ctx == nullptr)
    {
        return saiLaunchError(r != CUDA_SUCCESS ? r : CUDA_ERROR_INVALID_CONTEXT, "no current CUDA context");
    }
    *changed = *changed || ctx != c.ctx;
    c.ctx = ctx;
    return cudaSuccess;
}

cudaError_t saiPartitionResolve(SaiDataType maskType, char const* mode, SaiPartitionPlan* plan)
{
    return saiResolve(std::string("mask_partition_") + saiTypeTag(maskType) + "_" + mode, 1, &plan->kernel);
}

void saiPartitionArgs(SaiTensorLayout const& maskLayout, int64_t positions, int32_t H, int32_t W, bool lt1,
    SaiPartitionPlan* plan)
{
    kernels::MaskPartitionKernelArgs& a = plan->args;
    a = kernels::MaskPartitionKernelArgs{};
    a.P = positions;
    a.H = H;
    a.W = W;
    a.smn = maskLayout.strides.n;
    a.smh = maskLayout.strides.h;
    a.smw = maskLayout.strides.w;
    a.MODE_LT1 = lt1 ? 1 : 0;
    plan->grid = saiGridDim(positions, plan->kernel.image->tileRows);
}

cudaError_t saiPartitionRun(
    kernels::DriverApi const* api, SaiPartitionPlan& plan, void const* mask, void* idx, void* count, CUstream stream)
{
    CUresult r = api->memsetD8Async(saiDevPtr(count), 0, 8, stream);
    if (r != CUDA_SUCCESS)
    {
        return saiLaunchError(r, "zeroing the partition counts");
    }
    plan.args.m_ptr = saiDevPtr(mask);
    plan.args.idx_ptr = saiDevPtr(idx);
    plan.args.cnt_ptr = saiDevPtr(count);
    r = kernels::launch(plan.kernel, stream, plan.grid, 1, 1, plan.args);
    return r == CUDA_SUCCESS ? cudaSuccess
                             : saiLaunchError(r, std::string(plan.kernel.image->spec) + ": " + kernels::lastError());
}

cudaError_t saiZeroPadChannels(
    kernels::DriverApi const* api, SaiTensorLayout const& l, void* data, int64_t C, int64_t positions, CUstream stream)
{
    int64_t const v = saiLayoutVector(l.layout);
    int64_t const padded = (C + v - 1) / v * v;
    if (v == 1 || padded == C || positions == 0)
    {
        return cudaSuccess;
    }
    size_t const es = saiDataTypeSize(l.type);
    CUdeviceptr const dst = saiDevPtr(data) + static_cast<CUdeviceptr>(C * es);
    CUresult const r = api->memsetD2D8Async(dst, static_cast<size_t>(padded) * es, 0,
        static_cast<size_t>(padded - C) * es, static_cast<size_t>(positions), stream);
    return r == CUDA_SUCCESS ? cudaSuccess : saiLaunchError(r, "zeroing the padding channels");
}

} // namespace sai
