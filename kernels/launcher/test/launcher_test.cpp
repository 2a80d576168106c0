// CPU test of sai_kernel_launcher.cpp: the CUDA driver API is replaced by fakes defined here (no GPU,
// no libcuda), and so is the generated image table. Checks image selection per compute capability,
// the per-context module cache, the large shared-memory opt-in and the launch parameters (the two
// hidden scratch pointers appended as null). Built and run by tests/test_kernels.py.
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

extern "C" {
CUresult CUDAAPI cuCtxGetCurrent(CUcontext* ctx) { *ctx = gCtx; return CUDA_SUCCESS; }
CUresult CUDAAPI cuCtxGetDevice(CUdevice* dev) { *dev = 0; return CUDA_SUCCESS; }
CUresult CUDAAPI cuDeviceGetAttribute(int* v, CUdevice_attribute a, CUdevice) {
    if (a == CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR) *v = gCc / 10;
    else if (a == CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR) *v = gCc % 10;
    else if (a == CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN) *v = 227 * 1024;
    else return CUDA_ERROR_INVALID_VALUE;
    return CUDA_SUCCESS;
}
CUresult CUDAAPI cuModuleLoadData(CUmodule* m, const void*) { ++gLoads; *m = reinterpret_cast<CUmodule>(0x10); return CUDA_SUCCESS; }
CUresult CUDAAPI cuModuleUnload(CUmodule) { ++gUnloads; return CUDA_SUCCESS; }
CUresult CUDAAPI cuModuleGetFunction(CUfunction* f, CUmodule, const char* name) {
    if (std::strcmp(name, "entry") != 0) return CUDA_ERROR_NOT_FOUND;
    *f = reinterpret_cast<CUfunction>(0x20);
    return CUDA_SUCCESS;
}
CUresult CUDAAPI cuFuncGetAttribute(int* v, CUfunction_attribute a, CUfunction) {
    *v = a == CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES ? 1024 : 0;
    return CUDA_SUCCESS;
}
CUresult CUDAAPI cuFuncSetAttribute(CUfunction, CUfunction_attribute a, int v) {
    if (a == CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES) gSetShared = v;
    return CUDA_SUCCESS;
}
CUresult CUDAAPI cuLaunchKernel(CUfunction, unsigned, unsigned, unsigned, unsigned bx, unsigned, unsigned,
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
}

namespace sai {
namespace kernels {
namespace {
const unsigned char kBytes[4] = {1, 2, 3, 4};
const KernelImage kImages[] = {
    {"k", 80, kBytes, 4, "entry", 4, 64 * 1024, 0, 1, 0, 1, 2, "x:*fp16,n:i32", "BM=64", 64, 32},
    {"k", 90, kBytes, 4, "entry", 8, 1000, 0, 1, 0, 1, 2, "x:*fp16,n:i32", "BM=128", 128, 64},
    {"k", 120, kBytes, 4, "entry", 4, 1000, 0, 1, 0, 1, 2, "x:*fp16,n:i32", "BM=64", 64, 32},
    {"scratchy", 80, kBytes, 4, "entry", 4, 1000, 256, 16, 0, 1, 2, "x:*fp16,n:i32", "", 1, 1},
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
    // selection: exact arch, else the newest of the same major below it where cubins are compatible
    CHECK(findImage("k", 80)->cc == 80);
    CHECK(findImage("k", 86)->cc == 80);
    CHECK(findImage("k", 89)->cc == 80);
    CHECK(findImage("k", 90)->cc == 90);
    CHECK(findImage("k", 100) == nullptr);  // sm_90a cubins do not run on sm_100
    CHECK(findImage("k", 121)->cc == 120);
    CHECK(findImage("k", 75) == nullptr);
    CHECK(findImage("nope", 80) == nullptr);
    CHECK(findImage("k", 90)->tileRows == 128);

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
    std::printf("%s\n", gFailures ? "launcher_test: FAILED" : "launcher_test: OK");
    return gFailures ? 1 : 0;
}
