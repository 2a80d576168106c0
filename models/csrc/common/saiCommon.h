/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * saiCommon.h: the small layer shared by the CPU kernels (the PyTorch C++ extension, libsai_ort_ops.so), the
 * TensorRT plugins' host code and trt_plugins/tests/cpu_ops.cpp. Plain host C++ (the GPU kernels are Triton's,
 * built to cubins in kernels/: no CUDA source includes these headers); no TensorRT and no CUDA types.
 *
 * API
 *   SAI_INLINE               `inline` (every function of the shared headers uses it).
 *   saiToFloat<T>(T v)       converts a storage value (float, __half, at::Half, ...) to float;
 *                            default is static_cast<float>; specialise for a type without it.
 *   saiFromFloat<T>(float v) converts back (default static_cast<T>).
 *   enum SaiActivation       kSAI_ACT_NONE = 0, kSAI_ACT_RELU = 1 (wire values of the plugins).
 *   saiActivationFromString(const char*) -> int: the SaiActivation of "none"/"relu", -1 otherwise.
 *   saiApplyActivation(float v, int act) -> float.
 *   saiMaskActive(float m)   -> bool: m > 0 (the positions SparseSampleConv computes, DESIGN 3.2).
 *   saiMaskNeedsInterp(float m) -> bool: m < 1 (the positions Interpolate fills, DESIGN 3.3).
 *
 * All arithmetic in the shared headers is done in float, whatever T is (fp16 storage, fp32 math).
 */
#ifndef SAI_TRT_PLUGINS_COMMON_SAI_COMMON_H
#define SAI_TRT_PLUGINS_COMMON_SAI_COMMON_H

#include <cmath>
#include <cstdint>

#define SAI_INLINE inline

namespace sai
{

template <typename T>
SAI_INLINE float saiToFloat(T v)
{
    return static_cast<float>(v);
}

template <typename T>
SAI_INLINE T saiFromFloat(float v)
{
    return static_cast<T>(v);
}

enum SaiActivation : int32_t
{
    kSAI_ACT_NONE = 0,
    kSAI_ACT_RELU = 1,
};

//! The activation code of a name ("none" | "relu"), or -1 for anything else (host only use).
inline int32_t saiActivationFromString(char const* s)
{
    if (s == nullptr)
    {
        return -1;
    }
    auto eq = [](char const* a, char const* b) {
        while (*a != '\0' && *a == *b)
        {
            ++a;
            ++b;
        }
        return *a == *b;
    };
    if (eq(s, "none"))
    {
        return kSAI_ACT_NONE;
    }
    if (eq(s, "relu"))
    {
        return kSAI_ACT_RELU;
    }
    return -1;
}

inline char const* saiActivationName(int32_t act)
{
    return act == kSAI_ACT_RELU ? "relu" : "none";
}

SAI_INLINE float saiApplyActivation(float v, int32_t act)
{
    return (act == kSAI_ACT_RELU && v < 0.F) ? 0.F : v;
}

SAI_INLINE bool saiMaskActive(float m)
{
    return m > 0.F;
}

SAI_INLINE bool saiMaskNeedsInterp(float m)
{
    return m < 1.F;
}

} // namespace sai

#endif // SAI_TRT_PLUGINS_COMMON_SAI_COMMON_H
