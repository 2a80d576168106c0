/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * launch_capi.cpp: a C ABI over the plugins' launchers (SparseSampleConvRunner, InterpolateRunner)
 * for `make gpu-check` (benchmarks/gpu_check.py, section plugin_kernels): built there with g++ against
 * the CUDA headers and the embedded Triton cubins, loaded with ctypes, called on torch CUDA tensors,
 * so that the exact code a TensorRT engine's enqueue runs is checked and timed on a GPU without
 * TensorRT. One runner per distinct parameter vector, kept for the process, as a plugin instance
 * keeps its own: repeated calls time the steady-state enqueue (builds resolved, weights packed once
 * per W address). Every function returns the cudaError_t of the launch; sai_launch_error() says why.
 *
 * Conv params (int64[24]): N C H W Cout kh kw strideH strideW padTop padLeft padBottom padRight
 *   dilationH dilationW groups deformGroups activation type maskType xLayout maskLayout tactic
 *   hasOffset; types 0 FP32 1 FP16 2 BF16; layouts 0 NCHW 1 NHWC 2 NHWC8 3 NHWC16.
 * Interpolate params (int64[9]) + float[2]: N C H W kernelSize type maskType layout maskLayout;
 *   sigma, eps.
 */
#include "interpolateKernel.h"
#include "saiTritonLaunch.h"
#include "sparseSampleConvKernel.h"

#include <map>
#include <memory>
#include <mutex>
#include <vector>

namespace
{
std::mutex gRunnersMutex;
std::map<std::vector<int64_t>, std::unique_ptr<sai::SparseSampleConvRunner>> gConvRunners;
std::map<std::vector<int64_t>, std::unique_ptr<sai::InterpolateRunner>> gInterpRunners;

template <typename Runner>
Runner& runnerFor(std::map<std::vector<int64_t>, std::unique_ptr<Runner>>& runners, int64_t const* v, size_t n)
{
    std::vector<int64_t> key(v, v + n);
    auto it = runners.find(key);
    if (it == runners.end())
    {
        it = runners.emplace(key, std::make_unique<Runner>()).first;
    }
    return *it->second;
}

bool convParams(int64_t const* v, sai::SaiConvParams& p)
{
    int64_t const w[4] = {v[4], 0, v[5], v[6]}; // Cout, (C/group: not read), kh, kw
    p = sai::saiConvParamsOf(v, w, v + 7, v + 9, v + 13, v[15], v[16], static_cast<int32_t>(v[17]));
    return sai::saiConvFinalize(p);
}

sai::SaiDataType type(int64_t v)
{
    return static_cast<sai::SaiDataType>(v);
}

sai::SaiLayout layout(int64_t v)
{
    return static_cast<sai::SaiLayout>(v);
}
} // namespace

extern "C"
{
    __attribute__((visibility("default"))) char const* sai_launch_error()
    {
        return sai::saiLastLaunchError();
    }

    __attribute__((visibility("default"))) size_t sai_conv_workspace(int64_t const* v)
    {
        sai::SaiConvParams p;
        return convParams(v, p) ? sai::sparseSampleConvWorkspaceSize(p, type(v[18])) : 0;
    }

    __attribute__((visibility("default"))) int sai_conv_launch(int64_t const* v, void const* x, void const* mask,
        void const* weight, void const* bias, void const* offset, void* y, void* ws, size_t wsSize, void* stream)
    {
        sai::SaiConvParams p;
        if (!convParams(v, p))
        {
            return static_cast<int>(cudaErrorInvalidValue);
        }
        sai::SaiDataType const t = type(v[18]);
        sai::SaiConvBuffers b;
        b.x = x;
        b.mask = mask;
        b.weight = weight;
        b.bias = bias;
        b.offset = v[23] ? offset : nullptr;
        b.y = y;
        b.xLayout = sai::saiTensorLayout(layout(v[20]), t, p.C, p.H, p.W);
        b.yLayout = sai::saiTensorLayout(layout(v[20]), t, p.Cout, p.Ho, p.Wo);
        b.offsetLayout = sai::saiTensorLayout(layout(v[20]), t, 2 * p.deformGroups * p.kh * p.kw, p.Ho, p.Wo);
        b.maskLayout = sai::saiTensorLayout(layout(v[21]), type(v[19]), 1, p.Ho, p.Wo);
        b.tactic = static_cast<int32_t>(v[22]);
        std::lock_guard<std::mutex> lock(gRunnersMutex);
        return static_cast<int>(
            runnerFor(gConvRunners, v, 24).run(p, t, b, ws, wsSize, static_cast<cudaStream_t>(stream)));
    }

    __attribute__((visibility("default"))) size_t sai_interp_workspace(int64_t const* v)
    {
        sai::SaiInterpParams p;
        p.N = static_cast<int32_t>(v[0]);
        p.C = static_cast<int32_t>(v[1]);
        p.H = static_cast<int32_t>(v[2]);
        p.W = static_cast<int32_t>(v[3]);
        return sai::interpolateWorkspaceSize(p, type(v[5]));
    }

    __attribute__((visibility("default"))) int sai_interp_launch(int64_t const* v, float const* f, void const* feature,
        void const* mask, void* out, void* ws, size_t wsSize, void* stream)
    {
        sai::SaiInterpParams p;
        p.N = static_cast<int32_t>(v[0]);
        p.C = static_cast<int32_t>(v[1]);
        p.H = static_cast<int32_t>(v[2]);
        p.W = static_cast<int32_t>(v[3]);
        p.kernelSize = static_cast<int32_t>(v[4]);
        p.sigma = f[0];
        p.eps = f[1];
        sai::SaiDataType const t = type(v[5]);
        sai::SaiInterpLayouts l;
        l.feature = sai::saiTensorLayout(layout(v[7]), t, p.C, p.H, p.W);
        l.out = l.feature;
        l.mask = sai::saiTensorLayout(layout(v[8]), type(v[6]), 1, p.H, p.W);
        std::lock_guard<std::mutex> lock(gRunnersMutex);
        return static_cast<int>(runnerFor(gInterpRunners, v, 9)
                                    .run(p, t, l, 0, feature, mask, out, ws, wsSize, static_cast<cudaStream_t>(stream)));
    }
}
