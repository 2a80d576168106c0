// The sai Triton kernels in C++ hosts (the TensorRT plugins): cubins compiled ahead of time by
// `python -m sai.kernels.aot` (make kernels), embedded with their metadata in the generated
// sai_kernels_embedded.cpp, loaded once per CUDA context through the driver API and launched with
// the kernel's exact parameter list. Hand-written; the generated files live in build/kernels/.
//
// Parameters of a compiled Triton entry: the kernel's non-constexpr arguments in order, then two
// hidden pointers (global scratch, profile scratch). launch() appends both: null when the
// metadata's sizes are 0 (every sai kernel today), the caller's scratch buffer otherwise.
#pragma once

#include <cuda.h>

#include <cstddef>
#include <cstdint>

namespace sai {
namespace kernels {

struct KernelImage {
    const char* spec;             // specialization name, e.g. "sparse_conv_fp16_k3"
    int cc;                       // compute capability it was compiled for (80 = sm_80, 90 = sm_90a)
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
    int tileRows;                 // positions per program along grid x (BM / BP / BLOCK): tiles are
    int tileCols;                 // per arch, so grids come from the image; channels per program
                                  // along grid y (BN / BC; 1 for the mask partition)
};

// The table of the generated sai_kernels_embedded.cpp.
const KernelImage* embeddedImages(size_t* count);

// The image of `spec` that runs on a device of compute capability `cc`: the exact arch, else the
// newest one of the same major arch below it for the families whose cubins are forward compatible
// within the major (sm_8x, sm_12x); sm_90a / sm_100a cubins (wgmma, tcgen05) run only on their own
// arch. nullptr when there is none.
const KernelImage* findImage(const char* spec, int cc);

// Launches `spec` on the device of the current context: loads the image on first use in this
// context (cached per context; thread safe), opts in to large shared memory when needed, and calls
// cuLaunchKernel with block = 32 * numWarps and the hidden scratch pointers appended to `args`
// (`numArgs` must equal the image's numParams). `globalScratch` is needed only when the image's
// globalScratchSize > 0 (gridX*gridY*gridZ * globalScratchSize bytes); otherwise pass 0.
CUresult launch(const char* spec, CUstream stream, unsigned gridX, unsigned gridY, unsigned gridZ,
                void** args, int numArgs, CUdeviceptr globalScratch = 0);

// Unloads every module loaded in `ctx` (call before destroying a context you created).
void unloadContext(CUcontext ctx);

}  // namespace kernels
}  // namespace sai
