// The sai Triton kernels in C++ hosts (the TensorRT plugins): cubins compiled ahead of time by
// `python -m sai.kernels.aot` (make kernels), embedded with their metadata in the generated
// sai_kernels_embedded.cpp, loaded once per CUDA context through the driver API and launched with
// the kernel's exact parameter list. Hand-written; the generated files live in build/kernels/.
//
// Parameters of a compiled Triton entry: the kernel's non-constexpr arguments in order, then two
// hidden pointers (global scratch, profile scratch). The launch functions append both: null when
// the metadata's sizes are 0 (every sai kernel today), the caller's scratch buffer otherwise.
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
};

// The table of the generated sai_kernels_embedded.cpp.
const KernelImage* embeddedImages(size_t* count);

// The image of `spec` with `tactic` (falling back to tactic 1 when the spec has no such tile
// config) that runs on a device of compute capability `cc`: the exact arch, else for sm_8x the
// newest sm_8x below it (sm_80 cubins run on sm_86 / sm_89); the sm_90a / sm_100a / sm_120a cubins
// Triton builds (arch-specific features) run only on their own arch. nullptr when there is none.
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
};

// The resolved driver (libcuda.so.1, or what setDriverApi installed). CUDA_ERROR_NOT_INITIALIZED
// (and *api = nullptr) when no driver can be loaded or it lacks an entry point.
CUresult driverApi(const DriverApi** api);

// Replaces the driver (tests); nullptr goes back to libcuda.so.1. Drops the module cache.
void setDriverApi(const DriverApi* api);

// Compute capability (major*10 + minor) of the current context's device.
CUresult currentCapability(int* cc);

// Stream-ordered byte fills through the driver (no host synchronisation; capturable in CUDA graphs).
CUresult memsetAsync(CUdeviceptr dst, unsigned char value, size_t bytes, CUstream stream);
CUresult memset2DAsync(CUdeviceptr dst, size_t pitch, unsigned char value, size_t widthBytes, size_t height,
                       CUstream stream);

// ---- launching -------------------------------------------------------------------------------

// Launches `spec` (tactic 1) on the device of the current context: loads the image on first use in
// this context (cached per context; thread safe), opts in to large shared memory when needed, and
// calls cuLaunchKernel with block = 32 * numWarps and the hidden scratch pointers appended to
// `args` (`numArgs` must equal the image's numParams). `globalScratch` is needed only when the
// image's globalScratchSize > 0 (gridX*gridY*gridZ * globalScratchSize bytes); otherwise pass 0.
CUresult launch(const char* spec, CUstream stream, unsigned gridX, unsigned gridY, unsigned gridZ,
                void** args, int numArgs, CUdeviceptr globalScratch = 0);

// One argument by name, for launchNamed: a pointer, an integer or a float.
struct Arg {
    enum class Kind { kPointer, kInt, kFloat };
    const char* name;
    Kind kind;
    CUdeviceptr pointer;
    int64_t integer;
    float real;
    static Arg ptr(const char* n, const void* p) {
        return Arg{n, Kind::kPointer, static_cast<CUdeviceptr>(reinterpret_cast<uintptr_t>(p)), 0, 0.F};
    }
    static Arg i(const char* n, int64_t v) { return Arg{n, Kind::kInt, 0, v, 0.F}; }
    static Arg f(const char* n, float v) { return Arg{n, Kind::kFloat, 0, 0, v}; }
};

// Launches `img` with its parameters taken by name from `args`, in the image's order. Checks
// before launching, so a mismatch between the host code and a build of the kernels is an error,
// never a wrong launch: every parameter given with the right kind, integers within int32, the
// parameters the build assumes 16-divisible (`divisible`) divisible, and every argument that the
// image compiled in as a constant (e.g. "sxc=1", "KH=3") equal to that constant; an argument the
// image knows by neither role is an error too. On CUDA_ERROR_INVALID_VALUE, lastError() says which
// check failed.
CUresult launchNamed(const KernelImage* img, CUstream stream, unsigned gridX, unsigned gridY, unsigned gridZ,
                     const Arg* args, int numArgs, CUdeviceptr globalScratch = 0);

// The message of the last failed check of launchNamed in this thread ("" when none).
const char* lastError();

// Unloads every module loaded in `ctx` (call before destroying a context you created).
void unloadContext(CUcontext ctx);

}  // namespace kernels
}  // namespace sai
