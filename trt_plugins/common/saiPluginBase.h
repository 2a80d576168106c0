/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * saiPluginBase.h: the IPluginV3 pieces both sai plugins share, written once (glue code: TensorRT
 * types). A plugin derives from SaiPluginBase<Self, Attrs> and keeps what it does to itself: shapes,
 * types, formats, configure, workspace, enqueue, the fields it serializes, and the text of its
 * attributes for the timing cache. The base gives
 *   - the three capability interfaces, name / version / namespace, one output;
 *   - clone() and attachToContext(): a copy of the attributes and the tactic set by setTactic
 *     (and whatever Self::copyStateFrom copies, e.g. the input count; attachToContext's copy then
 *     gets Self::onAttached, e.g. weights shared by the execution contexts of an engine);
 *   - tactics from the kernels' caps (Self::kernelCaps()): getNbTactics / getValidTactics, setTactic
 *     rejecting values outside that list (0 = the default);
 *   - getTimingCacheID / getMetadataString: "sai.<name>.<version>:<attributes>:tactics,<id>=<name>...";
 *   - getFieldsToSerialize: a fresh field list filled by Self::writeFields(SaiFieldWriter&) (the same
 *     names and types createPlugin reads), any exception logged and nullptr.
 * SaiPluginCreatorBase<Plugin, Self> gives a creator its name / version / namespace, field list and
 * createPlugin: the walk over the fields (unknown ones logged verbose and ignored, every problem
 * logged with the plugin and node name, nullptr if any); Self::readField(reader, name, field, attrs)
 * reads and checks one field it knows (returns false for a name it does not know).
 */
#ifndef SAI_TRT_PLUGINS_COMMON_SAI_PLUGIN_BASE_H
#define SAI_TRT_PLUGINS_COMMON_SAI_PLUGIN_BASE_H

#include "NvInferRuntime.h"
#include "saiKernelCaps.h"
#include "saiPluginCommon.h"

#include <exception>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace sai
{
namespace plugin
{

template <typename Self, typename AttrsT>
class SaiPluginBase : public nvinfer1::IPluginV3,
                      public nvinfer1::IPluginV3OneCore,
                      public nvinfer1::IPluginV3OneBuild,
                      public nvinfer1::IPluginV3OneRuntime
{
public:
    using Attrs = AttrsT;

    explicit SaiPluginBase(Attrs attrs)
        : mAttrs(std::move(attrs))
    {
    }
    ~SaiPluginBase() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override
    {
        switch (type)
        {
        case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
        case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
        case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
        }
        return nullptr;
    }

    nvinfer1::IPluginV3* clone() noexcept override
    {
        try
        {
            auto* p = new Self(mAttrs);
            p->mTactic = mTactic;
            p->copyStateFrom(self());
            return p;
        }
        catch (std::exception const& e)
        {
            logError(std::string("clone failed: ") + e.what());
        }
        return nullptr;
    }

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override
    {
        return Self::kName;
    }
    char const* getPluginVersion() const noexcept override
    {
        return kSAI_PLUGIN_VERSION;
    }
    char const* getPluginNamespace() const noexcept override
    {
        return kSAI_PLUGIN_NAMESPACE;
    }

    // IPluginV3OneBuild: the parts that do not depend on the op
    int32_t getNbOutputs() const noexcept override
    {
        return 1;
    }
    //! Tactics: the kernels' tile configs (SaiKernelCaps::tactics), timed by the builder.
    int32_t getNbTactics() noexcept override
    {
        return Self::kernelCaps().nbTactics;
    }
    int32_t getValidTactics(int32_t* tactics, int32_t nbTactics) noexcept override
    {
        return saiValidTactics(Self::kernelCaps(), tactics, nbTactics);
    }
    //! The I/O shapes and formats are added by TensorRT; what else decides the timing: the
    //! attributes and the kernels' tactic list.
    char const* getTimingCacheID() noexcept override
    {
        try
        {
            std::ostringstream s;
            s << "sai." << Self::kName << "." << kSAI_PLUGIN_VERSION << ":" << self().attributesText() << ":tactics";
            SaiKernelCaps const& caps = Self::kernelCaps();
            for (int32_t i = 0; i < caps.nbTactics; ++i)
            {
                s << "," << caps.tactics[i] << "=" << (caps.tacticNames[i] != nullptr ? caps.tacticNames[i] : "");
            }
            mTimingCacheID = s.str();
            return mTimingCacheID.c_str();
        }
        catch (std::exception const&)
        {
        }
        return nullptr;
    }
    char const* getMetadataString() noexcept override
    {
        return getTimingCacheID();
    }

    // IPluginV3OneRuntime: the parts that do not depend on the op
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override
    {
        try
        {
            mSerial = SaiFieldWriter();
            self().writeFields(mSerial);
            return mSerial.collection();
        }
        catch (std::exception const& e)
        {
            logError(std::string("getFieldsToSerialize: ") + e.what());
        }
        return nullptr;
    }
    //! A copy for one execution context (Self::onAttached: what only such copies do).
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept override
    {
        nvinfer1::IPluginV3* p = clone();
        if (p != nullptr)
        {
            static_cast<Self*>(p)->onAttached();
        }
        return p;
    }
    int32_t setTactic(int32_t tactic) noexcept override
    {
        if (tactic != 0 && !saiCapsTactic(Self::kernelCaps(), tactic))
        {
            logError("setTactic: unknown tactic " + std::to_string(tactic) + " (not one of getValidTactics)");
            return -1;
        }
        mTactic = tactic;
        return 0;
    }

    Attrs const& attrs() const
    {
        return mAttrs;
    }

protected:
    //! What a clone copies beyond the attributes and the tactic (nothing by default).
    void copyStateFrom(Self const& /*other*/) noexcept {}
    //! Called on the copy attachToContext returns (an execution context's instance; nothing by default).
    void onAttached() noexcept {}

    static void logError(std::string const& msg) noexcept
    {
        saiLogError(std::string(Self::kName) + " plugin: " + msg);
    }

    Attrs mAttrs;
    int32_t mTactic{0};

private:
    Self& self() noexcept
    {
        return static_cast<Self&>(*this);
    }

    std::string mTimingCacheID;
    SaiFieldWriter mSerial; //!< owns what getFieldsToSerialize returns
};

template <typename Plugin, typename Self>
class SaiPluginCreatorBase : public nvinfer1::IPluginCreatorV3One
{
public:
    explicit SaiPluginCreatorBase(std::vector<nvinfer1::PluginField> fieldNames)
        : mFieldNames(std::move(fieldNames))
    {
        mFC.nbFields = static_cast<int32_t>(mFieldNames.size());
        mFC.fields = mFieldNames.data();
    }
    ~SaiPluginCreatorBase() override = default;

    char const* getPluginName() const noexcept override
    {
        return Plugin::kName;
    }
    char const* getPluginVersion() const noexcept override
    {
        return kSAI_PLUGIN_VERSION;
    }
    char const* getPluginNamespace() const noexcept override
    {
        return kSAI_PLUGIN_NAMESPACE;
    }
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override
    {
        return &mFC;
    }
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase /*phase*/) noexcept override
    {
        try
        {
            SaiFieldReader r(Plugin::kName, name != nullptr ? name : "");
            typename Plugin::Attrs a;
            int32_t const nb = fc != nullptr ? fc->nbFields : 0;
            if (nb > 0 && fc->fields == nullptr)
            {
                r.fail("the field collection has no fields array");
            }
            for (int32_t i = 0; i < nb && fc->fields != nullptr; ++i)
            {
                nvinfer1::PluginField const& f = fc->fields[i];
                std::string const field = f.name != nullptr ? f.name : "";
                if (!Self::readField(r, field, f, a))
                {
                    saiLog(nvinfer1::ILogger::Severity::kVERBOSE,
                        std::string(Plugin::kName) + " plugin: ignoring unknown field '" + field + "'");
                }
            }
            if (!r.ok())
            {
                return nullptr;
            }
            return new Plugin(a);
        }
        catch (std::exception const& e)
        {
            saiLogError(std::string(Plugin::kName) + " plugin: createPlugin failed: " + e.what());
        }
        return nullptr;
    }

private:
    std::vector<nvinfer1::PluginField> mFieldNames;
    nvinfer1::PluginFieldCollection mFC{};
};

} // namespace plugin
} // namespace sai

#endif // SAI_TRT_PLUGINS_COMMON_SAI_PLUGIN_BASE_H
