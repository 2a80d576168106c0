/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * saiPluginCommon.h: TensorRT glue helpers shared by the plugins (host C++ only; uses TensorRT
 * types, so it is NOT part of the TensorRT-free math headers the CPU extension includes).
 *
 *   saiSetLoggerFinder / saiLog      the logger obtained through setLoggerFinder (ILoggerFinder)
 *   SaiFieldReader                   validates one PluginField by name, type and length, reporting
 *                                    every problem through the logger
 *   SaiFieldWriter                   owns the storage of a PluginFieldCollection for
 *                                    getFieldsToSerialize (same names/types as createPlugin takes)
 *   saiDimsExpr*                     IExprBuilder helpers for the convolution output size
 *   saiDimsText                      "[1,3,-1,8]": a Dims in the plugins' error messages
 *   saiActivationFormatOk /          TensorRT formats and types of activation tensors vs what the
 *   saiTensorLayoutOf / saiLayoutText  kernels take (saiKernelCaps.h): FP32 kLINEAR/kHWC, FP16
 *                                    kLINEAR/kHWC8/kHWC16, BF16 kLINEAR/kHWC8, each only where the
 *                                    linked kernels read it
 */
#ifndef SAI_TRT_PLUGINS_COMMON_SAI_PLUGIN_COMMON_H
#define SAI_TRT_PLUGINS_COMMON_SAI_PLUGIN_COMMON_H

#include "NvInferRuntime.h"
#include "saiKernelCaps.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sai
{
namespace plugin
{

constexpr char const* kSAI_PLUGIN_VERSION = "1";
constexpr char const* kSAI_PLUGIN_NAMESPACE = "sai";

void saiSetLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;
//! Logs through the TensorRT logger when one was provided; silent otherwise.
void saiLog(nvinfer1::ILogger::Severity severity, std::string const& message) noexcept;
inline void saiLogError(std::string const& message) noexcept
{
    saiLog(nvinfer1::ILogger::Severity::kERROR, message);
}

//! Reads fields of one createPlugin call; every problem is logged (with the plugin and node name)
//! and remembered, so the creator logs them all and returns nullptr.
class SaiFieldReader
{
public:
    SaiFieldReader(std::string pluginName, std::string nodeName);

    //! kINT32, length in [minLen, maxLen], every value in [lo, hi].
    bool readInts(nvinfer1::PluginField const& f, std::vector<int32_t>& out, int32_t minLen, int32_t maxLen,
        int32_t lo, int32_t hi);
    bool readInt(nvinfer1::PluginField const& f, int32_t& out, int32_t lo, int32_t hi);
    //! kFLOAT32 (or kFLOAT64), length 1, finite.
    bool readFloat(nvinfer1::PluginField const& f, float& out);
    //! kCHAR: length = string size + 1 (NUL included, as TensorRT's ONNX parser passes it); a
    //! missing NUL is tolerated.
    bool readString(nvinfer1::PluginField const& f, std::string& out);

    void fail(std::string const& message);
    bool ok() const
    {
        return mOk;
    }

private:
    std::string mPrefix;
    bool mOk{true};
};

class SaiFieldWriter
{
public:
    void addInts(char const* name, std::vector<int32_t> const& values);
    void addFloat(char const* name, float value);
    void addString(char const* name, std::string const& value);
    nvinfer1::PluginFieldCollection const* collection();

private:
    std::vector<std::unique_ptr<std::vector<int32_t>>> mInts;
    std::vector<std::unique_ptr<float>> mFloats;
    std::vector<std::unique_ptr<std::string>> mStrings;
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mCollection{};
};

//! floor((size + padSum - dilation*(k-1) - 1) / stride) + 1 as a dimension expression.
nvinfer1::IDimensionExpr const* saiConvOutputExpr(nvinfer1::IExprBuilder& b, nvinfer1::IDimensionExpr const& size,
    nvinfer1::IDimensionExpr const& kernel, int32_t padSum, int32_t stride, int32_t dilation);

//! "[1,3,-1,8]": the dims as the plugins' messages write them.
std::string saiDimsText(nvinfer1::Dims const& d);

char const* saiDataTypeName(nvinfer1::DataType t);
char const* saiFormatName(nvinfer1::TensorFormat f);

//! The kernels' element type of a TensorRT type; false for types the plugins never take.
bool saiDataTypeOf(nvinfer1::DataType t, SaiDataType& out);
//! The kernels' layout of a TensorRT format for an activation of type `t`; false where TensorRT
//! does not define that format for that type or the plugins do not take it (see the table above).
bool saiLayoutOf(nvinfer1::TensorFormat f, nvinfer1::DataType t, SaiLayout& out);
//! An activation tensor's type and format are ones TensorRT allows and the kernels read.
bool saiActivationFormatOk(nvinfer1::PluginTensorDesc const& d, SaiKernelCaps const& caps);
//! The mask's type and format given the activations' type: the activations' type, or FP32 beside
//! FP16/BF16 where the kernels take an FP32 mask.
bool saiMaskFormatOk(
    nvinfer1::PluginTensorDesc const& mask, nvinfer1::DataType activations, SaiKernelCaps const& caps);
//! Layout, type and strides of a 4-D [N,C,H,W] tensor; false if `d` is not one the kernels take.
bool saiTensorLayoutOf(nvinfer1::PluginTensorDesc const& d, SaiTensorLayout& out);
//! "X FP16 kHWC8 [1,6,5,7] strides n=280 c=1 h=56 w=8" (the verbose log of onShapeChange).
std::string saiLayoutText(char const* tensor, nvinfer1::PluginTensorDesc const& d, SaiTensorLayout const& l);

//! A hash of the I/O dims, types and formats and the tactic: onShapeChange runs inside every enqueue
//! after a setTensorAddress (a server's every request), so the plugins log their layouts only when
//! this changes, and build no text otherwise.
uint64_t saiShapeKey(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
    int32_t nbOutputs, int32_t tactic) noexcept;
//! getNbTactics / getValidTactics from the kernels' tactic list.
int32_t saiValidTactics(SaiKernelCaps const& caps, int32_t* tactics, int32_t nbTactics);

} // namespace plugin
} // namespace sai

#endif // SAI_TRT_PLUGINS_COMMON_SAI_PLUGIN_COMMON_H
