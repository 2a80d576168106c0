/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * fullcaps_kernels.cpp: stand-in kernel launchers that claim every layout, type and a mask in FP32
 * (what the tensor-core kernels take), with three tactics, and launch nothing. Linked instead of the
 * CUDA kernels into libsai_trt_plugins_fullcaps.so (tests only, never installed), so that the glue
 * harness drives every format combination and tactic path of the glue on the CPU whatever kernels
 * the real library carries. No GPU code: enqueue through this library returns an error.
 */
#include "interpolateKernel.h"
#include "sparseBlockKernel.h"
#include "sparseSampleConvKernel.h"

namespace sai
{
namespace
{
SaiKernelCaps fullCaps(char const* what)
{
    SaiKernelCaps c;
    c.layouts[static_cast<int32_t>(SaiDataType::kFLOAT)] = saiLayoutBit(SaiLayout::kNCHW) | saiLayoutBit(SaiLayout::kNHWC);
    c.layouts[static_cast<int32_t>(SaiDataType::kHALF)]
        = saiLayoutBit(SaiLayout::kNCHW) | saiLayoutBit(SaiLayout::kNHWC8) | saiLayoutBit(SaiLayout::kNHWC16);
    c.layouts[static_cast<int32_t>(SaiDataType::kBF16)] = saiLayoutBit(SaiLayout::kNCHW) | saiLayoutBit(SaiLayout::kNHWC8);
    c.fp32Mask = true;
    c.nbTactics = 3;
    for (int32_t i = 0; i < 3; ++i)
    {
        c.tactics[i] = 11 + i;
        c.tacticNames[i] = what;
    }
    return c;
}
} // namespace

SaiKernelCaps const& sparseSampleConvKernelCaps()
{
    static SaiKernelCaps const caps = fullCaps("fake-conv");
    return caps;
}

SaiKernelCaps const& interpolateKernelCaps()
{
    static SaiKernelCaps const caps = fullCaps("fake-interp");
    return caps;
}

size_t sparseSampleConvWorkspaceSize(SaiConvParams const& p, SaiDataType /*type*/)
{
    return static_cast<size_t>(p.N) * p.Ho * p.Wo * 4 + 256;
}

struct SparseSampleConvRunner::State
{
};

SparseSampleConvRunner::SparseSampleConvRunner(bool /*packEveryLaunch*/, bool /*shareWeights*/)
    : mState(new State)
{
}

SparseSampleConvRunner::~SparseSampleConvRunner()
{
    delete mState;
}

cudaError_t SparseSampleConvRunner::run(SaiConvParams const& /*p*/, SaiDataType /*type*/,
    SaiConvBuffers const& /*b*/, void*, size_t, cudaStream_t) noexcept
{
    return cudaErrorNotSupported;
}

int64_t SparseSampleConvRunner::prepares() const noexcept
{
    return 0;
}

int64_t SparseSampleConvRunner::packs() const noexcept
{
    return 0;
}

size_t interpolateWorkspaceSize(SaiInterpParams const& p, SaiDataType /*type*/)
{
    return static_cast<size_t>(p.N) * p.H * p.W * 8 + 256;
}

struct InterpolateRunner::State
{
};

InterpolateRunner::InterpolateRunner()
    : mState(new State)
{
}

InterpolateRunner::~InterpolateRunner()
{
    delete mState;
}

cudaError_t InterpolateRunner::run(SaiInterpParams const& /*p*/, SaiDataType /*type*/, SaiInterpLayouts const& /*l*/,
    int32_t /*tactic*/, void const*, void const*, void*, void*, size_t, cudaStream_t) noexcept
{
    return cudaErrorNotSupported;
}

int64_t InterpolateRunner::prepares() const noexcept
{
    return 0;
}

// SparseBlock keeps its real formats and plan (sparseBlockLaunch.cpp); its runner launches nothing here
struct SparseBlockRunner::State
{
};

SparseBlockRunner::SparseBlockRunner()
    : mState(new State)
{
}

SparseBlockRunner::~SparseBlockRunner()
{
    delete mState;
}

cudaError_t SparseBlockRunner::run(SaiBlockParams const& /*p*/, SaiDataType /*type*/, SaiBlockBuffers const& /*b*/,
    void* /*workspace*/, size_t /*workspaceSize*/, cudaStream_t /*stream*/) noexcept
{
    return cudaErrorNotSupported;
}

int64_t SparseBlockRunner::prepares() const noexcept
{
    return 0;
}

int64_t SparseBlockRunner::packs() const noexcept
{
    return 0;
}

char const* saiLastLaunchError()
{
    return "the stand-in kernels of the fullcaps test library launch nothing";
}

} // namespace sai
