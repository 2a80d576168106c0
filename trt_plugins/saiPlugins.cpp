/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * The library's two entry points (fixed by exports.map) and its registration on load.
 *
 * Hosts load TensorRT plugins in two ways (trt_plugins/README.md, "Loading the plugins"):
 *  - IPluginRegistry::loadLibrary (sai, trtexec --dynamicPlugins, trt.get_plugin_registry().load_library,
 *    the lean runtime of a version-compatible engine): TensorRT dlopens the library, calls
 *    setLoggerFinder, then getCreators, and registers what getCreators returns;
 *  - a plain dlopen / LD_PRELOAD (Triton's plugins= backend config, Polygraphy --plugins, trtexec
 *    --staticPlugins): nobody calls getCreators, so the library registers its creators itself when it
 *    is loaded, into the registry of the libnvinfer that is already in the process.
 * No REGISTER_TENSORRT_PLUGIN and no link-time libnvinfer dependency: getPluginRegistry is looked up
 * at load time (global scope first, then libnvinfer loaded with RTLD_LOCAL, by soname, RTLD_NOLOAD).
 *
 * Never twice in one registry: the load-time registration is skipped when TensorRT's own loader is
 * on the stack (loadLibrary registers what getCreators returns right after), and getCreators returns
 * no creators to the libnvinfer whose registry already holds them (loadLibrary fails if any creator
 * is already registered). Another TensorRT runtime in the process (the lean runtime of a
 * version-compatible engine) still gets both creators for its own registry.
 *
 * Only into a TensorRT of the major version of the headers the library was built with
 * (getInferLibVersion): another major's registry has other vtables.
 *
 * SAI_TRT_PLUGINS_NO_AUTOREGISTER=1 disables the load-time registration; SAI_TRT_PLUGINS_DEBUG=1
 * prints on stderr what the library did (used by tests/test_trt_glue.py).
 */
#include "interpolatePlugin.h"
#include "saiPluginCommon.h"
#include "sparseBlockPlugin.h"
#include "sparseSampleConvPlugin.h"

#include "NvInferRuntime.h"
#include "NvInferVersion.h"

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <execinfo.h>

// The library builds with -fvisibility=hidden; exports.map then keeps exactly these two.
#define SAI_PLUGIN_EXPORT __attribute__((visibility("default")))

#define SAI_STR2(x) #x
#define SAI_STR(x) SAI_STR2(x)

namespace
{

using nvinfer1::IPluginCreatorInterface;
using nvinfer1::IPluginRegistry;

IPluginCreatorInterface* const* saiCreators(int32_t& nbCreators)
{
    static sai::plugin::SparseSampleConvPluginCreator sparseSampleConvCreator;
    static sai::plugin::InterpolatePluginCreator interpolateCreator;
    static sai::plugin::SparseBlockPluginCreator sparseBlockCreator;
    static IPluginCreatorInterface* const creators[] = {&sparseSampleConvCreator, &interpolateCreator,
        &sparseBlockCreator};
    nbCreators = static_cast<int32_t>(sizeof(creators) / sizeof(creators[0]));
    return creators;
}

//! What the load-time registration did (read by getCreators).
struct LoadTimeRegistration
{
    IPluginRegistry* registry{nullptr};
    void const* owner{nullptr}; //!< load address of the object (libnvinfer) that provided the registry
    int32_t registered{0};      //!< creators registered there
};
LoadTimeRegistration gLoadTime;

bool envFlag(char const* name)
{
    char const* v = std::getenv(name);
    return v != nullptr && v[0] != '\0' && std::strcmp(v, "0") != 0;
}

__attribute__((format(printf, 1, 2))) void debugLog(char const* fmt, ...)
{
    if (envFlag("SAI_TRT_PLUGINS_DEBUG"))
    {
        std::va_list args;
        va_start(args, fmt);
        std::fprintf(stderr, "sai_trt_plugins: ");
        std::vfprintf(stderr, fmt, args);
        std::fprintf(stderr, "\n");
        va_end(args);
    }
}

char const* baseName(char const* path)
{
    char const* slash = std::strrchr(path, '/');
    return slash != nullptr ? slash + 1 : path;
}

//! Load address of the shared object holding `addr` (nullptr if none); its path in `name`.
void const* objectOf(void const* addr, char const** name = nullptr)
{
    Dl_info info{};
    if (addr == nullptr || dladdr(addr, &info) == 0 || info.dli_fname == nullptr)
    {
        return nullptr;
    }
    if (name != nullptr)
    {
        *name = info.dli_fname;
    }
    return info.dli_fbase;
}

//! `addr` lies in one of TensorRT's runtimes (libnvinfer.so.*, libnvinfer_lean.so.*,
//! libnvinfer_dispatch.so.*).
bool inTensorRT(void const* addr)
{
    char const* name = nullptr;
    return objectOf(addr, &name) != nullptr && std::strncmp(baseName(name), "libnvinfer", 10) == 0;
}

//! True while a TensorRT runtime is on the stack, i.e. TensorRT's loadLibrary is loading us.
bool loadedByTensorRT()
{
    void* frames[96];
    int const n = backtrace(frames, 96);
    for (int i = 1; i < n; ++i)
    {
        if (inTensorRT(frames[i]))
        {
            return true;
        }
    }
    return false;
}

using GetPluginRegistryFn = IPluginRegistry* (*) ();

//! getPluginRegistry of the libnvinfer already in this process; nullptr when there is none. Never
//! loads libnvinfer (RTLD_NOLOAD): a process without TensorRT stays without it.
GetPluginRegistryFn findGetPluginRegistry()
{
    void* sym = dlsym(RTLD_DEFAULT, "getPluginRegistry"); // linked into the executable, or RTLD_GLOBAL
    for (char const* soname : {"libnvinfer.so." SAI_STR(NV_TENSORRT_MAJOR), "libnvinfer.so"})
    {
        if (sym != nullptr)
        {
            break;
        }
        void* h = dlopen(soname, RTLD_NOW | RTLD_NOLOAD); // loaded with RTLD_LOCAL (Python, Triton's backend)
        if (h != nullptr)
        {
            sym = dlsym(h, "getPluginRegistry");
            dlclose(h); // only drops the reference RTLD_NOLOAD took
        }
    }
    GetPluginRegistryFn fn = nullptr;
    static_assert(sizeof(fn) == sizeof(sym), "function and data pointers differ in size");
    std::memcpy(&fn, &sym, sizeof(fn));
    return fn;
}

//! The TensorRT version (getInferLibVersion, major*10000 + minor*100 + patch) of the object that
//! defines `sym`; -1 when it has none.
int32_t tensorrtVersionOf(void const* sym)
{
    Dl_info info{};
    if (dladdr(sym, &info) == 0 || info.dli_fname == nullptr)
    {
        return -1;
    }
    void* h = dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD);
    if (h == nullptr)
    {
        return -1;
    }
    void* v = dlsym(h, "getInferLibVersion");
    dlclose(h);
    using VersionFn = int32_t (*)();
    VersionFn fn = nullptr;
    std::memcpy(&fn, &v, sizeof(fn));
    return fn != nullptr ? fn() : -1;
}

__attribute__((constructor)) void saiRegisterOnLoad()
{
    if (envFlag("SAI_TRT_PLUGINS_NO_AUTOREGISTER"))
    {
        debugLog("load-time registration disabled by SAI_TRT_PLUGINS_NO_AUTOREGISTER");
        return;
    }
    if (loadedByTensorRT())
    {
        debugLog("loaded by TensorRT's loadLibrary: it registers the creators from getCreators");
        return;
    }
    GetPluginRegistryFn const getRegistry = findGetPluginRegistry();
    if (getRegistry != nullptr)
    {
        // the creators' interfaces are those of the headers this library was built with: never hand
        // them to another major version's registry (its vtables differ)
        int32_t const version = tensorrtVersionOf(reinterpret_cast<void const*>(getRegistry));
        if (version / 10000 != NV_TENSORRT_MAJOR)
        {
            debugLog("the TensorRT in this process is version %d, this library is built for TensorRT %d: nothing "
                     "registered on load",
                version, static_cast<int>(NV_TENSORRT_MAJOR));
            return;
        }
    }
    IPluginRegistry* registry = getRegistry != nullptr ? getRegistry() : nullptr;
    if (registry == nullptr)
    {
        debugLog("no TensorRT (libnvinfer.so." SAI_STR(NV_TENSORRT_MAJOR) ") in this process: nothing registered on load");
        return;
    }
    char const* owner = "";
    gLoadTime.registry = registry;
    gLoadTime.owner = objectOf(reinterpret_cast<void const*>(getRegistry), &owner);
    int32_t n = 0;
    IPluginCreatorInterface* const* creators = saiCreators(n);
    for (int32_t i = 0; i < n; ++i)
    {
        auto const* c = static_cast<nvinfer1::IPluginCreatorV3One*>(creators[i]);
        if (registry->registerCreator(*creators[i], sai::plugin::kSAI_PLUGIN_NAMESPACE))
        {
            ++gLoadTime.registered;
            debugLog("registered %s on load into the registry of %s", c->getPluginName(), owner);
        }
        else
        {
            debugLog("registering %s on load into the registry of %s failed (already registered?)",
                c->getPluginName(), owner);
        }
    }
}

} // namespace

extern "C" SAI_PLUGIN_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    sai::plugin::saiSetLoggerFinder(finder);
}

extern "C" SAI_PLUGIN_EXPORT __attribute__((noinline)) IPluginCreatorInterface* const* getCreators(
    int32_t& nbCreators)
{
    IPluginCreatorInterface* const* creators = saiCreators(nbCreators);
    // The caller is TensorRT's loadLibrary. If its libnvinfer is the one whose registry we filled on
    // load, hand it nothing: registering a creator twice makes loadLibrary fail.
    if (gLoadTime.registered > 0)
    {
        void const* caller = objectOf(__builtin_return_address(0));
        if (caller != nullptr && caller == gLoadTime.owner)
        {
            debugLog("getCreators: the creators are already registered in this registry (on load): returning none");
            nbCreators = 0;
        }
    }
    return creators;
}
