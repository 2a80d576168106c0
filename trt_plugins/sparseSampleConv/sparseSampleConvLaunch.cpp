/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * sai::SparseSampleConv on the AOT-compiled Triton kernels (kernels/sparse_sample_conv.py, built by
 * `make kernels` for sm_75..sm_120 and embedded in the library); see sparseSampleConvKernel.h for
 * the pipeline. Host code only: every step is a stream-ordered memset or kernel launch.
 */
#include "sparseSampleConvKernel.h"

#include "saiTritonLaunch.h"

#include <string>

namespace sai
{
namespace
{
using kernels::Arg;

struct ConvWorkspace
{
    void* idx;    //!< int32 [P]: the partition of the output positions, active first
    void* count;  //!< int32 [2]: active, inactive
    void* weight; //!< [g, tap, Cin/g, Cout/g], the type of X
    void* bias;   //!< [Cout] zeros, the type of X (the builds always read a bias)
    size_t total;
};

ConvWorkspace convWorkspace(SaiConvParams const& p, SaiDataType type, void* base)
{
    SaiWorkspace ws(base);
    size_t const es = saiDataTypeSize(type);
    int64_t const positions = static_cast<int64_t>(p.N) * p.Ho * p.Wo;
    ConvWorkspace w{};
    w.idx = ws.take(static_cast<size_t>(positions > 0 ? positions : 1) * 4);
    w.count = ws.take(2 * 4);
    w.weight = ws.take(static_cast<size_t>(p.Cout) * p.cinPerGroup * p.kh * p.kw * es);
    w.bias = ws.take(static_cast<size_t>(p.Cout) * es);
    w.total = ws.used();
    return w;
}

//! The name of the build that runs this call ("fast" where the layouts and sizes allow it).
std::string convSpec(SaiConvParams const& p, SaiDataType type, SaiConvBuffers const& b)
{
    bool const deform = b.offset != nullptr;
    bool const relu = p.activation == kSAI_ACT_RELU;
    bool const square = p.kh == p.kw && (p.kh == 3 || (p.kh == 1 && !deform));
    bool const fast = type != SaiDataType::kFLOAT && square && p.cinPerGroup % 16 == 0 && p.coutPerGroup % 16 == 0
        && saiAligned16(b.xLayout, p.C) && saiAligned16(b.yLayout, p.Cout) && saiAligned16(b.x) && saiAligned16(b.y)
        && (!deform || b.offsetLayout.strides.c == 1);
    std::string spec = std::string("sparse_conv_") + saiTypeTag(type);
    spec += fast ? "_k" + std::to_string(p.kh) : std::string("_any");
    spec += deform ? "_deform" : "";
    spec += relu ? "_relu" : "";
    return spec;
}

CUdeviceptr devptr(void const* p)
{
    return static_cast<CUdeviceptr>(reinterpret_cast<uintptr_t>(p));
}

//! W [Cout, Cin/g, kh, kw] -> [g, tap, Cin/g, Cout/g] with the strided copy kernel.
cudaError_t packWeight(SaiConvParams const& p, SaiDataType type, void const* weight, void* packed, CUstream stream)
{
    int64_t const g = p.groups, cog = p.coutPerGroup, cig = p.cinPerGroup, taps = p.kh * p.kw;
    int64_t const total = g * cog * cig * taps;
    std::string const spec = saiDataTypeSize(type) == 2 ? "copy4d_b16" : "copy4d_b32";
    cudaError_t err = cudaSuccess;
    kernels::KernelImage const* img = saiImage(spec, 1, &err);
    if (img == nullptr)
    {
        return err;
    }
    Arg const args[] = {Arg::ptr("src_ptr", weight), Arg::ptr("dst_ptr", packed), Arg::i("TOTAL", total),
        Arg::i("D1", cog), Arg::i("D2", cig), Arg::i("D3", taps), Arg::i("ss0", cog * cig * taps),
        Arg::i("ss1", cig * taps), Arg::i("ss2", taps), Arg::i("ss3", 1), Arg::i("sd0", taps * cig * cog),
        Arg::i("sd1", 1), Arg::i("sd2", cog), Arg::i("sd3", cig * cog)};
    CUresult const r = kernels::launchNamed(
        img, stream, saiGridDim(total, img->tileRows), 1, 1, args, static_cast<int>(sizeof(args) / sizeof(args[0])));
    return r == CUDA_SUCCESS ? cudaSuccess : saiLaunchError(r, spec + ": " + kernels::lastError());
}

} // namespace

SaiKernelCaps const& sparseSampleConvKernelCaps()
{
    // the Triton builds: channel-last layouts (fast where aligned) and NCHW, a mask in FP32 beside
    // FP16/BF16 activations, two tile configs as tactics (aot.py TACTICS: 1 tuned, 2 64x64x32)
    static int32_t const kIds[] = {1, 2};
    static char const* const kNames[] = {"triton-tuned", "triton-tile64x64x32"};
    static SaiKernelCaps const caps = saiTritonCaps(2, kIds, kNames);
    return caps;
}

size_t sparseSampleConvWorkspaceSize(SaiConvParams const& p, SaiDataType type)
{
    return convWorkspace(p, type, nullptr).total;
}

cudaError_t sparseSampleConvLaunch(SaiConvParams const& p, SaiDataType type, SaiConvBuffers const& b, void* workspace,
    size_t workspaceSize, cudaStream_t cudaStream)
{
    saiClearLaunchError();
    SaiKernelCaps const& caps = sparseSampleConvKernelCaps();
    for (SaiTensorLayout const* l : {&b.xLayout, &b.yLayout})
    {
        if (l->type != type || !saiCapsLayout(caps, type, l->layout))
        {
            return saiLaunchError(CUDA_ERROR_NOT_SUPPORTED, "X/Y layout or type not supported");
        }
    }
    if (b.maskLayout.type != type && !(caps.fp32Mask && b.maskLayout.type == SaiDataType::kFLOAT))
    {
        return saiLaunchError(CUDA_ERROR_NOT_SUPPORTED, "mask type not supported");
    }
    if (b.offset != nullptr && b.offsetLayout.type != type)
    {
        return saiLaunchError(CUDA_ERROR_NOT_SUPPORTED, "offset type differs from X");
    }
    if (b.tactic != 0 && !saiCapsTactic(caps, b.tactic))
    {
        return saiLaunchError(CUDA_ERROR_INVALID_VALUE, "unknown tactic " + std::to_string(b.tactic));
    }
    ConvWorkspace const ws = convWorkspace(p, type, workspace);
    if (workspace == nullptr || workspaceSize < ws.total)
    {
        return saiLaunchError(CUDA_ERROR_INVALID_VALUE,
            "workspace of " + std::to_string(workspaceSize) + " bytes, " + std::to_string(ws.total) + " needed");
    }
    auto const stream = reinterpret_cast<CUstream>(cudaStream);
    int64_t const positions = static_cast<int64_t>(p.N) * p.Ho * p.Wo;
    size_t const es = saiDataTypeSize(type);
    if (positions == 0)
    {
        return cudaSuccess;
    }

    // 1. the partition of the output positions: mask > 0 first, the count on the device
    cudaError_t err = saiPartition(b.mask, b.maskLayout, positions, p.Ho, p.Wo, "gt0", ws.idx, ws.count, cudaStream);
    if (err != cudaSuccess)
    {
        return err;
    }

    // 2. the weights in the kernel's order, a zero bias where the node has none
    if ((err = packWeight(p, type, b.weight, ws.weight, stream)) != cudaSuccess)
    {
        return err;
    }
    void const* bias = b.bias;
    CUresult r = CUDA_SUCCESS;
    if (bias == nullptr)
    {
        if ((r = kernels::memsetAsync(devptr(ws.bias), 0, static_cast<size_t>(p.Cout) * es, stream)) != CUDA_SUCCESS)
        {
            return saiLaunchError(r, "zeroing the bias");
        }
        bias = ws.bias;
    }

    // 3. the implicit GEMM over the active positions; every output position written once
    std::string const spec = convSpec(p, type, b);
    kernels::KernelImage const* img = saiImage(spec, b.tactic, &err);
    if (img == nullptr)
    {
        return err;
    }
    bool const deform = b.offset != nullptr;
    SaiStrides const xs = b.xLayout.strides, ys = b.yLayout.strides;
    SaiStrides const os = deform ? b.offsetLayout.strides : SaiStrides{};
    Arg const args[] = {Arg::ptr("x_ptr", b.x), Arg::ptr("w_ptr", ws.weight), Arg::ptr("b_ptr", bias),
        Arg::ptr("off_ptr", deform ? b.offset : b.x), Arg::ptr("idx_ptr", ws.idx), Arg::ptr("cnt_ptr", ws.count),
        Arg::ptr("y_ptr", b.y), Arg::i("P", positions), Arg::i("H", p.H), Arg::i("W", p.W), Arg::i("Ho", p.Ho),
        Arg::i("Wo", p.Wo), Arg::i("CIN_G", p.cinPerGroup), Arg::i("COUT_G", p.coutPerGroup),
        Arg::i("CIN_DG", p.C / (p.deformGroups > 0 ? p.deformGroups : 1)), Arg::i("sxn", xs.n), Arg::i("sxc", xs.c),
        Arg::i("sxh", xs.h), Arg::i("sxw", xs.w), Arg::i("son", os.n), Arg::i("soc", os.c), Arg::i("soh", os.h),
        Arg::i("sow", os.w), Arg::i("syn", ys.n), Arg::i("syc", ys.c), Arg::i("syh", ys.h), Arg::i("syw", ys.w),
        Arg::i("STRIDE_H", p.strideH), Arg::i("STRIDE_W", p.strideW), Arg::i("PAD_T", p.padTop),
        Arg::i("PAD_L", p.padLeft), Arg::i("DIL_H", p.dilationH), Arg::i("DIL_W", p.dilationW), Arg::i("KH", p.kh),
        Arg::i("KW", p.kw), Arg::i("HAS_BIAS", 1), Arg::i("DEFORM", deform ? 1 : 0),
        Arg::i("RELU", p.activation == kSAI_ACT_RELU ? 1 : 0), Arg::i("UPCAST_DOT", 0)};
    unsigned const gridY = static_cast<unsigned>(p.groups) * saiGridDim(p.coutPerGroup, img->tileCols);
    r = kernels::launchNamed(img, stream, saiGridDim(positions, img->tileRows), gridY, 1, args,
        static_cast<int>(sizeof(args) / sizeof(args[0])));
    if (r != CUDA_SUCCESS)
    {
        return saiLaunchError(r, spec + ": " + kernels::lastError());
    }

    // 4. zeros in the padding channels of a vectorised output
    return saiZeroPadChannels(b.yLayout, b.y, p.Cout, positions, cudaStream);
}

} // namespace sai
