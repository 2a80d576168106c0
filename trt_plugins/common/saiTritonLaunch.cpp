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

cudaError_t saiPartition(void const* mask, SaiTensorLayout const& maskLayout, int64_t positions, int32_t H,
    int32_t W, char const* mode, void* idx, void* count, cudaStream_t cudaStream)
{
    std::string const spec = std::string("mask_partition_") + saiTypeTag(maskLayout.type) + "_" + mode;
    cudaError_t err = cudaSuccess;
    kernels::KernelImage const* img = saiImage(spec, 1, &err);
    if (img == nullptr)
    {
        return err;
    }
    auto const stream = reinterpret_cast<CUstream>(cudaStream);
    CUresult r = kernels::memsetAsync(static_cast<CUdeviceptr>(reinterpret_cast<uintptr_t>(count)), 0, 8, stream);
    if (r != CUDA_SUCCESS)
    {
        return saiLaunchError(r, "zeroing the partition counts");
    }
    using kernels::Arg;
    Arg const args[] = {Arg::ptr("m_ptr", mask), Arg::ptr("idx_ptr", idx), Arg::ptr("cnt_ptr", count),
        Arg::i("P", positions), Arg::i("H", H), Arg::i("W", W), Arg::i("smn", maskLayout.strides.n),
        Arg::i("smh", maskLayout.strides.h), Arg::i("smw", maskLayout.strides.w)};
    r = kernels::launchNamed(
        img, stream, saiGridDim(positions, img->tileRows), 1, 1, args, static_cast<int>(sizeof(args) / sizeof(args[0])));
    return r == CUDA_SUCCESS ? cudaSuccess : saiLaunchError(r, spec + ": " + kernels::lastError());
}

cudaError_t saiZeroPadChannels(SaiTensorLayout const& l, void* data, int64_t C, int64_t positions, cudaStream_t stream)
{
    int64_t const v = saiLayoutVector(l.layout);
    int64_t const padded = (C + v - 1) / v * v;
    if (v == 1 || padded == C || positions == 0)
    {
        return cudaSuccess;
    }
    size_t const es = saiDataTypeSize(l.type);
    auto const dst = static_cast<CUdeviceptr>(reinterpret_cast<uintptr_t>(data)) + static_cast<CUdeviceptr>(C * es);
    CUresult const r = kernels::memset2DAsync(dst, static_cast<size_t>(padded) * es, 0,
        static_cast<size_t>(padded - C) * es, static_cast<size_t>(positions), reinterpret_cast<CUstream>(stream));
    return r == CUDA_SUCCESS ? cudaSuccess : saiLaunchError(r, "zeroing the padding channels");
}

} // namespace sai
