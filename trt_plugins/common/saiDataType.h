/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * saiDataType.h: the element type tag passed from the plugin glue to the kernel launchers.
 *   enum class SaiDataType { kFLOAT, kHALF, kBF16 }   the activations of one op call have this type
 *                                                    (the mask may be kFLOAT beside kHALF/kBF16)
 *   saiDataTypeSize(SaiDataType) -> bytes per element
 */
#ifndef SAI_TRT_PLUGINS_COMMON_SAI_DATA_TYPE_H
#define SAI_TRT_PLUGINS_COMMON_SAI_DATA_TYPE_H

#include <cstddef>
#include <cstdint>

namespace sai
{

enum class SaiDataType : int32_t
{
    kFLOAT = 0,
    kHALF = 1,
    kBF16 = 2,
};
constexpr int32_t kSAI_NB_DATA_TYPES = 3;

inline size_t saiDataTypeSize(SaiDataType t)
{
    return t == SaiDataType::kFLOAT ? 4 : 2;
}

} // namespace sai

#endif // SAI_TRT_PLUGINS_COMMON_SAI_DATA_TYPE_H
