/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * Link-time stand-in for libnvinfer.so.<major> (its soname is set by CMake), so that
 * libsai_trt_plugins_autoload.so gets its DT_NEEDED entry without a TensorRT library on the build
 * machine. Never installed, never loaded: at run time the loader resolves the soname to the real
 * libnvinfer.
 */
extern "C" __attribute__((visibility("default"))) void* getPluginRegistry()
{
    return nullptr;
}
