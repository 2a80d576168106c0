/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * saiKernelCaps.h: what the plugin glue and the kernel launchers agree on beyond the op math, with
 * no TensorRT types (the glue maps TensorRT formats onto these):
 *
 *   SaiLayout          memory layout of one activation tensor [N,C,H,W]: kNCHW (TensorRT kLINEAR),
 *                      kNHWC (kHWC), kNHWC8 / kNHWC16 (kHWC8 / kHWC16: C padded to a multiple of 8/16)
 *   SaiStrides         element strides (n, c, h, w) a layout implies; saiLayoutStrides computes them
 *   SaiTensorLayout    layout + element type + strides of one tensor, handed to the launchers
 *   SaiKernelCaps      what the linked kernels read and write: the layouts per element type, whether
 *                      the mask may stay FP32 beside FP16/BF16 activations, and their tactics
 *
 * The glue offers TensorRT exactly what SaiKernelCaps says, so an engine never hands the kernels a
 * layout they cannot read. Vectorised layouts: the launchers write the padding channels of an
 * output as 0.
 */
#ifndef SAI_TRT_PLUGINS_COMMON_SAI_KERNEL_CAPS_H
#define SAI_TRT_PLUGINS_COMMON_SAI_KERNEL_CAPS_H

#include "saiDataType.h"

#include <cstdint>

namespace sai
{

enum class SaiLayout : int32_t
{
    kNCHW = 0,
    kNHWC = 1,
    kNHWC8 = 2,
    kNHWC16 = 3,
};

constexpr uint32_t saiLayoutBit(SaiLayout l)
{
    return 1U << static_cast<uint32_t>(l);
}

//! Channels per vector: C is padded to a multiple of this in memory.
inline int32_t saiLayoutVector(SaiLayout l)
{
    return l == SaiLayout::kNHWC8 ? 8 : (l == SaiLayout::kNHWC16 ? 16 : 1);
}

inline char const* saiLayoutName(SaiLayout l)
{
    switch (l)
    {
    case SaiLayout::kNCHW: return "NCHW";
    case SaiLayout::kNHWC: return "NHWC";
    case SaiLayout::kNHWC8: return "NHWC8";
    case SaiLayout::kNHWC16: return "NHWC16";
    }
    return "?";
}

struct SaiStrides
{
    int64_t n{0};
    int64_t c{0};
    int64_t h{0};
    int64_t w{0};
};

//! Element strides of a [N,C,H,W] tensor stored in layout `l`.
inline SaiStrides saiLayoutStrides(SaiLayout l, int64_t C, int64_t H, int64_t W)
{
    SaiStrides s;
    if (l == SaiLayout::kNCHW)
    {
        s.w = 1;
        s.h = W;
        s.c = H * W;
        s.n = C * H * W;
        return s;
    }
    int64_t const v = saiLayoutVector(l);
    int64_t const cPadded = (C + v - 1) / v * v;
    s.c = 1;
    s.w = cPadded;
    s.h = W * cPadded;
    s.n = H * W * cPadded;
    return s;
}

struct SaiTensorLayout
{
    SaiLayout layout{SaiLayout::kNCHW};
    SaiDataType type{SaiDataType::kFLOAT};
    SaiStrides strides{};
};

inline SaiTensorLayout saiTensorLayout(SaiLayout l, SaiDataType t, int64_t C, int64_t H, int64_t W)
{
    SaiTensorLayout out;
    out.layout = l;
    out.type = t;
    out.strides = saiLayoutStrides(l, C, H, W);
    return out;
}

constexpr int32_t kSAI_MAX_TACTICS = 16;

struct SaiKernelCaps
{
    //! Bit set of saiLayoutBit(...) per SaiDataType of the activations; 0: type not supported.
    uint32_t layouts[kSAI_NB_DATA_TYPES]{};
    //! The mask may be FP32 while the activations are FP16/BF16 (mask subgraph kept in FP32).
    bool fp32Mask{false};
    //! Tactics (TensorRT: unique, non-zero values), best first; the first one is the default.
    int32_t nbTactics{0};
    int32_t tactics[kSAI_MAX_TACTICS]{};
    char const* tacticNames[kSAI_MAX_TACTICS]{};
};

inline bool saiCapsLayout(SaiKernelCaps const& caps, SaiDataType t, SaiLayout l)
{
    return (caps.layouts[static_cast<int32_t>(t)] & saiLayoutBit(l)) != 0;
}

inline bool saiCapsTactic(SaiKernelCaps const& caps, int32_t tactic)
{
    for (int32_t i = 0; i < caps.nbTactics; ++i)
    {
        if (caps.tactics[i] == tactic)
        {
            return true;
        }
    }
    return false;
}

//! Why the last kernel launch of this thread failed ("" after a successful one): the launchers
//! set it, the glue adds it to the error it logs.
char const* saiLastLaunchError();

} // namespace sai

#endif // SAI_TRT_PLUGINS_COMMON_SAI_KERNEL_CAPS_H
