/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * saiCudaUtils.cuh: small device helpers shared by the .cu files (CUDA only; not used by the CPU
 * builds). Compiles under nvcc and NVRTC.
 *
 *   saiAlignUp(v, a)                    round up to a multiple of a (host/device).
 *   saiCompactAppend(active, index, list, count)
 *       warp-aggregated append: every lane of a warp must call it (uniform control flow); lanes
 *       with `active` get a slot in `list` through one atomicAdd per warp on the device-side
 *       `count`. The list order is not deterministic; every consumer is order independent.
 *   kSAI_MAX_GRID_BLOCKS                grid cap of the grid-stride kernels (worst-case sized
 *                                       launches that read the real work count on the device).
 */
#ifndef SAI_TRT_PLUGINS_COMMON_SAI_CUDA_UTILS_CUH
#define SAI_TRT_PLUGINS_COMMON_SAI_CUDA_UTILS_CUH

#include "saiCommon.h"

namespace sai
{

constexpr int32_t kSAI_MAX_GRID_BLOCKS = 8192;
constexpr int32_t kSAI_THREADS = 256;

SAI_INLINE int64_t saiAlignUp(int64_t v, int64_t a)
{
    return (v + a - 1) / a * a;
}

SAI_INLINE int64_t saiCeilDiv(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

__device__ inline void saiCompactAppend(bool active, int32_t index, int32_t* list, int32_t* count)
{
    unsigned const ballot = __ballot_sync(0xffffffffU, active);
    if (ballot == 0U)
    {
        return;
    }
    int32_t const lane = static_cast<int32_t>(threadIdx.x & 31U);
    int32_t const leader = __ffs(static_cast<int>(ballot)) - 1;
    int32_t base = 0;
    if (lane == leader)
    {
        base = atomicAdd(count, __popc(ballot));
    }
    base = __shfl_sync(0xffffffffU, base, leader);
    if (active)
    {
        unsigned const below = ballot & ((1U << lane) - 1U);
        list[base + __popc(below)] = index;
    }
}

} // namespace sai

#endif // SAI_TRT_PLUGINS_COMMON_SAI_CUDA_UTILS_CUH
