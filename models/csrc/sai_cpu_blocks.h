// SPDX-License-Identifier: Apache-2.0
//
// sai_cpu_blocks.h: the fused NHWC CPU kernels of a whole sparse residual block (docs/design.md 3.4),
// header-only, on the same Backend as sai_cpu_kernels.h (parallel_for, gemm).
//
// The unfused block runs each op on full-size NCHW maps: every SparseSampleConv zero-fills and
// scatters its output, every Interpolate makes its separable passes over the whole map, and the
// block tail adds the bias and the identity and applies the ReLU in three more passes. Here the
// activations are NHWC and a sparse conv's result stays *compacted*: one row of Cout channels per
// active position (rows[P][Cout]). From such rows:
//
//   gather_rows / im2col_rows   the GEMM operand of a conv at the active positions (contiguous
//                               channel runs of the NHWC input, (ky, kx, c) column order)
//   rows_bias_act               bias + activation on the rows (the GEMM epilogue)
//   interpolate_rows            Interpolate (docs/design.md 3.3) written straight to the NHWC
//                               output: M*F where M >= 1; where M < 1 num and den are summed over
//                               the k x k window from the *active* neighbours only (F*M is 0
//                               elsewhere), so no F*M map, no zero-filled conv output and no
//                               separable passes exist; with the block tail fused into the same
//                               store: + bias, + identity, ReLU.
//
// The conv between two sparse convs at the same mask (conv2 -> conv3 of the reordered Bottleneck)
// is then one GEMM on the rows, with no scatter and gather between them.
//
// Float32, groups 1, no deformable offsets (callers fall back to the per-op kernels otherwise).
#ifndef SAI_MODELS_CSRC_SAI_CPU_BLOCKS_H
#define SAI_MODELS_CSRC_SAI_CPU_BLOCKS_H

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include "interpolateMath.h"
#include "saiCommon.h"
#include "sparseSampleConvMath.h"

namespace sai_cpu {

using sai::SaiConvParams;

// The active positions of a mask [N, H, W] (M > 0, row-major) and, for every position, its row in
// the compacted rows or -1.
struct ActiveSet {
  std::vector<int64_t> pos;
  std::vector<int32_t> row_of;
  void fill(const float* mask, int64_t total) {
    pos.clear();
    pos.reserve(static_cast<size_t>(total));
    row_of.resize(static_cast<size_t>(total));
    for (int64_t i = 0; i < total; ++i) {
      if (sai::saiMaskActive(mask[i])) {
        row_of[i] = static_cast<int32_t>(pos.size());
        pos.push_back(i);
      } else {
        row_of[i] = -1;
      }
    }
  }
  int64_t count() const { return static_cast<int64_t>(pos.size()); }
};

// dst[r][0..kh*kw*C) = the (ky, kx, c) taps of output position pos[first + r] of the conv `p`
// (finalized, groups 1) on the NHWC input `x`: zero outside the input (tap coordinates and position
// decode from the math shared with the other kernels).
template <class Backend>
void im2col_rows(const Backend& be, const SaiConvParams& p, const float* x, const int64_t* pos, int64_t first,
                 int64_t count, float* dst) {
  const int64_t C = p.C, kdim = static_cast<int64_t>(p.kernelTaps) * C;
  be.parallel_for(0, count, 16, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      int32_t n, oy, ox;
      sai::saiPositionDecode(p, pos[first + r], &n, &oy, &ox);
      float* d = dst + r * kdim;
      for (int32_t ky = 0; ky < p.kh; ++ky) {
        for (int32_t kx = 0; kx < p.kw; ++kx, d += C) {
          int32_t iy, ix;
          sai::saiConvTapCoord(p, oy, ox, ky, kx, &iy, &ix);
          if (iy < 0 || iy >= p.H || ix < 0 || ix >= p.W) {
            std::memset(d, 0, sizeof(float) * C);
          } else {
            std::memcpy(d, x + ((static_cast<int64_t>(n) * p.H + iy) * p.W + ix) * C, sizeof(float) * C);
          }
        }
      }
    }
  });
}

// rows[P][C] += bias; then ReLU when `relu`.
template <class Backend>
void rows_bias_act(const Backend& be, float* rows, int64_t P, int64_t C, const float* bias, bool relu) {
  if (bias == nullptr && !relu) return;
  be.parallel_for(0, P, 64, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      float* v = rows + r * C;
      if (bias != nullptr) {
        for (int64_t c = 0; c < C; ++c) v[c] += bias[c];
      }
      if (relu) {
        for (int64_t c = 0; c < C; ++c) v[c] = v[c] > 0.F ? v[c] : 0.F;
      }
    }
  });
}

// The channels of one output position handled at once: the accumulators stay in registers.
constexpr int64_t kInterpBlock = 64;

struct InterpTail {
  const float* bias = nullptr;      // [C] added after the interpolation (or nullptr)
  const float* identity = nullptr;  // NHWC [N, H, W, C] added after the bias (or nullptr)
  bool relu = false;
};

// One block of `len` channels (a compile-time 64 or 32 keeps the accumulators in registers).
template <int64_t kLen>
inline void interp_store_block(int64_t len, int64_t cb, bool interp, float mv, float den, const float* f,
                               const float* const* nb_ptr, const float* nb_w, int64_t nn, const InterpTail& tail,
                               const float* id, float* o) {
  const int64_t L = kLen > 0 ? kLen : len;
  float v[kInterpBlock];
  if (!interp) {
    // M >= 1: an active position (F is its row)
    for (int64_t c = 0; c < L; ++c) v[c] = mv * f[cb + c];
  } else {
    float acc[kInterpBlock];
#if defined(__AVX2__) && defined(__FMA__)
    if constexpr (kLen == 64 || kLen == 32) {
      // 64 (or 32) channels in eight (four) registers, one broadcast weight per neighbour: eight
      // independent FMA chains cover the FMA latency better than four
      constexpr int kRegs = static_cast<int>(kLen > 0 ? kLen / 8 : 1);
      __m256 r[kRegs];
      for (int q = 0; q < kRegs; ++q) r[q] = _mm256_setzero_ps();
      for (int64_t t = 0; t < nn; ++t) {
        const __m256 w = _mm256_set1_ps(nb_w[t]);
        const float* s = nb_ptr[t] + cb;
        for (int q = 0; q < kRegs; ++q) r[q] = _mm256_fmadd_ps(w, _mm256_loadu_ps(s + 8 * q), r[q]);
      }
      for (int q = 0; q < kRegs; ++q) _mm256_storeu_ps(acc + 8 * q, r[q]);
    } else
#endif
    {
      for (int64_t c = 0; c < L; ++c) acc[c] = 0.F;
      for (int64_t t = 0; t < nn; ++t) {
        const float w = nb_w[t];
        const float* s = nb_ptr[t] + cb;
        for (int64_t c = 0; c < L; ++c) acc[c] += w * s[c];
      }
    }
    if (mv == 0.F) {
      for (int64_t c = 0; c < L; ++c) v[c] = acc[c] / den;
    } else {
      // 0 < M < 1 (F is a row) or M < 0 (F is 0: SparseSampleConv's output there)
      for (int64_t c = 0; c < L; ++c) v[c] = sai::saiInterpCombine(mv, f != nullptr ? f[cb + c] : 0.F, acc[c], den);
    }
  }
  if (tail.bias != nullptr) {
    for (int64_t c = 0; c < L; ++c) v[c] += tail.bias[cb + c];
  }
  if (id != nullptr) {
    for (int64_t c = 0; c < L; ++c) v[c] += id[cb + c];
  }
  if (tail.relu) {
    for (int64_t c = 0; c < L; ++c) v[c] = v[c] > 0.F ? v[c] : 0.F;
  }
  for (int64_t c = 0; c < L; ++c) o[cb + c] = v[c];
}

// Interpolate(F, M) of docs/design.md 3.3 (then the tail) into the NHWC map out[N][H][W][C], where F
// is given as compacted rows: F at position q is rows[row_of[q] * ldr ...] when row_of[q] >= 0, and 0
// elsewhere (the output of a SparseSampleConv at the mask's active positions). `a` is the 1-D Gaussian
// of gaussian_1d (K[i][j] = a[i] * a[j]).
template <class Backend>
void interpolate_rows(const Backend& be, int64_t N, int64_t H, int64_t W, int64_t C, const float* rows, int64_t ldr,
                      const int32_t* row_of, const float* mask, const float* a, int64_t k, float eps,
                      const InterpTail& tail, float* out) {
  const int64_t r = (k - 1) / 2;
  be.parallel_for(0, N * H, 1, [&](int64_t b, int64_t e) {
    std::vector<const float*> nb_ptr(static_cast<size_t>(k * k));
    std::vector<float> nb_w(static_cast<size_t>(k * k));
    for (int64_t row = b; row < e; ++row) {
      const int64_t n = row / H, y = row % H;
      for (int64_t x = 0; x < W; ++x) {
        const int64_t p = row * W + x;
        const float mv = mask[p];
        const int32_t ri = row_of[p];
        const float* f = ri >= 0 ? rows + static_cast<int64_t>(ri) * ldr : nullptr;
        const bool interp = sai::saiMaskNeedsInterp(mv);
        int64_t nn = 0;
        float den = 0.F;
        if (interp) {
          for (int64_t i = std::max<int64_t>(0, r - y); i < std::min<int64_t>(k, H + r - y); ++i) {
            const int64_t base = (n * H + y + i - r) * W;
            const float* mrow = mask + base;
            const int32_t* irow = row_of + base;
            // branch-free: the masks are random-looking, so a branch per tap mispredicts about half the
            // time (that cost more than the channel sums); every tap is written, only active ones counted
            const float ai = a[i];
            for (int64_t j = std::max<int64_t>(0, r - x); j < std::min<int64_t>(k, W + r - x); ++j) {
              const int64_t xx = x + j - r;
              const float w = ai * a[j] * mrow[xx];
              const int32_t rq = irow[xx];
              den += w;
              nb_ptr[nn] = rows + static_cast<int64_t>(rq < 0 ? 0 : rq) * ldr;
              nb_w[nn] = w;
              nn += rq >= 0 ? 1 : 0;
            }
          }
          den += eps;
        }
        const float* id = tail.identity != nullptr ? tail.identity + p * C : nullptr;
        float* o = out + p * C;
        // M >= 1 is always active; a NaN mask needs no interpolation and is not active: M * F with F = 0
        static thread_local std::vector<float> zero_row;
        if (!interp && f == nullptr) {
          if (static_cast<int64_t>(zero_row.size()) < C) zero_row.assign(static_cast<size_t>(C), 0.F);
          f = zero_row.data();
        }
        int64_t cb = 0;
        for (; cb + kInterpBlock <= C; cb += kInterpBlock) {
          interp_store_block<kInterpBlock>(kInterpBlock, cb, interp, mv, den, f, nb_ptr.data(), nb_w.data(), nn, tail,
                                           id, o);
        }
        if (cb + 32 <= C) {
          interp_store_block<32>(32, cb, interp, mv, den, f, nb_ptr.data(), nb_w.data(), nn, tail, id, o);
          cb += 32;
        }
        if (cb < C) {
          interp_store_block<0>(C - cb, cb, interp, mv, den, f, nb_ptr.data(), nb_w.data(), nn, tail, id, o);
        }
      }
    }
  });
}

}  // namespace sai_cpu

#endif  // SAI_MODELS_CSRC_SAI_CPU_BLOCKS_H
