// The sai Triton kernels in C++ hosts (the TensorRT plugins): cubins compiled ahead of time by
// `python -m sai.kernels.aot` (make kernels), embedded with their metadata in the generated
// sai_kernels_embedded.cpp, loaded once per CUDA context through the driver API and launched with
// the kernel's exact parameter list. Hand-written; the generated files live in build/kernels/.
//
// Parameters of a compiled Triton entry: the kernel's non-constexpr arguments in order, then two
// hidden pointers (global scratch, profile scratch). The launch functions append both: null when
// the metadata's sizes are 0 (every sai kernel today), the caller's scratch buffer otherwise.
//
// Two ways to launch:
//   - the hot path (the plugins' enqueue): an image chosen once (findImage) and resolved once per
//     CUDA context (resolveKernel: module, function, block size, shared memory) into a
//     ResolvedKernel, then launched with the typed argument struct of its kernel family
//     (sai_kernels_generated.h: one struct per Triton kernel, one `launch` overload each). The
//     image's generated pack function checks the arguments against the build (compiled-in
//     constants, 16-divisibility it assumes, int32 range, every argument set) with integer compares
//     and writes the parameter slots: no string, no allocation, no lock, no image scan;
//   - by name (launch(spec, ...)): image scan + module cache on every call, for tools and tests.
//
// The driver is never linked: its entry points are resolved from libcuda.so.1 at the first call
// (dlopen + cuGetProcAddress), so a library built on this launcher loads, registers and answers
// queries on machines without a driver; the first launch there returns CUDA_ERROR_NOT_INITIALIZED.
#pragma once

#include <cuda.h>

#include <cstddef>
#include <cstdint>

namespace sai {
namespace kernels {

// ---- typed arguments (used by the generated pack functions) -----------------------------------

// Parameters of one launch (the kernel's, then the two hidden scratch pointers).
constexpr int kMaxLaunchParams = 62;
union LaunchSlot {
    CUdeviceptr pointer;
    int32_t i32;
    float f32;
};

// An argument left unset in a typed argument struct (its default): a launch refuses it.
constexpr int64_t kUnsetInt = INT64_MIN;
constexpr CUdeviceptr kUnsetPointer = ~static_cast<CUdeviceptr>(0);
constexpr float kUnsetFloat = __builtin_nanf("");

// Why a pack function refused the arguments (static strings only: nothing allocated).
struct PackError {
    enum Reason { kNone = 0, kUnset, kConstant, kAlignment, kMultiple16, kInt32 };
    const char* name = nullptr;  // the argument
    Reason reason = kNone;
    long long value = 0;
    long long expect = 0;
};

// Generated per build: checks `args` (the family's struct) and writes the image's parameter slots.
using PackFn = bool (*)(const void* args, LaunchSlot* slots, PackError* err);

inline bool packFail(PackError* e, const char* name, PackError::Reason reason, long long value, long long expect = 0) {
    e->name = name;
    e->reason = reason;
    e->value = value;
    e->expect = expect;
    return false;
}

struct KernelImage {
    const char* spec;             // specialization name, e.g. "sparse_conv_fp16_k3_relu"
    int cc;                       // compute capability it was compiled for (80 = sm_80, 90 = sm_90a)
    int tactic;                   // tile config id (1: the arch's tuned default; stable across builds)
    const unsigned char* cubin;   // the cubin bytes
    size_t cubinSize;
    const char* entry;            // the kernel's function name in the cubin
    int numWarps;                 // block = 32 * numWarps threads
    int sharedBytes;              // dynamic shared memory per block
    int globalScratchSize;        // bytes per program of the hidden global scratch (0: pass null)
    int globalScratchAlign;
    int profileScratchSize;       // bytes of the hidden profile scratch (0: pass null)
    int profileScratchAlign;
    int numParams;                // user parameters, without the two hidden ones
    const char* params;           // "name:type,..." (types: *fp16, *i32, i32, fp32, ...)
    const char* constexprs;       // "KH=3,KW=3,...,BM=128,BN=64,BK=64": the compiled-in constants
    const char* divisible;        // "x_ptr,CIN_G,...": parameters the build assumes 16-divisible
                                  // (pointers: the address in bytes; integers: the value)
    int tileRows;                 // positions per program along grid x (BM / BP / BLOCK): tiles are
    int tileCols;                 // per arch, so grids come from the image; channels per program
                                  // along grid y (BN / BC; 1 for the mask partition)
    int family;                   // the kernel family (sai_kernels_generated.h: its argument struct)
    PackFn pack;                  // typed arguments -> parameter slots, with this build's checks
};

// The table of the generated sai_kernels_embedded.cpp.
const KernelImage* embeddedImages(size_t* count);

// The image of `spec` with `tactic` (falling back to tactic 1 when the spec has no such tile
// config) that runs on a device of compute capability `cc`: the exact arch, else for sm_8x the
// newest sm_8x below it (sm_80 cubins run on sm_86 / sm_89); the sm_90a / sm_100a / sm_120a cubins
// Triton builds (arch-specific features) run only on their own arch. nullptr when there is none.
// Scans the table (string compares): call it when choosing a configuration, not per launch.
const KernelImage* findImage(const char* spec, int cc, int tactic = 1);

// ---- the driver ------------------------------------------------------------------------------

// The driver entry points the launcher calls. Resolved from libcuda.so.1 on first use; tests
// install fakes with setDriverApi (a recording driver replays the launches elsewhere).
struct DriverApi {
    CUresult (*ctxGetCurrent)(CUcontext*);
    CUresult (*ctxGetDevice)(CUdevice*);
    CUresult (*deviceGetAttribute)(int*, CUdevice_attribute, CUdevice);
    CUresult (*moduleLoadData)(CUmodule*, const void*);
    CUresult (*moduleUnload)(CUmodule);
    CUresult (*moduleGetFunction)(CUfunction*, CUmodule, const char*);
    CUresult (*funcGetAttribute)(int*, CUfunction_attribute, CUfunction);
    CUresult (*funcSetAttribute)(CUfunction, CUfunction_attribute, int);
    CUresult (*launchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                             CUstream, void**, void**);
    CUresult (*memsetD8Async)(CUdeviceptr, unsigned char, size_t, CUstream);
    CUresult (*memsetD2D8Async)(CUdeviceptr, size_t, unsigned char, size_t, size_t, CUstream);
    CUresult (*memAlloc)(CUdeviceptr*, size_t);
    CUresult (*memFree)(CUdeviceptr);
    CUresult (*streamSynchronize)(CUstream);
    CUresult (*streamIsCapturing)(CUstream, CUstreamCaptureStatus*);
    CUresult (*ctxPushCurrent)(CUcontext);
    CUresult (*ctxPopCurrent)(CUcontext*);
};

// The resolved driver (libcuda.so.1, or what setDriverApi installed). CUDA_ERROR_NOT_INITIALIZED
// (and *api = nullptr) when no driver can be loaded or it lacks an entry point. Lock-free once
// libcuda.so.1 has been tried.
CUresult driverApi(const DriverApi** api);

// Replaces the driver (tests); nullptr goes back to libcuda.so.1. Drops the module cache and
// invalidates every ResolvedKernel (generation()).
void setDriverApi(const DriverApi* api);

// Bumped whenever resolved kernels may be stale (setDriverApi, unloadContext).
uint64_t generation();

// Compute capability (major*10 + minor) of the current context's device.
CUresult currentCapability(int* cc);

// Stream-ordered byte fills through the driver (no host synchronisation; capturable in CUDA graphs).
CUresult memsetAsync(CUdeviceptr dst, unsigned char value, size_t bytes, CUstream stream);
CUresult memset2DAsync(CUdeviceptr dst, size_t pitch, unsigned char value, size_t widthBytes, size_t height,
                       CUstream stream);

// Device memory that outlives a launch (the plugins' packed weights), in the current context.
struct DeviceBuffer {
    CUdeviceptr pointer = 0;
    size_t bytes = 0;
    CUcontext context = nullptr;
};
CUresult allocDevice(size_t bytes, DeviceBuffer* out);
// Frees it in its own context (pushed for the call); a no-op for an empty buffer.
void freeDevice(DeviceBuffer* buffer);

// ---- launching -------------------------------------------------------------------------------

// An image loaded in one CUDA context: what a launch needs, resolved once.
struct ResolvedKernel {
    const KernelImage* image = nullptr;
    const DriverApi* api = nullptr;
    CUcontext context = nullptr;
    CUfunction function = nullptr;
    unsigned threads = 0;
    unsigned sharedBytes = 0;
    uint64_t generation = 0;  // generation() when resolved
};

// Resolves `img` in the current context: loads its module on first use in this context (cached
// per context; thread safe: takes the cache's lock) and opts in to large shared memory when needed.
CUresult resolveKernel(const KernelImage* img, ResolvedKernel* out);

// Whether `k` is still valid for a launch in `ctx` (resolved there, nothing unloaded since).
inline bool resolvedFor(const ResolvedKernel& k, CUcontext ctx) {
    return k.function != nullptr && k.context == ctx && k.generation == generation();
}

// Launches `k` with the typed arguments `args` of kernel family `family` (use the typed overloads
// of sai_kernels_generated.h). The image's pack function checks them; on a refusal the launch
// returns CUDA_ERROR_INVALID_VALUE and lastError() says which argument and why (the only path that
// formats text). `globalScratch` as for launch().
CUresult launchResolved(const ResolvedKernel& k, CUstream stream, unsigned gridX, unsigned gridY, unsigned gridZ,
                        int family, const void* args, CUdeviceptr globalScratch = 0);

// Launches `spec` (tactic 1) on the device of the current context: scans the table, resolves the
// image in this context and calls cuLaunchKernel with block = 32 * numWarps and the hidden scratch
// pointers appended to `args` (`numArgs` must equal the image's numParams, in its order). For tools
// and tests: the plugins launch through ResolvedKernel. `globalScratch` is needed only when the
// image's globalScratchSize > 0 (gridX*gridY*gridZ * globalScratchSize bytes); otherwise pass 0.
CUresult launch(const char* spec, CUstream stream, unsigned gridX, unsigned gridY, unsigned gridZ,
                void** args, int numArgs, CUdeviceptr globalScratch = 0);

// The message of the last refused launch in this thread ("" when none).
const char* lastError();

// Unloads every module loaded in `ctx` (call before destroying a context you created).
void unloadContext(CUcontext ctx);

// ---- what the launcher did (tests count the work on the launch path) ---------------------------

struct LauncherStats {
    uint64_t imageScans;      // findImage calls (string compares over the table)
    uint64_t moduleLookups;   // module cache lookups (under its lock): resolveKernel, launch(spec)
    uint64_t driverLookups;   // driverApi calls
    uint64_t launches;        // kernel launches
    uint64_t refused;         // launches a pack function refused
    uint64_t deviceAllocs;    // allocDevice calls
};
LauncherStats launcherStats();

}  // namespace kernels
}  // namespace sai
