/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * saiDataType.h: the element type tag passed from the plugin glue to the kernel launchers.
 *   enum class SaiDataType { kFLOAT, kHALF }   every tensor of one op call has this type
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
};

inline size_t saiDataTypeSize(SaiDataType t)
{
    return t == SaiDataType::kHALF ? 2 : 4;
}

} // namespace sai

#endif // SAI_TRT_PLUGINS_COMMON_SAI_DATA_TYPE_H
