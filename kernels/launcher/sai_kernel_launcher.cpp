// Driver-API launcher of the embedded sai Triton cubins (see sai_kernel_launcher.h).
#include "sai_kernel_launcher.h"

#include <dlfcn.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <utility>

namespace sai {
namespace kernels {
namespace {

struct Loaded {
    CUmodule module = nullptr;
    CUfunction function = nullptr;
};

std::mutex gMutex;                                                    // the module cache
std::map<std::pair<CUcontext, const KernelImage*>, Loaded> gCache;  // per context and image
std::atomic<const DriverApi*> gInstalled{nullptr};                  // setDriverApi
std::atomic<uint64_t> gGeneration{1};
DriverApi gLibcuda{};
std::once_flag gLibcudaOnce;
bool gLibcudaOk = false;
thread_local std::string tLastError;

struct Counters {
    std::atomic<uint64_t> imageScans{0}, moduleLookups{0}, driverLookups{0}, launches{0}, refused{0},
        deviceAllocs{0};
} gStats;

void count(std::atomic<uint64_t>& c) { c.fetch_add(1, std::memory_order_relaxed); }

// sm_80 cubins run on sm_86 / sm_89; Triton builds sm_90, sm_100 and sm_120 as the arch-specific
// sm_90a / sm_100a / sm_120a, which run on their own arch only.
bool forwardCompatibleWithinMajor(int major) { return major == 8; }

// cuGetProcAddress (CUDA >= 12 drivers) maps a base name to the entry point of the ABI version we
// were compiled against, as cudart does; plain dlsym of the base names is the fallback.
using GetProcAddress = CUresult (*)(const char*, void**, int, cuuint64_t, CUdriverProcAddressQueryResult*);

// `symbol`: the exported name of that ABI version for dlsym, where it differs from the base name.
template <typename F>
bool resolve(void* lib, GetProcAddress getProc, const char* name, F* out, const char* symbol = nullptr) {
    void* fn = nullptr;
    if (getProc != nullptr) {
        CUdriverProcAddressQueryResult status{};
        if (getProc(name, &fn, CUDA_VERSION, CU_GET_PROC_ADDRESS_DEFAULT, &status) != CUDA_SUCCESS) fn = nullptr;
    }
    if (fn == nullptr) fn = dlsym(lib, symbol != nullptr ? symbol : name);
    *out = reinterpret_cast<F>(fn);
    return fn != nullptr;
}

bool loadLibcuda() {
    void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) return false;
    CUresult (*init)(unsigned) = nullptr;
    auto getProc = reinterpret_cast<GetProcAddress>(dlsym(lib, "cuGetProcAddress_v2"));
    DriverApi d{};
    bool ok = resolve(lib, getProc, "cuInit", &init) && resolve(lib, getProc, "cuCtxGetCurrent", &d.ctxGetCurrent)
        && resolve(lib, getProc, "cuCtxGetDevice", &d.ctxGetDevice)
        && resolve(lib, getProc, "cuDeviceGetAttribute", &d.deviceGetAttribute)
        && resolve(lib, getProc, "cuModuleLoadData", &d.moduleLoadData)
        && resolve(lib, getProc, "cuModuleUnload", &d.moduleUnload)
        && resolve(lib, getProc, "cuModuleGetFunction", &d.moduleGetFunction)
        && resolve(lib, getProc, "cuFuncGetAttribute", &d.funcGetAttribute)
        && resolve(lib, getProc, "cuFuncSetAttribute", &d.funcSetAttribute)
        && resolve(lib, getProc, "cuLaunchKernel", &d.launchKernel)
        && resolve(lib, getProc, "cuMemsetD8Async", &d.memsetD8Async)
        && resolve(lib, getProc, "cuMemsetD2D8Async", &d.memsetD2D8Async)
        && resolve(lib, getProc, "cuMemAlloc", &d.memAlloc, "cuMemAlloc_v2")
        && resolve(lib, getProc, "cuMemFree", &d.memFree, "cuMemFree_v2")
        && resolve(lib, getProc, "cuStreamSynchronize", &d.streamSynchronize)
        && resolve(lib, getProc, "cuStreamIsCapturing", &d.streamIsCapturing)
        && resolve(lib, getProc, "cuCtxPushCurrent", &d.ctxPushCurrent, "cuCtxPushCurrent_v2")
        && resolve(lib, getProc, "cuCtxPopCurrent", &d.ctxPopCurrent, "cuCtxPopCurrent_v2");
    if (!ok || init(0) != CUDA_SUCCESS) return false;  // the library stays loaded (cheap, and safe)
    gLibcuda = d;
    return true;
}

CUresult capability(const DriverApi* d, CUcontext* ctx, CUdevice* dev, int* cc) {
    CUresult r = d->ctxGetCurrent(ctx);
    if (r != CUDA_SUCCESS) return r;
    if (*ctx == nullptr) return CUDA_ERROR_INVALID_CONTEXT;
    if ((r = d->ctxGetDevice(dev)) != CUDA_SUCCESS) return r;
    int major = 0, minor = 0;
    if ((r = d->deviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, *dev)) != CUDA_SUCCESS)
        return r;
    if ((r = d->deviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, *dev)) != CUDA_SUCCESS)
        return r;
    *cc = major * 10 + minor;
    return CUDA_SUCCESS;
}

CUresult load(const DriverApi* d, const KernelImage* img, CUdevice dev, Loaded* out) {
    CUresult r = d->moduleLoadData(&out->module, img->cubin);
    if (r != CUDA_SUCCESS) return r;
    r = d->moduleGetFunction(&out->function, out->module, img->entry);
    if (r == CUDA_SUCCESS && img->sharedBytes > 48 * 1024) {
        // Triton's shared memory is dynamic: opt in to what the device allows beyond the static part
        int optin = 0, statik = 0;
        r = d->deviceGetAttribute(&optin, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, dev);
        if (r == CUDA_SUCCESS) r = d->funcGetAttribute(&statik, CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, out->function);
        if (r == CUDA_SUCCESS && img->sharedBytes > optin - statik) r = CUDA_ERROR_OUT_OF_MEMORY;
        if (r == CUDA_SUCCESS)
            r = d->funcSetAttribute(out->function, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, optin - statik);
    }
    if (r != CUDA_SUCCESS) {
        d->moduleUnload(out->module);
        *out = Loaded{};
    }
    return r;
}

// The driver and the current context's device.
struct Device {
    const DriverApi* api = nullptr;
    CUcontext ctx = nullptr;
    CUdevice dev = 0;
    int cc = 0;
};

CUresult currentDevice(Device* out) {
    CUresult r = driverApi(&out->api);
    return r != CUDA_SUCCESS ? r : capability(out->api, &out->ctx, &out->dev, &out->cc);
}

// The module of `img` in `dv`'s context, loaded on first use there.
CUresult resolveIn(const Device& dv, const KernelImage* img, ResolvedKernel* out) {
    if (img->profileScratchSize > 0) return CUDA_ERROR_NOT_SUPPORTED;  // instrumented build: not for hosts
    uint64_t const gen = gGeneration.load(std::memory_order_acquire);
    CUfunction fn = nullptr;
    {
        count(gStats.moduleLookups);
        std::lock_guard<std::mutex> lock(gMutex);
        auto key = std::make_pair(dv.ctx, img);
        auto it = gCache.find(key);
        if (it == gCache.end()) {
            Loaded loaded;
            CUresult r = load(dv.api, img, dv.dev, &loaded);
            if (r != CUDA_SUCCESS) return r;
            it = gCache.emplace(key, loaded).first;
        }
        fn = it->second.function;
    }
    out->image = img;
    out->api = dv.api;
    out->context = dv.ctx;
    out->function = fn;
    out->threads = 32u * static_cast<unsigned>(img->numWarps);
    out->sharedBytes = static_cast<unsigned>(img->sharedBytes);
    out->generation = gen;
    return CUDA_SUCCESS;
}

// cuLaunchKernel with `params` (numParams user slots already written) and the hidden ones appended.
CUresult launchSlots(const ResolvedKernel& k, CUstream stream, unsigned gridX, unsigned gridY, unsigned gridZ,
                     LaunchSlot* slots, CUdeviceptr globalScratch) {
    const KernelImage* img = k.image;
    if (img->globalScratchSize > 0 && globalScratch == 0) return CUDA_ERROR_INVALID_VALUE;
    int const n = img->numParams;
    slots[n].pointer = img->globalScratchSize > 0 ? globalScratch : 0;
    slots[n + 1].pointer = 0;  // profile scratch: only for Triton's instrumentation, never enabled here
    void* params[kMaxLaunchParams + 2];
    for (int i = 0; i < n + 2; ++i) params[i] = &slots[i];
    count(gStats.launches);
    return k.api->launchKernel(k.function, gridX, gridY, gridZ, k.threads, 1, 1, k.sharedBytes, stream, params,
                               nullptr);
}

CUresult fail(std::string msg) {
    tLastError = std::move(msg);
    return CUDA_ERROR_INVALID_VALUE;
}

}  // namespace

const KernelImage* findImage(const char* spec, int cc, int tactic) {
    count(gStats.imageScans);
    size_t count = 0;
    const KernelImage* images = embeddedImages(&count);
    const KernelImage* best = nullptr;
    for (int pass = 0; pass < 2 && best == nullptr; ++pass) {
        int const want = pass == 0 ? tactic : 1;
        if (pass == 1 && tactic == 1) break;
        for (size_t i = 0; i < count; ++i) {
            const KernelImage& img = images[i];
            if (std::strcmp(img.spec, spec) != 0 || img.tactic != want) continue;
            if (img.cc == cc) return &img;
            bool sameMajor = img.cc / 10 == cc / 10 && img.cc < cc && forwardCompatibleWithinMajor(cc / 10);
            if (sameMajor && (best == nullptr || img.cc > best->cc)) best = &img;
        }
    }
    return best;
}

CUresult driverApi(const DriverApi** api) {
    count(gStats.driverLookups);
    const DriverApi* installed = gInstalled.load(std::memory_order_acquire);
    if (installed != nullptr) {
        *api = installed;
        return CUDA_SUCCESS;
    }
    std::call_once(gLibcudaOnce, [] { gLibcudaOk = loadLibcuda(); });
    *api = gLibcudaOk ? &gLibcuda : nullptr;
    return gLibcudaOk ? CUDA_SUCCESS : CUDA_ERROR_NOT_INITIALIZED;
}

void setDriverApi(const DriverApi* api) {
    std::lock_guard<std::mutex> lock(gMutex);
    gInstalled.store(api, std::memory_order_release);
    gCache.clear();
    gGeneration.fetch_add(1, std::memory_order_acq_rel);
}

uint64_t generation() { return gGeneration.load(std::memory_order_acquire); }

CUresult currentCapability(int* cc) {
    Device dv;
    CUresult r = currentDevice(&dv);
    if (r == CUDA_SUCCESS) *cc = dv.cc;
    return r;
}

CUresult memsetAsync(CUdeviceptr dst, unsigned char value, size_t bytes, CUstream stream) {
    if (bytes == 0) return CUDA_SUCCESS;
    const DriverApi* d = nullptr;
    CUresult r = driverApi(&d);
    return r != CUDA_SUCCESS ? r : d->memsetD8Async(dst, value, bytes, stream);
}

CUresult memset2DAsync(CUdeviceptr dst, size_t pitch, unsigned char value, size_t widthBytes, size_t height,
                       CUstream stream) {
    if (widthBytes == 0 || height == 0) return CUDA_SUCCESS;
    const DriverApi* d = nullptr;
    CUresult r = driverApi(&d);
    return r != CUDA_SUCCESS ? r : d->memsetD2D8Async(dst, pitch, value, widthBytes, height, stream);
}

CUresult allocDevice(size_t bytes, DeviceBuffer* out) {
    const DriverApi* d = nullptr;
    CUresult r = driverApi(&d);
    if (r != CUDA_SUCCESS) return r;
    CUcontext ctx = nullptr;
    if ((r = d->ctxGetCurrent(&ctx)) != CUDA_SUCCESS) return r;
    if (ctx == nullptr) return CUDA_ERROR_INVALID_CONTEXT;
    CUdeviceptr p = 0;
    count(gStats.deviceAllocs);
    if ((r = d->memAlloc(&p, bytes > 0 ? bytes : 1)) != CUDA_SUCCESS) return r;
    out->pointer = p;
    out->bytes = bytes;
    out->context = ctx;
    return CUDA_SUCCESS;
}

void freeDevice(DeviceBuffer* buffer) {
    if (buffer->pointer == 0) return;
    const DriverApi* d = nullptr;
    if (driverApi(&d) == CUDA_SUCCESS && d->ctxPushCurrent(buffer->context) == CUDA_SUCCESS) {
        d->memFree(buffer->pointer);  // a context already destroyed took its memory with it
        CUcontext popped = nullptr;
        d->ctxPopCurrent(&popped);
    }
    *buffer = DeviceBuffer{};
}

CUresult resolveKernel(const KernelImage* img, ResolvedKernel* out) {
    if (img == nullptr) return CUDA_ERROR_INVALID_VALUE;
    Device dv;
    CUresult r = currentDevice(&dv);
    return r != CUDA_SUCCESS ? r : resolveIn(dv, img, out);
}

CUresult launchResolved(const ResolvedKernel& k, CUstream stream, unsigned gridX, unsigned gridY, unsigned gridZ,
                        int family, const void* args, CUdeviceptr globalScratch) {
    const KernelImage* img = k.image;
    if (img == nullptr || k.function == nullptr || k.generation != generation()) {
        return fail(std::string("kernel not resolved in this context (or unloaded since): resolve it again"));
    }
    if (img->family != family || img->pack == nullptr || img->numParams > kMaxLaunchParams) {
        return fail(std::string(img->spec) + ": the arguments are not of this kernel's family");
    }
    LaunchSlot slots[kMaxLaunchParams + 2];
    PackError e;
    if (!img->pack(args, slots, &e)) {
        count(gStats.refused);
        std::string const v = std::to_string(e.value);
        std::string const what = e.reason == PackError::kUnset ? " was not set"
            : e.reason == PackError::kConstant ? " is compiled in as " + std::to_string(e.expect) + ", called with " + v
            : e.reason == PackError::kAlignment ? " is not 16-byte aligned, which this build assumes"
            : e.reason == PackError::kMultiple16 ? " = " + v + " is not a multiple of 16, which this build assumes"
                                                 : " = " + v + " does not fit in int32";
        return fail(std::string(img->spec) + ": " + e.name + what);
    }
    if (gridX == 0 || gridY == 0 || gridZ == 0) return CUDA_SUCCESS;  // nothing to do
    return launchSlots(k, stream, gridX, gridY, gridZ, slots, globalScratch);
}

CUresult launch(const char* spec, CUstream stream, unsigned gridX, unsigned gridY, unsigned gridZ, void** args,
                int numArgs, CUdeviceptr globalScratch) {
    if (gridX == 0 || gridY == 0 || gridZ == 0) return CUDA_SUCCESS;  // nothing to do
    Device dv;
    CUresult r = currentDevice(&dv);
    if (r != CUDA_SUCCESS) return r;
    const KernelImage* img = findImage(spec, dv.cc);
    if (img == nullptr) return CUDA_ERROR_NO_BINARY_FOR_GPU;
    if (numArgs != img->numParams || numArgs > kMaxLaunchParams) return CUDA_ERROR_INVALID_VALUE;
    ResolvedKernel k;
    if ((r = resolveIn(dv, img, &k)) != CUDA_SUCCESS) return r;
    if (img->globalScratchSize > 0 && globalScratch == 0) return CUDA_ERROR_INVALID_VALUE;
    void* params[kMaxLaunchParams + 2];
    for (int i = 0; i < numArgs; ++i) params[i] = args[i];
    CUdeviceptr scratch = img->globalScratchSize > 0 ? globalScratch : 0, profile = 0;
    params[numArgs] = &scratch;
    params[numArgs + 1] = &profile;
    count(gStats.launches);
    return dv.api->launchKernel(k.function, gridX, gridY, gridZ, k.threads, 1, 1, k.sharedBytes, stream, params,
                                nullptr);
}

const char* lastError() { return tLastError.c_str(); }

void unloadContext(CUcontext ctx) {
    const DriverApi* d = nullptr;
    if (driverApi(&d) != CUDA_SUCCESS) return;
    std::lock_guard<std::mutex> lock(gMutex);
    gGeneration.fetch_add(1, std::memory_order_acq_rel);
    for (auto it = gCache.begin(); it != gCache.end();) {
        if (it->first.first == ctx) {
            d->moduleUnload(it->second.module);
            it = gCache.erase(it);
        } else {
            ++it;
        }
    }
}

LauncherStats launcherStats() {
    auto v = [](const std::atomic<uint64_t>& c) { return c.load(std::memory_order_relaxed); };
    return LauncherStats{v(gStats.imageScans), v(gStats.moduleLookups), v(gStats.driverLookups),
                         v(gStats.launches), v(gStats.refused), v(gStats.deviceAllocs)};
}

}  // namespace kernels
}  // namespace sai
