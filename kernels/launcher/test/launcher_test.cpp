// CPU test of sai_kernel_launcher.cpp: the CUDA driver API is replaced by fakes defined here (no GPU,
// no libcuda; installed with setDriverApi), and so is the generated image table. Checks image
// selection per compute capability and tactic, the per-context module cache, the large shared-memory
// opt-in, the launch parameters (the two hidden scratch pointers appended as null), resolved kernels
// launched with typed arguments (a hand-written family struct and pack function standing for the
// generated ones: every check refuses, nothing is scanned, looked up or locked per launch, a stale
// resolution is refused), device buffers and the memsets. Built and run by tests/test_kernels.py.
#include "sai_kernel_launcher.h"

#include <cstdio>
#include <cstring>
#include <vector>

namespace {
int gCc = 80;
CUcontext gCtx = reinterpret_cast<CUcontext>(0x1);
int gLoads = 0, gUnloads = 0, gSetShared = -1;
unsigned gBlock = 0, gShared = 0;
std::vector<unsigned long long> gParamValues;  // the launch's parameters, read as 8-byte values
int gFailures = 0;

#define CHECK(cond)                                                    \
    do {                                                               \
        if (!(cond)) {                                                 \
            std::printf("FAILED line %d: %s\n", __LINE__, #cond);      \
            ++gFailures;                                               \
        }                                                              \
    } while (0)
}  // namespace

namespace fake {
CUresult cuCtxGetCurrent(CUcontext* ctx) { *ctx = gCtx; return CUDA_SUCCESS; }
CUresult cuCtxGetDevice(CUdevice* dev) { *dev = 0; return CUDA_SUCCESS; }
CUresult cuDeviceGetAttribute(int* v, CUdevice_attribute a, CUdevice) {
    if (a == CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR) *v = gCc / 10;
    else if (a == CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR) *v = gCc % 10;
    else if (a == CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN) *v = 227 * 1024;
    else return CUDA_ERROR_INVALID_VALUE;
    return CUDA_SUCCESS;
}
CUresult cuModuleLoadData(CUmodule* m, const void*) { ++gLoads; *m = reinterpret_cast<CUmodule>(0x10); return CUDA_SUCCESS; }
CUresult cuModuleUnload(CUmodule) { ++gUnloads; return CUDA_SUCCESS; }
CUresult cuModuleGetFunction(CUfunction* f, CUmodule, const char* name) {
    if (std::strcmp(name, "entry") != 0) return CUDA_ERROR_NOT_FOUND;
    *f = reinterpret_cast<CUfunction>(0x20);
    return CUDA_SUCCESS;
}
CUresult cuFuncGetAttribute(int* v, CUfunction_attribute a, CUfunction) {
    *v = a == CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES ? 1024 : 0;
    return CUDA_SUCCESS;
}
CUresult cuFuncSetAttribute(CUfunction, CUfunction_attribute a, int v) {
    if (a == CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES) gSetShared = v;
    return CUDA_SUCCESS;
}
CUresult cuLaunchKernel(CUfunction, unsigned, unsigned, unsigned, unsigned bx, unsigned, unsigned,
                                unsigned shared, CUstream, void** params, void**) {
    gBlock = bx;
    gShared = shared;
    gParamValues.clear();
    gParamValues.push_back(*static_cast<unsigned long long*>(params[0]));  // CUdeviceptr
    gParamValues.push_back(static_cast<unsigned long long>(*static_cast<int*>(params[1])));  // int32
    gParamValues.push_back(*static_cast<CUdeviceptr*>(params[2]));  // global scratch
    gParamValues.push_back(*static_cast<CUdeviceptr*>(params[3]));  // profile scratch
    return CUDA_SUCCESS;
}
std::vector<unsigned long long> gMemsets;  // dst, value, bytes (1D) or dst, pitch, value, width, height (2D)
CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, CUstream) {
    gMemsets = {dst, v, n};
    return CUDA_SUCCESS;
}
CUresult cuMemsetD2D8Async(CUdeviceptr dst, size_t pitch, unsigned char v, size_t w, size_t h, CUstream) {
    gMemsets = {dst, pitch, v, w, h};
    return CUDA_SUCCESS;
}
int gAllocs = 0, gFrees = 0;
CUcontext gPushed = nullptr;
CUresult cuMemAlloc(CUdeviceptr* p, size_t) { ++gAllocs; *p = 0x7000; return CUDA_SUCCESS; }
CUresult cuMemFree(CUdeviceptr p) { if (p == 0x7000) ++gFrees; return CUDA_SUCCESS; }
CUresult cuStreamSynchronize(CUstream) { return CUDA_SUCCESS; }
CUresult cuStreamIsCapturing(CUstream, CUstreamCaptureStatus* s) { *s = CU_STREAM_CAPTURE_STATUS_NONE; return CUDA_SUCCESS; }
CUresult cuCtxPushCurrent(CUcontext c) { gPushed = c; return CUDA_SUCCESS; }
CUresult cuCtxPopCurrent(CUcontext* c) { *c = gPushed; return CUDA_SUCCESS; }
const sai::kernels::DriverApi kDriver = {cuCtxGetCurrent, cuCtxGetDevice, cuDeviceGetAttribute, cuModuleLoadData,
                                         cuModuleUnload, cuModuleGetFunction, cuFuncGetAttribute, cuFuncSetAttribute,
                                         cuLaunchKernel, cuMemsetD8Async, cuMemsetD2D8Async, cuMemAlloc, cuMemFree,
                                         cuStreamSynchronize, cuStreamIsCapturing, cuCtxPushCurrent, cuCtxPopCurrent};
}  // namespace fake
using fake::gMemsets;

namespace sai {
namespace kernels {
// What aot.py generates for a kernel k(x, n, KH: constexpr, RELU: constexpr, BM: constexpr)
struct KArgs {
    static constexpr int kFamily = 7;
    CUdeviceptr x = kUnsetPointer;
    int64_t n = kUnsetInt;
    int64_t KH = kUnsetInt;
    int64_t RELU = kUnsetInt;
};
namespace {
// sm_80 tactic 1: KH=3 and RELU compiled in, x assumed 16-byte aligned
bool packK80(const void* args, LaunchSlot* s, PackError* e) {
    const auto& a = *static_cast<const KArgs*>(args);
    if (a.KH != 3LL) return packFail(e, "KH", a.KH == kUnsetInt ? PackError::kUnset : PackError::kConstant, a.KH, 3);
    if (a.RELU != 1LL) return packFail(e, "RELU", a.RELU == kUnsetInt ? PackError::kUnset : PackError::kConstant, a.RELU, 1);
    if (a.x == kUnsetPointer) return packFail(e, "x", PackError::kUnset, 0);
    if (a.x % 16 != 0) return packFail(e, "x", PackError::kAlignment, static_cast<long long>(a.x));
    s[0].pointer = a.x;
    if (a.n < INT32_MIN || a.n > INT32_MAX) return packFail(e, "n", a.n == kUnsetInt ? PackError::kUnset : PackError::kInt32, a.n);
    s[1].i32 = static_cast<int32_t>(a.n);
    return true;
}
// sm_80 tactic 2: n assumed 16-divisible as well
bool packK80t2(const void* args, LaunchSlot* s, PackError* e) {
    const auto& a = *static_cast<const KArgs*>(args);
    if (a.n % 16 != 0) return packFail(e, "n", PackError::kMultiple16, a.n);
    return packK80(args, s, e);
}
// sm_90 / sm_120: nothing assumed, nothing compiled in
bool packKAny(const void* args, LaunchSlot* s, PackError* e) {
    const auto& a = *static_cast<const KArgs*>(args);
    if (a.x == kUnsetPointer) return packFail(e, "x", PackError::kUnset, 0);
    s[0].pointer = a.x;
    if (a.n < INT32_MIN || a.n > INT32_MAX) return packFail(e, "n", a.n == kUnsetInt ? PackError::kUnset : PackError::kInt32, a.n);
    s[1].i32 = static_cast<int32_t>(a.n);
    return true;
}
const unsigned char kBytes[4] = {1, 2, 3, 4};
const KernelImage kImages[] = {
    {"k", 80, 1, kBytes, 4, "entry", 4, 64 * 1024, 0, 1, 0, 1, 2, "x:*fp16,n:i32", "KH=3,RELU=True,BM=64", "x", 64, 32, 7, packK80},
    {"k", 80, 2, kBytes, 4, "entry", 4, 1000, 0, 1, 0, 1, 2, "x:*fp16,n:i32", "KH=3,RELU=True,BM=32", "x,n", 32, 32, 7, packK80t2},
    {"k", 90, 1, kBytes, 4, "entry", 8, 1000, 0, 1, 0, 1, 2, "x:*fp16,n:i32", "BM=128", "", 128, 64, 7, packKAny},
    {"k", 120, 1, kBytes, 4, "entry", 4, 1000, 0, 1, 0, 1, 2, "x:*fp16,n:i32", "BM=64", "", 64, 32, 7, packKAny},
    {"scratchy", 80, 1, kBytes, 4, "entry", 4, 1000, 256, 16, 0, 1, 2, "x:*fp16,n:i32", "", "", 1, 1, 7, packKAny},
};
}  // namespace
const KernelImage* embeddedImages(size_t* count) {
    *count = sizeof(kImages) / sizeof(kImages[0]);
    return kImages;
}
}  // namespace kernels
}  // namespace sai

int main() {
    using namespace sai::kernels;
    setDriverApi(&fake::kDriver);
    // selection: exact arch, else the newest of the same major below it where cubins are compatible
    CHECK(findImage("k", 80)->cc == 80);
    CHECK(findImage("k", 86)->cc == 80);
    CHECK(findImage("k", 89)->cc == 80);
    CHECK(findImage("k", 90)->cc == 90);
    CHECK(findImage("k", 100) == nullptr);  // sm_90a cubins do not run on sm_100
    CHECK(findImage("k", 121) == nullptr);  // sm_120a cubins do not run on sm_121 either
    CHECK(findImage("k", 75) == nullptr);
    CHECK(findImage("nope", 80) == nullptr);
    CHECK(findImage("k", 90)->tileRows == 128);
    CHECK(findImage("k", 86, 2)->tactic == 2 && findImage("k", 86, 2)->tileRows == 32);
    CHECK(findImage("k", 90, 2)->tactic == 1);  // no such tile config there: the default
    CHECK(findImage("k", 80, 7)->tactic == 1);

    CUdeviceptr x = 0xabcdef;
    int n = 7;
    void* args[] = {&x, &n};
    gCc = 86;
    CHECK(launch("k", nullptr, 3, 2, 1, args, 2) == CUDA_SUCCESS);
    CHECK(gLoads == 1);
    CHECK(gBlock == 128 && gShared == 64 * 1024);
    CHECK(gSetShared == 227 * 1024 - 1024);  // opted in to what the device allows beyond the static part
    CHECK(gParamValues.size() == 4 && gParamValues[0] == 0xabcdef && gParamValues[1] == 7);
    CHECK(gParamValues[2] == 0 && gParamValues[3] == 0);  // hidden scratch pointers: null
    CHECK(launch("k", nullptr, 3, 2, 1, args, 2) == CUDA_SUCCESS);
    CHECK(gLoads == 1);  // cached in this context
    gCtx = reinterpret_cast<CUcontext>(0x2);
    CHECK(launch("k", nullptr, 1, 1, 1, args, 2) == CUDA_SUCCESS);
    CHECK(gLoads == 2);  // loaded once per context
    CHECK(launch("k", nullptr, 1, 1, 1, args, 1) == CUDA_ERROR_INVALID_VALUE);  // wrong parameter count
    CHECK(launch("scratchy", nullptr, 1, 1, 1, args, 2) == CUDA_ERROR_INVALID_VALUE);  // needs a scratch buffer
    CHECK(launch("scratchy", nullptr, 1, 1, 1, args, 2, 0x5000) == CUDA_SUCCESS);
    CHECK(gParamValues[2] == 0x5000);
    gCc = 100;
    CHECK(launch("k", nullptr, 1, 1, 1, args, 2) == CUDA_ERROR_NO_BINARY_FOR_GPU);
    unloadContext(reinterpret_cast<CUcontext>(0x2));
    CHECK(gUnloads == 2);  // k and scratchy were loaded in context 0x2
    CHECK(launch("k", nullptr, 1, 1, 1, args, 2, 0) == CUDA_ERROR_NO_BINARY_FOR_GPU);  // still sm_100

    // resolved once, launched with typed arguments: the build's checks, no scan, no lookup, no lock
    gCc = 80;
    gCtx = reinterpret_cast<CUcontext>(0x1);
    const KernelImage* img = findImage("k", 80);
    ResolvedKernel k;
    CHECK(resolveKernel(img, &k) == CUDA_SUCCESS && k.function != nullptr && k.threads == 128);
    CHECK(resolvedFor(k, gCtx) && !resolvedFor(k, reinterpret_cast<CUcontext>(0x2)));
    alignas(16) static char buf[64];
    KArgs a;
    a.x = reinterpret_cast<uintptr_t>(buf);
    a.n = 9;
    a.KH = 3;
    a.RELU = 1;
    LauncherStats const before = launcherStats();
    CHECK(launchResolved(k, nullptr, 1, 1, 1, KArgs::kFamily, &a) == CUDA_SUCCESS && lastError()[0] == 0);
    CHECK(gParamValues[0] == reinterpret_cast<uintptr_t>(buf) && gParamValues[1] == 9);
    CHECK(gParamValues[2] == 0 && gParamValues[3] == 0);
    LauncherStats const after = launcherStats();
    CHECK(after.launches == before.launches + 1 && after.imageScans == before.imageScans);
    CHECK(after.moduleLookups == before.moduleLookups && after.driverLookups == before.driverLookups);
    KArgs wrongConst = a;
    wrongConst.KH = 1;
    CHECK(launchResolved(k, nullptr, 1, 1, 1, KArgs::kFamily, &wrongConst) == CUDA_ERROR_INVALID_VALUE);
    CHECK(std::strstr(lastError(), "KH is compiled in as 3, called with 1") != nullptr);
    KArgs unset = a;
    unset.n = kUnsetInt;
    CHECK(launchResolved(k, nullptr, 1, 1, 1, KArgs::kFamily, &unset) == CUDA_ERROR_INVALID_VALUE);
    CHECK(std::strstr(lastError(), "n was not set") != nullptr);
    KArgs misaligned = a;
    misaligned.x += 2;
    CHECK(launchResolved(k, nullptr, 1, 1, 1, KArgs::kFamily, &misaligned) == CUDA_ERROR_INVALID_VALUE);
    CHECK(std::strstr(lastError(), "x is not 16-byte aligned, which this build assumes") != nullptr);
    ResolvedKernel k90;
    gCc = 90;
    CHECK(resolveKernel(findImage("k", 90), &k90) == CUDA_SUCCESS);
    CHECK(launchResolved(k90, nullptr, 1, 1, 1, KArgs::kFamily, &misaligned) == CUDA_SUCCESS);  // assumes nothing
    gCc = 80;
    ResolvedKernel k2;
    CHECK(resolveKernel(findImage("k", 80, 2), &k2) == CUDA_SUCCESS);
    CHECK(launchResolved(k2, nullptr, 1, 1, 1, KArgs::kFamily, &a) == CUDA_ERROR_INVALID_VALUE);  // n % 16
    CHECK(std::strstr(lastError(), "n = 9 is not a multiple of 16") != nullptr);
    KArgs big = a;
    big.n = 1LL << 33;
    CHECK(launchResolved(k, nullptr, 1, 1, 1, KArgs::kFamily, &big) == CUDA_ERROR_INVALID_VALUE);
    CHECK(std::strstr(lastError(), "does not fit in int32") != nullptr);
    CHECK(launchResolved(k, nullptr, 1, 1, 1, KArgs::kFamily + 1, &a) == CUDA_ERROR_INVALID_VALUE);  // other family
    CHECK(std::strstr(lastError(), "not of this kernel's family") != nullptr);
    CHECK(launcherStats().refused == before.refused + 5);
    // unloading the context invalidates what was resolved in it: refused until resolved again
    int const loads = gLoads;
    unloadContext(gCtx);
    CHECK(!resolvedFor(k, gCtx));
    CHECK(launchResolved(k, nullptr, 1, 1, 1, KArgs::kFamily, &a) == CUDA_ERROR_INVALID_VALUE);
    CHECK(std::strstr(lastError(), "not resolved") != nullptr);
    CHECK(resolveKernel(img, &k) == CUDA_SUCCESS && gLoads == loads + 1);
    CHECK(launchResolved(k, nullptr, 1, 1, 1, KArgs::kFamily, &a) == CUDA_SUCCESS);

    // device buffers: allocated in the current context, freed in theirs
    DeviceBuffer dbuf;
    CHECK(allocDevice(256, &dbuf) == CUDA_SUCCESS && dbuf.pointer == 0x7000 && dbuf.context == gCtx);
    gCtx = reinterpret_cast<CUcontext>(0x3);
    freeDevice(&dbuf);
    CHECK(fake::gFrees == 1 && fake::gPushed == reinterpret_cast<CUcontext>(0x1) && dbuf.pointer == 0);
    freeDevice(&dbuf);
    CHECK(fake::gFrees == 1);  // an empty buffer: nothing to free
    gCtx = reinterpret_cast<CUcontext>(0x1);

    // memsets go to the driver as given; empty ones never reach it
    CHECK(memsetAsync(0x1000, 0, 64, nullptr) == CUDA_SUCCESS && gMemsets.size() == 3 && gMemsets[2] == 64);
    CHECK(memset2DAsync(0x2000, 48, 0, 16, 10, nullptr) == CUDA_SUCCESS && gMemsets.size() == 5);
    CHECK(gMemsets[1] == 48 && gMemsets[3] == 16 && gMemsets[4] == 10);
    gMemsets.clear();
    CHECK(memsetAsync(0x1000, 0, 0, nullptr) == CUDA_SUCCESS && gMemsets.empty());
    int cc = 0;
    CHECK(currentCapability(&cc) == CUDA_SUCCESS && cc == 80);

    // without a driver (libcuda.so.1 cannot be loaded here): a clean error, no crash
    setDriverApi(nullptr);
    const DriverApi* api = nullptr;
    if (driverApi(&api) != CUDA_SUCCESS) {
        CHECK(api == nullptr);
        CHECK(launch("k", nullptr, 1, 1, 1, args, 2) == CUDA_ERROR_NOT_INITIALIZED);
        CHECK(memsetAsync(0x1000, 0, 64, nullptr) == CUDA_ERROR_NOT_INITIALIZED);
    }
    std::printf("%s\n", gFailures ? "launcher_test: FAILED" : "launcher_test: OK");
    return gFailures ? 1 : 0;
}
