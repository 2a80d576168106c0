// Driver-API launcher of the embedded sai Triton cubins (see sai_kernel_launcher.h).
#include "sai_kernel_launcher.h"

#include <cstring>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

namespace sai {
namespace kernels {
namespace {

struct Loaded {
    CUmodule module = nullptr;
    CUfunction function = nullptr;
};

std::mutex gMutex;
std::map<std::pair<CUcontext, const KernelImage*>, Loaded> gCache;  // per context and image

bool forwardCompatibleWithinMajor(int major) { return major == 8 || major == 12; }

CUresult currentCapability(CUcontext* ctx, CUdevice* dev, int* cc) {
    CUresult r = cuCtxGetCurrent(ctx);
    if (r != CUDA_SUCCESS) return r;
    if (*ctx == nullptr) return CUDA_ERROR_INVALID_CONTEXT;
    if ((r = cuCtxGetDevice(dev)) != CUDA_SUCCESS) return r;
    int major = 0, minor = 0;
    if ((r = cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, *dev)) != CUDA_SUCCESS)
        return r;
    if ((r = cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, *dev)) != CUDA_SUCCESS)
        return r;
    *cc = major * 10 + minor;
    return CUDA_SUCCESS;
}

CUresult load(const KernelImage* img, CUdevice dev, Loaded* out) {
    CUresult r = cuModuleLoadData(&out->module, img->cubin);
    if (r != CUDA_SUCCESS) return r;
    r = cuModuleGetFunction(&out->function, out->module, img->entry);
    if (r == CUDA_SUCCESS && img->sharedBytes > 48 * 1024) {
        // Triton's shared memory is dynamic: opt in to what the device allows beyond the static part
        int optin = 0, statik = 0;
        r = cuDeviceGetAttribute(&optin, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, dev);
        if (r == CUDA_SUCCESS) r = cuFuncGetAttribute(&statik, CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, out->function);
        if (r == CUDA_SUCCESS && img->sharedBytes > optin - statik) r = CUDA_ERROR_OUT_OF_MEMORY;
        if (r == CUDA_SUCCESS)
            r = cuFuncSetAttribute(out->function, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, optin - statik);
    }
    if (r != CUDA_SUCCESS) {
        cuModuleUnload(out->module);
        *out = Loaded{};
    }
    return r;
}

}  // namespace

const KernelImage* findImage(const char* spec, int cc) {
    size_t count = 0;
    const KernelImage* images = embeddedImages(&count);
    const KernelImage* best = nullptr;
    for (size_t i = 0; i < count; ++i) {
        const KernelImage& img = images[i];
        if (std::strcmp(img.spec, spec) != 0) continue;
        if (img.cc == cc) return &img;
        bool sameMajor = img.cc / 10 == cc / 10 && img.cc < cc && forwardCompatibleWithinMajor(cc / 10);
        if (sameMajor && (best == nullptr || img.cc > best->cc)) best = &img;
    }
    return best;
}

CUresult launch(const char* spec, CUstream stream, unsigned gridX, unsigned gridY, unsigned gridZ, void** args,
                int numArgs, CUdeviceptr globalScratch) {
    if (gridX == 0 || gridY == 0 || gridZ == 0) return CUDA_SUCCESS;  // nothing to do
    CUcontext ctx = nullptr;
    CUdevice dev = 0;
    int cc = 0;
    CUresult r = currentCapability(&ctx, &dev, &cc);
    if (r != CUDA_SUCCESS) return r;
    const KernelImage* img = findImage(spec, cc);
    if (img == nullptr) return CUDA_ERROR_NO_BINARY_FOR_GPU;
    if (numArgs != img->numParams) return CUDA_ERROR_INVALID_VALUE;
    if (img->globalScratchSize > 0 && globalScratch == 0) return CUDA_ERROR_INVALID_VALUE;
    if (img->profileScratchSize > 0) return CUDA_ERROR_NOT_SUPPORTED;  // instrumented build: not for hosts

    CUfunction fn = nullptr;
    {
        std::lock_guard<std::mutex> lock(gMutex);
        auto key = std::make_pair(ctx, img);
        auto it = gCache.find(key);
        if (it == gCache.end()) {
            Loaded loaded;
            if ((r = load(img, dev, &loaded)) != CUDA_SUCCESS) return r;
            it = gCache.emplace(key, loaded).first;
        }
        fn = it->second.function;
    }
    CUdeviceptr scratch = img->globalScratchSize > 0 ? globalScratch : 0;
    CUdeviceptr profile = 0;  // profile scratch: only for Triton's instrumentation, never enabled here
    std::vector<void*> params(args, args + numArgs);
    params.push_back(&scratch);
    params.push_back(&profile);
    return cuLaunchKernel(fn, gridX, gridY, gridZ, 32u * static_cast<unsigned>(img->numWarps), 1, 1,
                          static_cast<unsigned>(img->sharedBytes), stream, params.data(), nullptr);
}

void unloadContext(CUcontext ctx) {
    std::lock_guard<std::mutex> lock(gMutex);
    for (auto it = gCache.begin(); it != gCache.end();) {
        if (it->first.first == ctx) {
            cuModuleUnload(it->second.module);
            it = gCache.erase(it);
        } else {
            ++it;
        }
    }
}

}  // namespace kernels
}  // namespace sai
