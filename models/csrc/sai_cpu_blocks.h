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
// Float32, groups 1; a deformable conv_b (DCN v1) through im2col_rows_deform (callers fall back to the
// per-op kernels otherwise).
#ifndef SAI_MODELS_CSRC_SAI_CPU_BLOCKS_H
#define SAI_MODELS_CSRC_SAI_CPU_BLOCKS_H

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include "interpolateMath.h"
#include "saiCommon.h"
#include "sai_cpu_gemm.h"
#include "sai_cpu_kernels.h"
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

// im2col_rows of a deformable conv (DCN v1, groups 1): tap k of deform group g is sampled bilinearly
// at its tap coordinate + (dy, dx) = off[r][g*2*K + 2k + {0, 1}] (the ONNX DeformConv / torchvision
// offset layout, one row of 2*deformGroups*K offsets per position: off + (first + r) * ld_off), with
// the corners and weights of bilinear_corners (sai::saiBilinear's rules); NHWC, so each corner is a
// contiguous run of the group's channels.
template <class Backend>
void im2col_rows_deform(const Backend& be, const SaiConvParams& p, const float* x, const int64_t* pos, int64_t first,
                        int64_t count, const float* off, int64_t ld_off, float* dst) {
  const int64_t C = p.C, K = p.kernelTaps, DG = p.deformGroups, dgc = C / DG, kdim = K * C;
  const int64_t HW = static_cast<int64_t>(p.H) * p.W;
  be.parallel_for(0, count, 16, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      int32_t n, oy, ox;
      sai::saiPositionDecode(p, pos[first + r], &n, &oy, &ox);
      const float* o = off + (first + r) * ld_off;
      const float* xn = x + static_cast<int64_t>(n) * HW * C;
      float* d = dst + r * kdim;
      for (int32_t ky = 0; ky < p.kh; ++ky) {
        for (int32_t kx = 0; kx < p.kw; ++kx) {
          const int64_t k = static_cast<int64_t>(ky) * p.kw + kx;
          int32_t iy, ix;
          sai::saiConvTapCoord(p, oy, ox, ky, kx, &iy, &ix);
          for (int64_t g = 0; g < DG; ++g) {
            int64_t idx[4];
            float wts[4];
            bilinear_corners(p.H, p.W, static_cast<float>(iy) + o[g * 2 * K + 2 * k],
                             static_cast<float>(ix) + o[g * 2 * K + 2 * k + 1], idx, wts);
            float* dd = d + k * C + g * dgc;
            std::fill(dd, dd + dgc, 0.F);
            for (int q = 0; q < 4; ++q) {
              if (idx[q] < 0) continue;
              const float* src = xn + idx[q] * C + g * dgc;
              const float wq = wts[q];
              for (int64_t c = 0; c < dgc; ++c) dd[c] += wq * src[c];
            }
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

// ---- the whole block on the packed-weight GEMM (sai_cpu_gemm.h) --------------------------------------

// Positions per tile of a fused conv (a multiple of kMR): the tile's im2col rows stay in L2.
constexpr int64_t kBlockTile = 48;

// C[M][B.N] = A * B (+ bias) (ReLU), split over (row blocks x panel groups) across be's threads: panel
// groups only where there are too few row blocks to keep every thread busy.
template <class Backend>
void parallel_gemm(const Backend& be, int64_t M, const float* A, int64_t lda, const PackedB& B, float* C, int64_t ldc,
                   const float* bias, bool relu) {
  if (M <= 0 || B.panels == 0) return;
  const int64_t rb = (M + kBlockTile - 1) / kBlockTile;
  const int64_t want = 4 * be.threads();
  const int64_t groups = std::min<int64_t>(B.panels, std::max<int64_t>(1, (want + rb - 1) / rb));
  const int64_t per = (B.panels + groups - 1) / groups;
  be.parallel_for(0, rb * groups, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t r = t / groups, q = t % groups;
      const int64_t m0 = r * kBlockTile, p0 = q * per, p1 = std::min(B.panels, p0 + per);
      gemm_packed(std::min(kBlockTile, M - m0), A + m0 * lda, lda, B, p0, p1, C + m0 * ldc, ldc, bias, relu);
    }
  });
}

// The kernels' Backend for work inside one thread of a parallel region.
struct SerialBackend {
  template <class F>
  void parallel_for(int64_t begin, int64_t end, int64_t /*grain*/, const F& f) const {
    if (begin < end) f(begin, end);
  }
  int64_t threads() const { return 1; }
};

// out[P][Cout] = cols * w (+ bias, ReLU when `relu`), then, when `wc` is given, times wc (the reordered
// Bottleneck's conv3 on the same positions: Cout = wc->N), where cols [P][kdim] is what
// im2col(backend, first, count, dst) writes for rows [first, first + count). With enough positions,
// tiles of kBlockTile positions are im2col'd, multiplied and given their epilogue [and their second
// GEMM] while in cache, one thread each; with few (the last stages), all positions are im2col'd once
// and each GEMM is split over the weight's panels as well.
template <class Backend, class Im2col>
void rows_gemm(const Backend& be, int64_t P, int64_t kdim, const Im2col& im2col, const PackedB& w, const float* bias,
               bool relu, const PackedB* wc, float* out) {
  const int64_t Cb = w.N, Cout = wc != nullptr ? wc->N : Cb;
  if (P == 0) return;
  const int64_t tiles = (P + kBlockTile - 1) / kBlockTile;
  if (tiles >= 4 * be.threads()) {
    be.parallel_for(0, tiles, 1, [&](int64_t b, int64_t e) {
      static thread_local FloatBuffer cols_buf, mid_buf;
      float* cols = cols_buf.get(kBlockTile * kdim);
      float* mid = wc != nullptr ? mid_buf.get(kBlockTile * Cb) : nullptr;
      for (int64_t t = b; t < e; ++t) {
        const int64_t first = t * kBlockTile, count = std::min(kBlockTile, P - first);
        im2col(SerialBackend{}, first, count, cols);
        if (wc == nullptr) {
          gemm_packed(count, cols, kdim, w, 0, w.panels, out + first * Cb, Cb, bias, relu);
        } else {
          gemm_packed(count, cols, kdim, w, 0, w.panels, mid, Cb, bias, relu);
          gemm_packed(count, mid, Cb, *wc, 0, wc->panels, out + first * Cout, Cout);
        }
      }
    });
    return;
  }
  static thread_local FloatBuffer cols_buf, mid_buf;
  float* cols = cols_buf.get(P * kdim);
  im2col(be, 0, P, cols);
  if (wc == nullptr) {
    parallel_gemm(be, P, cols, kdim, w, out, Cb, bias, relu);
  } else {
    float* mid = mid_buf.get(P * Cb);
    parallel_gemm(be, P, cols, kdim, w, mid, Cb, bias, relu);
    parallel_gemm(be, P, mid, Cb, *wc, out, Cout, nullptr, false);
  }
}

// rows_gemm of the conv `g` (finalized, groups 1, not deformable) of the NHWC map `x` at the active
// positions of `s`.
template <class Backend>
void rows_conv_packed(const Backend& be, const float* x, const SaiConvParams& g, const ActiveSet& s, const PackedB& w,
                      const float* bias, bool relu, const PackedB* wc, float* out) {
  rows_gemm(
      be, s.count(), g.kdim,
      [&](const auto& bk, int64_t first, int64_t count, float* dst) {
        im2col_rows(bk, g, x, s.pos.data(), first, count, dst);
      },
      w, bias, relu, wc, out);
}

// The weights of one block as GEMM operands (pack_conv_weight) and its biases (empty: none).
struct BlockWeights {
  PackedB wa, wb, wc, wd, wo;  // wc, wd, wo: K == 0 when the block has no conv3 / downsample / offset conv
  std::vector<float> ba, bb, tail_bias, bd, bo;
  int64_t ko = 0;  // the offset conv's kernel size
  bool has_c() const { return wc.K > 0; }
  bool has_down() const { return wd.K > 0; }
  bool deformable() const { return wo.K > 0; }
};

// A conv weight [Cout][Cin][kh][kw] (row-major) as the GEMM operand [kh*kw*Cin][Cout] in (ky, kx, c)
// order, the column order of im2col_rows, packed into `out` (into `dst` when given: then
// PackedB::packed_size(kh*kw*Cin, Cout) floats the caller owns).
inline void pack_conv_weight(const float* w, int64_t cout, int64_t cin, int64_t kh, int64_t kw, PackedB& out,
                             float* dst = nullptr) {
  const int64_t K = kh * kw * cin;
  std::vector<float> op(static_cast<size_t>(K * cout));
  for (int64_t o = 0; o < cout; ++o) {
    for (int64_t c = 0; c < cin; ++c) {
      for (int64_t ky = 0; ky < kh; ++ky) {
        for (int64_t kx = 0; kx < kw; ++kx) {
          op[((ky * kw + kx) * cin + c) * cout + o] = w[((o * cin + c) * kh + ky) * kw + kx];
        }
      }
    }
  }
  if (dst != nullptr) {
    out.pack_into(dst, op.data(), K, cout, cout);
  } else {
    out.pack(op.data(), K, cout, cout);
  }
}

// The attributes of one block (docs/design.md 3.4): conv_a ka x ka at stride sa on mask m1, conv_b
// kb x kb at stride sb on mask m2 (ReLU when relu_b), the optional 1x1 conv_c, both Interpolates, the
// optional 1x1 downsample conv of the identity at down_stride; a deformable conv_b takes its offsets
// from the ko x ko offset conv of x at offset_stride ("same" padding) at m2's positions.
struct BlockSpec {
  int64_t sa = 1, sb = 1, down_stride = 1, offset_stride = 1, kernel_size = 7;
  bool relu_b = true;
  float sigma1 = 1.F, sigma2 = 1.F, eps = 1e-5F;
};

// The two convs of a block on an N x H x W x C input as SparseSampleConv parameters ("same" padding,
// groups 1), and the output channels; "" or what is inconsistent.
struct BlockGeometry {
  SaiConvParams ga, gb, go;  // go: the offset conv (deformable blocks)
  int64_t Cm = 0, Cout = 0;
};

inline std::string block_geometry(int64_t N, int64_t C, int64_t H, int64_t W, const BlockSpec& s,
                                  const BlockWeights& w, int64_t ka, int64_t kb, BlockGeometry& out) {
  auto conv = [](int64_t n, int64_t c, int64_t h, int64_t wd, int64_t k, int64_t stride, int64_t cout) {
    const int64_t xd[4] = {n, c, h, wd}, wt[4] = {cout, 0, k, k}, st[2] = {stride, stride};
    const int64_t pd[4] = {(k - 1) / 2, (k - 1) / 2, (k - 1) / 2, (k - 1) / 2}, dl[2] = {1, 1};
    return sai::saiConvParamsOf(xd, wt, st, pd, dl, 1, 1, sai::kSAI_ACT_NONE);
  };
  if (w.wa.K != ka * ka * C) return "conv_a's weight does not take " + std::to_string(C) + " input channels";
  out.Cm = w.wa.N;
  out.ga = conv(N, C, H, W, ka, s.sa, out.Cm);
  if (!sai::saiConvFinalize(out.ga)) return "conv_a does not fit the input";
  if (w.wb.K != kb * kb * out.Cm) return "conv_b's weight does not take conv_a's " + std::to_string(out.Cm) + " channels";
  out.gb = conv(N, out.Cm, out.ga.Ho, out.ga.Wo, kb, s.sb, w.wb.N);
  if (!sai::saiConvFinalize(out.gb)) return "conv_b does not fit conv_a's output";
  if (w.deformable()) {
    const int64_t taps = kb * kb;
    if (w.ko % 2 == 0 || w.wo.K != w.ko * w.ko * C || w.wo.N % (2 * taps) != 0) {
      return "the offset conv's weight must be [2 * deform_groups * kb * kb, C, k, k] with k odd";
    }
    out.gb.deformGroups = static_cast<int32_t>(w.wo.N / (2 * taps));
    if (out.Cm % out.gb.deformGroups != 0) return "deform_groups must divide conv_a's channels";
    out.go = conv(N, C, H, W, w.ko, s.offset_stride, w.wo.N);
    if (!sai::saiConvFinalize(out.go) || out.go.Ho != out.gb.Ho || out.go.Wo != out.gb.Wo) {
      return "the offset conv's output grid is not conv_b's";
    }
    if (!w.bo.empty() && static_cast<int64_t>(w.bo.size()) != w.wo.N) return "the offset conv's bias size";
  }
  if (w.has_c() && w.wc.K != w.wb.N) return "conv_c's weight does not take conv_b's channels";
  out.Cout = w.has_c() ? w.wc.N : w.wb.N;
  if (w.has_down()) {
    if (w.wd.K != C || w.wd.N != out.Cout) return "the downsample weight must be [Cout, C, 1, 1]";
    if ((H - 1) / s.down_stride + 1 != out.gb.Ho || (W - 1) / s.down_stride + 1 != out.gb.Wo) {
      return "the downsample stride does not give the block's output size";
    }
  } else if (C != out.Cout || H != out.gb.Ho || W != out.gb.Wo) {
    return "without a downsample conv the block's output must have the input's shape";
  }
  if (!w.ba.empty() && static_cast<int64_t>(w.ba.size()) != out.Cm) return "conv_a's bias size";
  if (!w.bb.empty() && static_cast<int64_t>(w.bb.size()) != w.wb.N) return "conv_b's bias size";
  if (!w.tail_bias.empty() && static_cast<int64_t>(w.tail_bias.size()) != out.Cout) return "the tail bias size";
  if (!w.bd.empty() && static_cast<int64_t>(w.bd.size()) != out.Cout) return "the downsample bias size";
  return "";
}

// One sparse residual block, NHWC throughout (docs/design.md 3.4), on geometry `g` (block_geometry):
//   a   = Interpolate(relu(conv_a(x) + ba) at m1, m1, sigma1)
//   b   = act_b(conv_b(a) + bb) at m2 [then @ conv_c]; conv_b deformable when w.deformable()
//   out = relu(Interpolate(b, m2, sigma2) + tail_bias + identity)
// identity = x, or the 1x1 downsample conv of x (+ bd) at down_stride. x [N][H][W][C], m1 [N][Ha][Wa],
// m2 and out [N][Ho][Wo](.[Cout]).
template <class Backend>
void sparse_block_nhwc(const Backend& be, const BlockGeometry& g, const BlockSpec& s, const BlockWeights& w,
                       const float* x, const float* m1, const float* m2, float* out) {
  const SaiConvParams &ga = g.ga, &gb = g.gb;
  const int64_t N = ga.N, H = ga.H, W = ga.W, C = ga.C, Cm = g.Cm, Cout = g.Cout;
  const int64_t Ho = gb.Ho, Wo = gb.Wo;
  static thread_local FloatBuffer id_buf, rows_a_buf, a_buf, rows_b_buf;
  static thread_local ActiveSet s1, s2;
  const float* identity = x;
  if (w.has_down()) {  // one GEMM per output row: its inputs are every down_stride-th position of a row
    float* id = id_buf.get(N * Ho * Wo * Cout);
    const int64_t ds = s.down_stride;
    const float* bd = w.bd.empty() ? nullptr : w.bd.data();
    be.parallel_for(0, N * Ho, 1, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const int64_t n = r / Ho, yo = r % Ho;
        gemm_packed(Wo, x + ((n * H + yo * ds) * W) * C, ds * C, w.wd, 0, w.wd.panels, id + r * Wo * Cout, Cout, bd,
                    false);
      }
    });
    identity = id;
  }
  s1.fill(m1, N * ga.Ho * ga.Wo);
  s2.fill(m2, N * Ho * Wo);
  sai::SaiInterpParams ip;
  ip.kernelSize = static_cast<int32_t>(s.kernel_size);
  ip.sigma = s.sigma1;
  const std::vector<float> g1 = gaussian_1d(ip);
  ip.sigma = s.sigma2;
  const std::vector<float> g2 = gaussian_1d(ip);

  float* rows_a = rows_a_buf.get(std::max<int64_t>(1, s1.count()) * Cm);
  rows_conv_packed(be, x, ga, s1, w.wa, w.ba.empty() ? nullptr : w.ba.data(), true, nullptr, rows_a);
  float* a = a_buf.get(N * ga.Ho * ga.Wo * Cm);
  interpolate_rows(be, N, ga.Ho, ga.Wo, Cm, rows_a, Cm, s1.row_of.data(), m1, g1.data(), s.kernel_size, s.eps,
                   InterpTail{}, a);
  float* rows_b = rows_b_buf.get(std::max<int64_t>(1, s2.count()) * Cout);
  const float* bb = w.bb.empty() ? nullptr : w.bb.data();
  const PackedB* wc = w.has_c() ? &w.wc : nullptr;
  if (w.deformable()) {  // conv_b's offsets: the offset conv of x at m2's positions, one row each
    static thread_local FloatBuffer off_buf;
    float* off = off_buf.get(std::max<int64_t>(1, s2.count()) * w.wo.N);
    rows_conv_packed(be, x, g.go, s2, w.wo, w.bo.empty() ? nullptr : w.bo.data(), false, nullptr, off);
    // the lambda runs on the pool's threads: it must see this thread's positions, not name the
    // thread_local (which would be the running thread's own)
    const int64_t* pos2 = s2.pos.data();
    const int64_t ld_off = w.wo.N;
    rows_gemm(
        be, s2.count(), gb.kdim,
        [&](const auto& bk, int64_t first, int64_t count, float* dst) {
          im2col_rows_deform(bk, gb, a, pos2, first, count, off, ld_off, dst);
        },
        w.wb, bb, s.relu_b, wc, rows_b);
  } else {
    rows_conv_packed(be, a, gb, s2, w.wb, bb, s.relu_b, wc, rows_b);
  }
  InterpTail tail;
  tail.bias = w.tail_bias.empty() ? nullptr : w.tail_bias.data();
  tail.identity = identity;
  tail.relu = true;
  interpolate_rows(be, N, Ho, Wo, Cout, rows_b, Cout, s2.row_of.data(), m2, g2.data(), s.kernel_size, s.eps, tail, out);
}

}  // namespace sai_cpu

#endif  // SAI_MODELS_CSRC_SAI_CPU_BLOCKS_H
