/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * libsai_trt_plugins_autoload.so: the plugins for hosts that only dlopen or LD_PRELOAD a plugin
 * library and may do so before TensorRT itself is loaded (LD_PRELOAD into tritonserver, whose
 * TensorRT backend loads libnvinfer later; Polygraphy --plugins before `import tensorrt`).
 *
 * Its only content: a DT_NEEDED entry on libnvinfer.so.<major> (like a library that uses
 * REGISTER_TENSORRT_PLUGIN, so the dynamic loader brings in the same libnvinfer the host uses, or
 * fails loudly when there is none) and a constructor that loads libsai_trt_plugins.so from the same
 * directory, whose load-time registration then finds that libnvinfer (saiPlugins.cpp). The main
 * library itself never links libnvinfer. Not for loadLibrary hosts: it has no getCreators.
 */
#include <cstdio>
#include <dlfcn.h>
#include <string>

namespace
{

__attribute__((constructor)) void saiAutoload()
{
    Dl_info info{};
    if (dladdr(reinterpret_cast<void*>(&saiAutoload), &info) == 0 || info.dli_fname == nullptr)
    {
        std::fprintf(stderr, "libsai_trt_plugins_autoload: cannot find its own path\n");
        return;
    }
    std::string const self(info.dli_fname);
    std::string::size_type const slash = self.rfind('/');
    std::string const lib = (slash == std::string::npos ? std::string(".") : self.substr(0, slash)) + "/libsai_trt_plugins.so";
    if (dlopen(lib.c_str(), RTLD_NOW | RTLD_LOCAL) == nullptr)
    {
        char const* err = dlerror();
        std::fprintf(stderr, "libsai_trt_plugins_autoload: cannot load %s: %s\n", lib.c_str(), err != nullptr ? err : "");
    }
}

} // namespace
