// Driver-API launcher of the embedded sai Triton cubins (see sai_kernel_launcher.h).
#include "sai_kernel_launcher.h"

#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
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
const DriverApi* gInstalled = nullptr;                                // setDriverApi
DriverApi gLibcuda{};
bool gLibcudaTried = false;
bool gLibcudaOk = false;
thread_local std::string tLastError;

// sm_80 cubins run on sm_86 / sm_89; Triton builds sm_90, sm_100 and sm_120 as the arch-specific
// sm_90a / sm_100a / sm_120a, which run on their own arch only.
bool forwardCompatibleWithinMajor(int major) { return major == 8; }

// cuGetProcAddress (CUDA >= 12 drivers) maps a base name to the entry point of the ABI version we
// were compiled against, as cudart does; plain dlsym of the base names is the fallback.
using GetProcAddress = CUresult (*)(const char*, void**, int, cuuint64_t, CUdriverProcAddressQueryResult*);

template <typename F>
bool resolve(void* lib, GetProcAddress getProc, const char* name, F* out) {
    void* fn = nullptr;
    if (getProc != nullptr) {
        CUdriverProcAddressQueryResult status{};
        if (getProc(name, &fn, CUDA_VERSION, CU_GET_PROC_ADDRESS_DEFAULT, &status) != CUDA_SUCCESS) fn = nullptr;
    }
    if (fn == nullptr) fn = dlsym(lib, name);
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
        && resolve(lib, getProc, "cuMemsetD2D8Async", &d.memsetD2D8Async);
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

// Launch of an image already chosen for the current device (`ctx`, `dev`).
CUresult launchImage(const DriverApi* d, CUcontext ctx, CUdevice dev, const KernelImage* img, CUstream stream,
                     unsigned gridX, unsigned gridY, unsigned gridZ, void** args, int numArgs,
                     CUdeviceptr globalScratch) {
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
            CUresult r = load(d, img, dev, &loaded);
            if (r != CUDA_SUCCESS) return r;
            it = gCache.emplace(key, loaded).first;
        }
        fn = it->second.function;
    }
    CUdeviceptr scratch = img->globalScratchSize > 0 ? globalScratch : 0;
    CUdeviceptr profile = 0;  // profile scratch: only for Triton's instrumentation, never enabled here
    std::vector<void*> params(args, args + numArgs);
    params.push_back(&scratch);
    params.push_back(&profile);
    return d->launchKernel(fn, gridX, gridY, gridZ, 32u * static_cast<unsigned>(img->numWarps), 1, 1,
                           static_cast<unsigned>(img->sharedBytes), stream, params.data(), nullptr);
}

// Finds `key` among the comma-separated items of `list`: an item "key=value" (`sep` '=': the value
// goes to *value) or the item "key" itself (`sep` 0).
bool findItem(const char* list, const std::string& key, char sep, std::string* value) {
    std::string s(list);
    size_t pos = 0;
    while (pos <= s.size()) {
        size_t end = s.find(',', pos);
        if (end == std::string::npos) end = s.size();
        std::string item = s.substr(pos, end - pos);
        pos = end + 1;
        size_t const cut = sep != 0 ? item.find(sep) : item.size();
        if (cut == std::string::npos || item.compare(0, cut, key) != 0 || cut != key.size()) continue;
        if (value != nullptr) *value = sep != 0 ? item.substr(cut + 1) : std::string();
        return true;
    }
    return false;
}

CUresult fail(std::string msg) {
    tLastError = std::move(msg);
    return CUDA_ERROR_INVALID_VALUE;
}

}  // namespace

const KernelImage* findImage(const char* spec, int cc, int tactic) {
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
    std::lock_guard<std::mutex> lock(gMutex);
    if (gInstalled != nullptr) {
        *api = gInstalled;
        return CUDA_SUCCESS;
    }
    if (!gLibcudaTried) {
        gLibcudaTried = true;
        gLibcudaOk = loadLibcuda();
    }
    *api = gLibcudaOk ? &gLibcuda : nullptr;
    return gLibcudaOk ? CUDA_SUCCESS : CUDA_ERROR_NOT_INITIALIZED;
}

namespace {
// The driver and the current context's device, for a launch.
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
}  // namespace

void setDriverApi(const DriverApi* api) {
    std::lock_guard<std::mutex> lock(gMutex);
    gInstalled = api;
    gCache.clear();
}

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

CUresult launch(const char* spec, CUstream stream, unsigned gridX, unsigned gridY, unsigned gridZ, void** args,
                int numArgs, CUdeviceptr globalScratch) {
    if (gridX == 0 || gridY == 0 || gridZ == 0) return CUDA_SUCCESS;  // nothing to do
    Device dv;
    CUresult r = currentDevice(&dv);
    if (r != CUDA_SUCCESS) return r;
    const KernelImage* img = findImage(spec, dv.cc);
    if (img == nullptr) return CUDA_ERROR_NO_BINARY_FOR_GPU;
    return launchImage(dv.api, dv.ctx, dv.dev, img, stream, gridX, gridY, gridZ, args, numArgs, globalScratch);
}

CUresult launchNamed(const KernelImage* img, CUstream stream, unsigned gridX, unsigned gridY, unsigned gridZ,
                     const Arg* args, int numArgs, CUdeviceptr globalScratch) {
    tLastError.clear();
    if (img == nullptr) return fail("no kernel image");
    std::string const spec = img->spec;
    // the compiled-in constants must equal what the caller would have passed
    std::vector<bool> used(static_cast<size_t>(numArgs), false);
    for (int i = 0; i < numArgs; ++i) {
        std::string value;
        if (!findItem(img->constexprs, args[i].name, '=', &value)) continue;
        used[static_cast<size_t>(i)] = true;
        long long expect = 0;
        if (value == "True") expect = 1;
        else if (value == "False") expect = 0;
        else {
            char* end = nullptr;
            expect = std::strtoll(value.c_str(), &end, 10);
            if (end == value.c_str() || *end != '\0')
                return fail(spec + ": " + args[i].name + " is compiled in as " + value + ", not a number");
        }
        if (args[i].kind != Arg::Kind::kInt || args[i].integer != expect)
            return fail(spec + ": compiled with " + args[i].name + "=" + value + ", called with " +
                        std::to_string(args[i].kind == Arg::Kind::kInt ? args[i].integer : -1));
    }
    // the parameters, in the image's order
    std::vector<CUdeviceptr> ptrs(static_cast<size_t>(img->numParams));
    std::vector<int32_t> ints(static_cast<size_t>(img->numParams));
    std::vector<float> reals(static_cast<size_t>(img->numParams));
    std::vector<void*> slots(static_cast<size_t>(img->numParams));
    std::string plist = img->params;
    size_t pos = 0;
    for (int k = 0; k < img->numParams; ++k) {
        size_t end = plist.find(',', pos);
        if (end == std::string::npos) end = plist.size();
        std::string item = plist.substr(pos, end - pos);
        pos = end + 1;
        size_t colon = item.find(':');
        std::string name = item.substr(0, colon), type = item.substr(colon + 1);
        int found = -1;
        for (int i = 0; i < numArgs; ++i)
            if (name == args[i].name) found = i;
        if (found < 0) return fail(spec + ": parameter " + name + " not given");
        used[static_cast<size_t>(found)] = true;
        const Arg& a = args[found];
        size_t const u = static_cast<size_t>(k);
        bool const div16 = img->divisible != nullptr && findItem(img->divisible, name, 0, nullptr);
        if (type[0] == '*') {
            if (a.kind != Arg::Kind::kPointer) return fail(spec + ": " + name + " must be a pointer");
            if (div16 && a.pointer % 16 != 0)
                return fail(spec + ": " + name + " is not 16-byte aligned, which this build assumes");
            ptrs[u] = a.pointer;
            slots[u] = &ptrs[u];
        } else if (type == "i32") {
            if (a.kind != Arg::Kind::kInt) return fail(spec + ": " + name + " must be an integer");
            if (a.integer < INT32_MIN || a.integer > INT32_MAX)
                return fail(spec + ": " + name + " = " + std::to_string(a.integer) + " does not fit in int32");
            if (div16 && a.integer % 16 != 0)
                return fail(spec + ": " + name + " = " + std::to_string(a.integer) +
                            " is not a multiple of 16, which this build assumes");
            ints[u] = static_cast<int32_t>(a.integer);
            slots[u] = &ints[u];
        } else if (type == "fp32") {
            if (a.kind != Arg::Kind::kFloat) return fail(spec + ": " + name + " must be a float");
            reals[u] = a.real;
            slots[u] = &reals[u];
        } else {
            return fail(spec + ": parameter type " + type + " of " + name + " is not supported");
        }
    }
    for (int i = 0; i < numArgs; ++i)
        if (!used[static_cast<size_t>(i)])
            return fail(spec + ": " + args[i].name + " is neither a parameter nor a constant of this build");
    if (gridX == 0 || gridY == 0 || gridZ == 0) return CUDA_SUCCESS;
    Device dv;
    CUresult r = currentDevice(&dv);
    if (r != CUDA_SUCCESS) return r;
    return launchImage(dv.api, dv.ctx, dv.dev, img, stream, gridX, gridY, gridZ, slots.data(), img->numParams,
                       globalScratch);
}

const char* lastError() { return tLastError.c_str(); }

void unloadContext(CUcontext ctx) {
    const DriverApi* d = nullptr;
    if (driverApi(&d) != CUDA_SUCCESS) return;
    std::lock_guard<std::mutex> lock(gMutex);
    for (auto it = gCache.begin(); it != gCache.end();) {
        if (it->first.first == ctx) {
            d->moduleUnload(it->second.module);
            it = gCache.erase(it);
        } else {
            ++it;
        }
    }
}

}  // namespace kernels
}  // namespace sai
