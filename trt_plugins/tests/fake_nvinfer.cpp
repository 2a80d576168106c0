/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * fake_nvinfer.cpp: a stand-in for libnvinfer's plugin registry, built by tests/test_trt_glue.py as
 * libnvinfer.so.<major> (and once more as libnvinfer_lean.so.<major>, a second runtime with its own
 * registry) to test how libsai_trt_plugins.so registers its creators in each host, on the CPU.
 *
 * Exports getPluginRegistry and getInferLibVersion (what the plugin library looks up) and a few fake* functions for the
 * test: fakeLoadLibrary behaves like IPluginRegistry::loadLibrary (dlopen, setLoggerFinder,
 * getCreators, register each; nullptr if any creator is already registered, as TensorRT documents),
 * fakeRegistrations counts successful registerCreator calls of one plugin, fakeRejected the
 * registrations refused as duplicates.
 */
#include "NvInferRuntime.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <map>
#include <mutex>
#include <string>

using namespace nvinfer1;

namespace
{

std::string keyOf(IPluginCreatorInterface const& c)
{
    if (std::strcmp(c.getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") != 0)
    {
        return "?";
    }
    auto const& v3 = static_cast<IPluginCreatorV3One const&>(c);
    return std::string(v3.getPluginNamespace()) + "::" + v3.getPluginName() + "/" + v3.getPluginVersion();
}

class FakeRegistry : public IPluginRegistry
{
public:
#if NV_TENSORRT_MAJOR < 11
    bool registerCreator(IPluginCreator&, AsciiChar const* const) noexcept override
    {
        return false;
    }
    IPluginCreator* const* getPluginCreatorList(int32_t* const n) const noexcept override
    {
        *n = 0;
        return nullptr;
    }
    IPluginCreator* getPluginCreator(AsciiChar const* const, AsciiChar const* const, AsciiChar const* const) noexcept override
    {
        return nullptr;
    }
    bool deregisterCreator(IPluginCreator const&) noexcept override
    {
        return false;
    }
#endif
    void setErrorRecorder(IErrorRecorder* const) noexcept override {}
    IErrorRecorder* getErrorRecorder() const noexcept override
    {
        return nullptr;
    }
    bool isParentSearchEnabled() const override
    {
        return false;
    }
    void setParentSearchEnabled(bool const) override {}

    PluginLibraryHandle loadLibrary(AsciiChar const* pluginPath) noexcept override
    {
        std::lock_guard<std::mutex> lock(mMutex); // as a registry that holds its lock while loading
        void* h = dlopen(pluginPath, RTLD_NOW | RTLD_LOCAL);
        if (h == nullptr)
        {
            std::fprintf(stderr, "fake loadLibrary: %s\n", dlerror());
            return nullptr;
        }
        using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
        using SetLoggerFinder = void (*)(ILoggerFinder*);
        auto getCreators = reinterpret_cast<GetCreators>(dlsym(h, "getCreators"));
        auto setLoggerFinder = reinterpret_cast<SetLoggerFinder>(dlsym(h, "setLoggerFinder"));
        if (getCreators == nullptr)
        {
            std::fprintf(stderr, "fake loadLibrary: SymbolAddress for getCreators could not be loaded\n");
            return nullptr;
        }
        if (setLoggerFinder != nullptr)
        {
            setLoggerFinder(nullptr);
        }
        int32_t n = 0;
        IPluginCreatorInterface* const* creators = getCreators(n);
        for (int32_t i = 0; i < n; ++i)
        {
            if (mLive.count(keyOf(*creators[i])) != 0)
            {
                ++mRejected;
                std::fprintf(stderr, "fake loadLibrary: Cannot register the library as plugin creator of %s exists already\n",
                    keyOf(*creators[i]).c_str());
                return nullptr;
            }
        }
        for (int32_t i = 0; i < n; ++i)
        {
            add(*creators[i]);
        }
        return h;
    }
    void deregisterLibrary(PluginLibraryHandle) noexcept override {}

    bool registerCreator(IPluginCreatorInterface& creator, AsciiChar const* const) noexcept override
    {
        // a second lock in the same thread would deadlock, as a non-recursive registry mutex would
        if (!mMutex.try_lock())
        {
            std::fprintf(stderr, "fake registerCreator: called while the registry is locked (re-entrant)\n");
            ++mReentrant;
            return false;
        }
        std::lock_guard<std::mutex> lock(mMutex, std::adopt_lock);
        if (mLive.count(keyOf(creator)) != 0)
        {
            ++mRejected;
            return false;
        }
        add(creator);
        return true;
    }
    IPluginCreatorInterface* const* getAllCreators(int32_t* const n) const noexcept override
    {
        *n = 0;
        return nullptr;
    }
    IPluginCreatorInterface* getCreator(
        AsciiChar const* const name, AsciiChar const* const version, AsciiChar const* const ns) noexcept override
    {
        auto it = mLive.find(std::string(ns) + "::" + name + "/" + version);
        return it != mLive.end() ? it->second : nullptr;
    }
    bool deregisterCreator(IPluginCreatorInterface const& creator) noexcept override
    {
        return mLive.erase(keyOf(creator)) != 0;
    }
    IPluginResource* acquirePluginResource(AsciiChar const*, IPluginResource*) noexcept override
    {
        return nullptr;
    }
    int32_t releasePluginResource(AsciiChar const*) noexcept override
    {
        return 0;
    }
#if NV_TENSORRT_MAJOR > 10 || (NV_TENSORRT_MAJOR == 10 && NV_TENSORRT_MINOR >= 10)
    IPluginCreatorInterface* const* getAllCreatorsRecursive(int32_t* const n) noexcept override
    {
        *n = 0;
        return nullptr;
    }
#endif

    int32_t registrations(std::string const& name) const
    {
        auto it = mCount.find(name);
        return it != mCount.end() ? it->second : 0;
    }
    int32_t mRejected{0};
    int32_t mReentrant{0};

private:
    void add(IPluginCreatorInterface& c)
    {
        mLive[keyOf(c)] = &c;
        auto const& v3 = static_cast<IPluginCreatorV3One const&>(c);
        ++mCount[v3.getPluginName()];
    }
    std::mutex mMutex;
    std::map<std::string, IPluginCreatorInterface*> mLive;
    std::map<std::string, int32_t> mCount;
};

FakeRegistry& registry()
{
    static auto* r = new FakeRegistry(); // never destroyed: creators may outlive static destruction
    return *r;
}

} // namespace

extern "C" __attribute__((visibility("default"))) IPluginRegistry* getPluginRegistry() noexcept
{
    return &registry();
}

//! The headers' version, or FAKE_NVINFER_VERSION (to play another TensorRT version).
extern "C" __attribute__((visibility("default"))) int32_t getInferLibVersion() noexcept
{
    char const* v = std::getenv("FAKE_NVINFER_VERSION");
    return v != nullptr ? std::atoi(v) : static_cast<int32_t>(NV_TENSORRT_VERSION);
}

extern "C" __attribute__((visibility("default"))) void* fakeLoadLibrary(char const* path)
{
    return registry().loadLibrary(path);
}

extern "C" __attribute__((visibility("default"))) int fakeRegistrations(char const* pluginName)
{
    return registry().registrations(pluginName);
}

extern "C" __attribute__((visibility("default"))) int fakeRejected()
{
    return registry().mRejected;
}

extern "C" __attribute__((visibility("default"))) int fakeReentrant()
{
    return registry().mReentrant;
}
