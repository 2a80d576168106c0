/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * The launch side of sai::SparseBlock (docs/design.md 3.1-3.4, second form): one whole sparse residual
 * block on the AOT-compiled Triton kernels of kernels/sparse_block.py. No TensorRT types: the plugin
 * glue (sparseBlockPlugin.cpp) calls these.
 *
 * SaiBlockParams holds one node's geometry and attributes; saiBlockFinalize derives the map sizes and
 * checks what the kernels are built for; sparseBlockWorkspaceSize is the device workspace one run
 * carves (256-byte aligned pieces, in this order):
 *   m1, m2  fp32 [P1], [P2]       the masks (P1 = N*H1*W1, P2 = N*H2*W2)
 *   idx1/2  int32 [P1], [P2]      the two partitions (active positions first)
 *   cnt     int32                 the published counts: m1's at +0, m2's at +32 (each 16-byte aligned,
 *                                 as the conv builds assume of cnt_ptr)
 *   a       X's type [P1 * Cm]    conv1 (NHWC), then Interpolate(a, m1) in a second buffer
 *   ai      X's type [P1 * Cm]
 *   off     X's type [P2 * 18]    the offsets of a deformable conv2 (DCN only)
 *   b       X's type [P2 * Cb]    conv2 (conv3's input in a Bottleneck)
 *   c       X's type [P2 * Cout]  conv3 (Bottleneck only)
 *   scratch fp32                  the separable Interpolate's per-program rows (the larger of its two
 *                                 launches, each with its build's BC): nprog * HRP * TW * (BC + 1)
 *
 * SparseBlockRunner::run issues the launch sequence of sai.kernels.sparse_block.sparse_block, with the
 * mask kernel launched once per mask (block_masks_kernel with NB1 = NPROG for m1, NB1 = 0 and
 * H1 = W1 = 0 for m2: each partition and count then starts on a 16-byte boundary, which the conv builds
 * assume of idx_ptr / cnt_ptr; one launch would put m2's at idx + 4 * P1 and cnt + 8):
 *   block_masks (m1), block_masks (m2), conv1 (sparse_conv k1|k3 relu), block_interp, [conv offsets
 *   (any build: 18 channels)], conv2 (k3 [deform] [relu]), [conv3 (k1)], block_tail | block_tail_down:
 *   7 launches per Bottleneck, 8 with DCN, BasicBlock 6 / 7. The weights are packed (copy4d) once per
 * W addresses and CUDA context into a device buffer the runner owns, which also holds the mask kernel's
 * persistent counters (int32 [8], zeroed once; the kernel leaves them zero) and the zero biases.
 */
#ifndef SAI_TRT_PLUGINS_SPARSE_BLOCK_KERNEL_H
#define SAI_TRT_PLUGINS_SPARSE_BLOCK_KERNEL_H

#include "saiDataType.h"
#include "saiKernelCaps.h"

#include <cstddef>
#include <cstdint>
#include <cuda_runtime_api.h>

namespace sai
{

//! The Gaussian size the AOT builds of the separable Interpolate compile in (kernels/aot.py "KS").
constexpr int32_t kSAI_BLOCK_KERNEL_SIZE = 7;
//! The tiles of those builds (TH x TW positions, HRP rows with the halo, BC channels per program).
constexpr int32_t kSAI_BLOCK_TH = 8;
constexpr int32_t kSAI_BLOCK_TW = 8;
constexpr int32_t kSAI_BLOCK_HRP = 16;
constexpr int32_t kSAI_BLOCK_BC = 128;
//! BC of the fp32 block_interp builds and of every block_tail / block_tail_down build.
constexpr int32_t kSAI_BLOCK_BC_SMALL = 64;
//! A deformable conv2: one offset group, 2 * 3 * 3 offset channels.
constexpr int32_t kSAI_BLOCK_OFFSET_CHANNELS = 18;

struct SaiBlockParams
{
    // input X [N, C, H, W] and the weights' channels
    int32_t N{0}, C{0}, H{0}, W{0};
    int32_t Cm{0};   //!< conv1's output channels (WA [Cm, C, ka, ka])
    int32_t ka{1};   //!< conv1's kernel size: 1 (Bottleneck) or 3 (BasicBlock)
    int32_t Cb{0};   //!< conv2's output channels (WB [Cb, Cm, 3, 3])
    int32_t Cout{0}; //!< the block's output channels (WC's, else Cb)
    bool hasConv3{false};
    bool hasDown{false};
    bool deform{false};
    bool stochastic{false};
    bool reluB{true};
    // attributes
    int32_t strideA{1}, strideB{1}, downStride{1}, offsetStride{1};
    int32_t maskStride1{1}, maskStride2{1};
    int32_t kernelSize{kSAI_BLOCK_KERNEL_SIZE};
    int32_t gridInterval{0};
    float sigma1{1.F}, sigma2{1.F}, eps{1e-5F}, temperature{1.F};
    // derived by saiBlockFinalize
    int32_t H1{0}, W1{0}, H2{0}, W2{0};
};

//! (size - 1) / stride + 1: the output size of a "same"-padded odd conv (1x1 pad 0, 3x3 pad 1).
inline int64_t saiBlockOut(int64_t size, int64_t stride)
{
    return size <= 0 || stride <= 0 ? 0 : (size - 1) / stride + 1;
}

//! Fills H1, W1, H2, W2; returns nullptr when the kernels take `p`, else why not (a static string).
char const* saiBlockFinalize(SaiBlockParams& p);

//! What the kernels read and write: NHWC activations (FP32 kNHWC, FP16 kNHWC8/kNHWC16, BF16 kNHWC8).
SaiKernelCaps const& sparseBlockKernelCaps();

//! Device workspace bytes of one run for (finalized) `p` with activations of type `t` (see above).
size_t sparseBlockWorkspaceSize(SaiBlockParams const& p, SaiDataType t);

//! The pieces of one run's workspace (the plan above), carved from `base` (nullptr: sizing only).
struct SaiBlockWorkspace
{
    void* m1;
    void* m2;
    void* idx1;
    void* idx2;
    char* cnt; //!< m1's counts at +0, m2's at +32 (the m2 mask launch writes its 4 counts from +24)
    void* a;
    void* ai;
    void* off;
    void* b;
    void* c;
    float* scratch;
    int64_t scratchFloats;
    size_t total;
};
SaiBlockWorkspace saiBlockWorkspace(SaiBlockParams const& p, SaiDataType t, void* base);

//! BC (channels a program) of the block_interp build of type `t`.
int64_t saiBlockInterpBc(SaiDataType t);

struct SaiBlockBuffers
{
    void const* x{nullptr};
    void const* maskWeight{nullptr}; //!< fp32 [2, C, 3, 3]
    void const* maskBias{nullptr};   //!< fp32 [2]
    void const* wa{nullptr};
    void const* ba{nullptr};
    void const* wb{nullptr};
    void const* bb{nullptr};
    void const* wc{nullptr};        //!< nullptr: BasicBlock
    void const* tailBias{nullptr};  //!< nullptr: none
    void const* wd{nullptr};        //!< nullptr: the identity is X
    void const* bd{nullptr};
    void const* wo{nullptr};        //!< nullptr: regular conv2
    void const* bo{nullptr};
    void const* noise1{nullptr};    //!< fp32 [N, 2, H1, W1]; nullptr: deterministic
    void const* noise2{nullptr};
    void* y{nullptr};
    SaiTensorLayout xLayout{};
    SaiTensorLayout yLayout{};
};

//! The launch state of one SparseBlock node (one plugin instance). Not thread safe.
class SparseBlockRunner
{
public:
    SparseBlockRunner();
    ~SparseBlockRunner();
    SparseBlockRunner(SparseBlockRunner const&) = delete;
    SparseBlockRunner& operator=(SparseBlockRunner const&) = delete;

    //! Runs the block on `stream`. A failed run returns its cudaError_t; saiLastLaunchError() says why.
    //! The first run (and one after a W address or the context changed) allocates, packs the weights and
    //! waits for them: it must not be inside a CUDA graph capture (it refuses there).
    cudaError_t run(SaiBlockParams const& p, SaiDataType type, SaiBlockBuffers const& buffers, void* workspace,
        size_t workspaceSize, cudaStream_t stream) noexcept;

    //! How often builds were chosen and resolved (spec strings, image scan) and weights packed.
    int64_t prepares() const noexcept;
    int64_t packs() const noexcept;

    struct State;

private:
    State* mState;
};

} // namespace sai

#endif // SAI_TRT_PLUGINS_SPARSE_BLOCK_KERNEL_H
