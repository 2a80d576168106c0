// SPDX-License-Identifier: Apache-2.0
//
// sai_cpu_kernels.h: the CPU kernels of sai::SparseSampleConv and sai::Interpolate (docs/design.md 3.2 /
// 3.3), header-only, shared by the two hosts that run them:
//
//   models/csrc/sai_cpu_ops.cpp       the PyTorch C++ extension (sai.models' CPU dispatch)
//   models/csrc/ort/sai_ort_ops.cpp   libsai_ort_ops.so, the ONNX Runtime custom-op library
//
// Each host supplies a Backend with two members and nothing else:
//   template <class F> void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) const;
//       calls f(b, e) on disjoint sub-ranges covering [begin, end) (ATen's thread pool / ORT's).
//   void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
//             float* C, int64_t ldc) const;
//       row-major C[M][N] = A[M][K] * B[K][N] (ATen's mm / OpenBLAS sgemm).
//
//   SparseSampleConv: compaction of the M > 0 positions -> gather (im2col) of only those positions
//   (bilinear taps for deformable conv v1) -> GEMM -> bias + activation -> scatter into a zeroed
//   output. Positions are processed in chunks so the column buffer stays bounded.
//   Interpolate: the separable Gaussian (row and column passes, vectorised) and the combine only
//   where M < 1.
//
// Index math (tap coordinates, position decode, activation, Gaussian weights, the interpolation
// combine) comes from the headers shared with the CUDA kernels: models/csrc/common/*.h. Float32 only.
#ifndef SAI_MODELS_CSRC_SAI_CPU_KERNELS_H
#define SAI_MODELS_CSRC_SAI_CPU_KERNELS_H

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "interpolateMath.h"
#include "saiCommon.h"
#include "sparseSampleConvMath.h"

namespace sai_cpu {

using sai::SaiConvParams;
using sai::SaiInterpParams;

// An uninitialised float buffer (std::vector would zero it first: a wasted pass over 32 MB).
struct FloatBuffer {
  std::unique_ptr<float[]> data;
  int64_t size = 0;
  float* get(int64_t n) {
    if (n > size) {
      data.reset(new float[static_cast<size_t>(n)]);
      size = n;
    }
    return data.get();
  }
};

// Bilinear corner indices (into an H*W plane, -1 when the corner is outside) and weights, with the
// rules of sai::saiBilinear (torchvision / ONNX DeformConv): all zero outside (-1, H) x (-1, W).
inline void bilinear_corners(int64_t H, int64_t W, float y, float x, int64_t idx[4], float wts[4]) {
  for (int i = 0; i < 4; ++i) {
    idx[i] = -1;
    wts[i] = 0.F;
  }
  if (!(y > -1.F) || !(y < static_cast<float>(H)) || !(x > -1.F) || !(x < static_cast<float>(W))) {
    return;
  }
  const float y0f = std::floor(y), x0f = std::floor(x);
  const int64_t y0 = static_cast<int64_t>(y0f), x0 = static_cast<int64_t>(x0f);
  const float ly = y - y0f, lx = x - x0f, hy = 1.F - ly, hx = 1.F - lx;
  const int64_t ys[2] = {y0, y0 + 1};
  const int64_t xs[2] = {x0, x0 + 1};
  const float wy[2] = {hy, ly};
  const float wx[2] = {hx, lx};
  for (int a = 0; a < 2; ++a) {
    for (int b = 0; b < 2; ++b) {
      if (ys[a] >= 0 && ys[a] < H && xs[b] >= 0 && xs[b] < W) {
        idx[a * 2 + b] = ys[a] * W + xs[b];
        wts[a * 2 + b] = wy[a] * wx[b];
      }
    }
  }
}

// The linear indices n*Ho*Wo + oy*Wo + ox of the positions with mask > 0, in row-major order.
inline std::vector<int64_t> active_positions(const float* mask, int64_t total) {
  std::vector<int64_t> out;
  out.reserve(static_cast<size_t>(total));
  for (int64_t i = 0; i < total; ++i) {
    if (sai::saiMaskActive(mask[i])) out.push_back(i);
  }
  return out;
}

// Per-chunk position decode: batch index and output row/column of every active position.
struct ChunkPositions {
  std::vector<int32_t> n, oy, ox;
  std::vector<int64_t> rem;  // oy * Wo + ox
  void fill(const SaiConvParams& p, const int64_t* ad, int64_t start, int64_t count) {
    n.resize(count);
    oy.resize(count);
    ox.resize(count);
    rem.resize(count);
    for (int64_t r = 0; r < count; ++r) {
      sai::saiPositionDecode(p, ad[start + r], &n[r], &oy[r], &ox[r]);
      rem[r] = static_cast<int64_t>(oy[r]) * p.Wo + ox[r];
    }
  }
};

// Bilinear taps of a deformable conv for one chunk: [deformGroups][K][count] x 4 corners.
struct DeformTaps {
  std::vector<int64_t> idx;
  std::vector<float> wts;
  template <class Backend>
  void fill(const Backend& be, const SaiConvParams& p, const float* od, const ChunkPositions& cp, int64_t count) {
    const int64_t K = p.kernelTaps, DG = p.deformGroups, hwo = static_cast<int64_t>(p.Ho) * p.Wo;
    idx.resize(DG * K * count * 4);
    wts.resize(DG * K * count * 4);
    be.parallel_for(0, DG * K, 1, [&](int64_t b, int64_t e) {
      for (int64_t gk = b; gk < e; ++gk) {
        const int64_t dg = gk / K, k = gk % K;
        const int32_t ky = static_cast<int32_t>(k / p.kw), kx = static_cast<int32_t>(k % p.kw);
        for (int64_t r = 0; r < count; ++r) {
          int32_t iy, ix;
          sai::saiConvTapCoord(p, cp.oy[r], cp.ox[r], ky, kx, &iy, &ix);
          const int64_t ch = (static_cast<int64_t>(cp.n[r]) * 2 * DG * K + dg * 2 * K + 2 * k) * hwo + cp.rem[r];
          bilinear_corners(p.H, p.W, static_cast<float>(iy) + od[ch], static_cast<float>(ix) + od[ch + hwo],
                           &idx[(gk * count + r) * 4], &wts[(gk * count + r) * 4]);
        }
      }
    });
  }
};

// NCHW path: channel-major im2col cols[G][cin_g*K][chunk] (column order of the weight, see
// saiConvColumnIndex), GEMM W_g[cout_g, cin_g*K] x cols -> rows[G][cout_g][chunk], scatter.
template <class Backend>
void conv_chunk_nchw(const Backend& be, const SaiConvParams& p, const float* xd, const float* od, const float* wmat,
                     const float* bd, const ChunkPositions& cp, int64_t count, int64_t chunk, float* cd, float* rd,
                     float* outd) {
  const int64_t G = p.groups, cin_g = p.cinPerGroup, cout_g = p.coutPerGroup, K = p.kernelTaps, kdim = p.kdim;
  const int64_t H = p.H, W = p.W, C = p.C, dgc = p.C / p.deformGroups, hwo = static_cast<int64_t>(p.Ho) * p.Wo;
  DeformTaps taps;
  if (od != nullptr) taps.fill(be, p, od, cp, count);
  // Non-deformable: per tap, the flat input index (without the channel term) of every position,
  // or -1 outside the image; the gather of a (channel, tap) row is then one indexed load each.
  std::vector<int64_t> tap_idx;
  if (od == nullptr) {
    tap_idx.resize(K * count);
    be.parallel_for(0, K, 1, [&](int64_t b, int64_t e) {
      for (int64_t kk = b; kk < e; ++kk) {
        const int32_t ky = static_cast<int32_t>(kk / p.kw), kx = static_cast<int32_t>(kk % p.kw);
        for (int64_t r = 0; r < count; ++r) {
          int32_t iy, ix;
          sai::saiConvTapCoord(p, cp.oy[r], cp.ox[r], ky, kx, &iy, &ix);
          tap_idx[kk * count + r] = (iy >= 0 && iy < H && ix >= 0 && ix < W)
                                        ? static_cast<int64_t>(cp.n[r]) * C * H * W + static_cast<int64_t>(iy) * W + ix
                                        : -1;
        }
      }
    });
  }
  be.parallel_for(0, G * kdim, 4, [&](int64_t b, int64_t e) {
    for (int64_t gr = b; gr < e; ++gr) {
      const int64_t g = gr / kdim;
      int32_t cl, ky, kx;
      sai::saiConvColumnDecode(p, static_cast<int32_t>(gr % kdim), &cl, &ky, &kx);
      const int64_t c = g * cin_g + cl;
      float* dst = cd + gr * chunk;
      if (od == nullptr) {
        const int64_t* ti = tap_idx.data() + (ky * p.kw + kx) * count;
        const float* xc = xd + c * H * W;
        for (int64_t r = 0; r < count; ++r) dst[r] = ti[r] >= 0 ? xc[ti[r]] : 0.F;
      } else {
        const int64_t gk = (c / dgc) * K + ky * p.kw + kx;
        const int64_t* ti = &taps.idx[gk * count * 4];
        const float* tw = &taps.wts[gk * count * 4];
        for (int64_t r = 0; r < count; ++r) {
          const float* plane = xd + (static_cast<int64_t>(cp.n[r]) * C + c) * H * W;
          float v = 0.F;
          for (int q = 0; q < 4; ++q) {
            if (ti[r * 4 + q] >= 0) v += tw[r * 4 + q] * plane[ti[r * 4 + q]];
          }
          dst[r] = v;
        }
      }
    }
  });
  for (int64_t g = 0; g < G; ++g) {
    be.gemm(cout_g, count, kdim, wmat + g * cout_g * kdim, kdim, cd + g * kdim * chunk, chunk,
            rd + g * cout_g * chunk, chunk);
  }
  const int64_t stride_g = cout_g * chunk, ld = chunk;
  be.parallel_for(0, p.Cout, 4, [&](int64_t b, int64_t e) {
    for (int64_t oc = b; oc < e; ++oc) {
      const float* src = rd + (oc / cout_g) * stride_g + (oc % cout_g) * ld;
      for (int64_t r = 0; r < count; ++r) {
        outd[(static_cast<int64_t>(cp.n[r]) * p.Cout + oc) * hwo + cp.rem[r]] =
            sai::saiConvEpilogue<float>(p, src[r], bd, static_cast<int32_t>(oc));
      }
    }
  });
}

// NHWC path (channels-last input): position-major im2col cols[G][chunk][K*cin_g] with contiguous
// channel runs, GEMM cols x W_g^T -> rows[G][chunk][cout_g], scatter of contiguous output rows.
// `out_nchw`: scatter into an NCHW output instead (ONNX Runtime: NCHW tensors, the input transposed
// to NHWC by the caller for the contiguous gathers).
template <class Backend>
void conv_chunk_nhwc(const Backend& be, const SaiConvParams& p, const float* xd, const float* od, const float* wmat_t,
                     const float* bd, const ChunkPositions& cp, int64_t count, int64_t chunk, float* cd, float* rd,
                     float* outd, bool out_nchw = false) {
  const int64_t G = p.groups, cin_g = p.cinPerGroup, cout_g = p.coutPerGroup, K = p.kernelTaps;
  const int64_t H = p.H, W = p.W, C = p.C, dgc = p.C / p.deformGroups, kdim = K * cin_g;
  DeformTaps taps;
  if (od != nullptr) taps.fill(be, p, od, cp, count);
  be.parallel_for(0, count, 16, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const float* xn = xd + static_cast<int64_t>(cp.n[r]) * H * W * C;
      for (int32_t ky = 0; ky < p.kh; ++ky) {
        for (int32_t kx = 0; kx < p.kw; ++kx) {
          const int64_t k = ky * p.kw + kx;
          if (od == nullptr) {
            int32_t iy, ix;
            sai::saiConvTapCoord(p, cp.oy[r], cp.ox[r], ky, kx, &iy, &ix);
            const bool inside = iy >= 0 && iy < H && ix >= 0 && ix < W;
            const float* src = xn + (static_cast<int64_t>(iy) * W + ix) * C;
            for (int64_t g = 0; g < G; ++g) {
              float* dst = cd + (g * chunk + r) * kdim + k * cin_g;
              if (inside) {
                std::memcpy(dst, src + g * cin_g, sizeof(float) * cin_g);
              } else {
                std::memset(dst, 0, sizeof(float) * cin_g);
              }
            }
            continue;
          }
          for (int64_t dg = 0; dg < p.deformGroups; ++dg) {
            const int64_t gk = dg * K + k;
            const int64_t* ti = &taps.idx[(gk * count + r) * 4];
            const float* tw = &taps.wts[(gk * count + r) * 4];
            for (int64_t c = dg * dgc; c < (dg + 1) * dgc; ++c) {
              float v = 0.F;
              for (int q = 0; q < 4; ++q) {
                if (ti[q] >= 0) v += tw[q] * xn[ti[q] * C + c];
              }
              const int64_t g = c / cin_g;
              cd[(g * chunk + r) * kdim + k * cin_g + (c - g * cin_g)] = v;
            }
          }
        }
      }
    }
  });
  for (int64_t g = 0; g < G; ++g) {
    be.gemm(count, cout_g, kdim, cd + g * chunk * kdim, kdim, wmat_t + g * kdim * cout_g, cout_g,
            rd + g * chunk * cout_g, cout_g);
  }
  const int64_t hwo = static_cast<int64_t>(p.Ho) * p.Wo;
  if (out_nchw) {
    be.parallel_for(0, p.Cout, 4, [&](int64_t b, int64_t e) {
      for (int64_t oc = b; oc < e; ++oc) {
        const int64_t g = oc / cout_g, co = oc % cout_g;
        const float* src = rd + g * chunk * cout_g + co;
        for (int64_t r = 0; r < count; ++r) {
          outd[(static_cast<int64_t>(cp.n[r]) * p.Cout + oc) * hwo + cp.rem[r]] =
              sai::saiConvEpilogue<float>(p, src[r * cout_g], bd, static_cast<int32_t>(oc));
        }
      }
    });
    return;
  }
  be.parallel_for(0, count, 64, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      float* dst = outd + (static_cast<int64_t>(cp.n[r]) * hwo + cp.rem[r]) * p.Cout;
      for (int64_t g = 0; g < G; ++g) {
        const float* src = rd + (g * chunk + r) * cout_g;
        for (int64_t co = 0; co < cout_g; ++co) {
          const int64_t oc = g * cout_g + co;
          dst[oc] = sai::saiConvEpilogue<float>(p, src[co], bd, static_cast<int32_t>(oc));
        }
      }
    }
  });
}

// The weight [Cout, cin_g, kh, kw] as the NCHW path's GEMM operand: itself ([G][cout_g][cin_g*K]).
// As the NHWC path's operand: [G][kh*kw*cin_g][cout_g] (column order (ky, kx, c)).
inline std::vector<float> weight_nhwc_operand(const SaiConvParams& p, const float* w) {
  const int64_t G = p.groups, cin_g = p.cinPerGroup, cout_g = p.coutPerGroup, K = p.kernelTaps;
  std::vector<float> out(static_cast<size_t>(G * K * cin_g * cout_g));
  for (int64_t g = 0; g < G; ++g)
    for (int64_t co = 0; co < cout_g; ++co)
      for (int64_t c = 0; c < cin_g; ++c)
        for (int64_t k = 0; k < K; ++k)
          out[((g * K + k) * cin_g + c) * cout_g + co] = w[((g * cout_g + co) * cin_g + c) * K + k];
  return out;
}

// Sparse SparseSampleConv of docs/design.md 3.2 on finalized params `p`. `x` is NCHW, or NHWC when
// `nhwc` (then `out` is NHWC too); `wop` is the weight as the path's GEMM operand (the weight itself
// for NCHW, weight_nhwc_operand for NHWC); `bias` and `offset` (NCHW) may be nullptr. `out` must be
// zero-filled by the caller: only the active positions are written. `out_nchw` (with `nhwc`): NHWC
// input, NCHW output.
template <class Backend>
void sparse_sample_conv(const Backend& be, const SaiConvParams& p, bool nhwc, const float* x, const float* mask,
                        const float* wop, const float* bias, const float* offset, float* out, bool out_nchw = false) {
  const int64_t total = static_cast<int64_t>(p.N) * p.Ho * p.Wo;
  const std::vector<int64_t> active = active_positions(mask, total);
  const int64_t P = static_cast<int64_t>(active.size());
  if (P == 0) return;
  const int64_t G = p.groups, cin_g = p.cinPerGroup, cout_g = p.coutPerGroup, K = p.kernelTaps;
  // chunk of positions: column buffer up to 32 MB (larger GEMMs; measured faster than 4 MB)
  const int64_t col_bytes = G * cin_g * K * static_cast<int64_t>(sizeof(float));
  const int64_t chunk = std::max<int64_t>(64, std::min<int64_t>(P, (32 << 20) / std::max<int64_t>(col_bytes, 1)));
  static thread_local FloatBuffer cols, rows;  // reused across calls: no page faults per call
  float* cd = cols.get(G * cin_g * K * chunk);
  float* rd = rows.get(G * cout_g * chunk);
  ChunkPositions cp;
  for (int64_t start = 0; start < P; start += chunk) {
    const int64_t count = std::min(chunk, P - start);
    cp.fill(p, active.data(), start, count);
    if (nhwc) {
      conv_chunk_nhwc(be, p, x, offset, wop, bias, cp, count, chunk, cd, rd, out, out_nchw);
    } else {
      conv_chunk_nchw(be, p, x, offset, wop, bias, cp, count, chunk, cd, rd, out);
    }
  }
}

// Interpolate through the separable Gaussian: K[i,j] = a[i] * a[j] with
// a[i] = sqrt(sigma^2 / (2 pi)) * exp(-(sigma^2 / 2) * i^2), so num and den are a row pass and a
// column pass of 1-D convolutions (2k instead of k*k multiply-adds per element, vectorised along
// the contiguous axis). The combine M*F + (1-M)*num/den is applied only where M < 1.
inline std::vector<float> gaussian_1d(const SaiInterpParams& p) {
  const int64_t k = p.kernelSize, r = (k - 1) / 2;
  const double s2 = static_cast<double>(p.sigma) * p.sigma;
  std::vector<float> a(k);
  for (int64_t i = -r; i <= r; ++i) {
    a[i + r] = static_cast<float>(std::sqrt(s2 / (2.0 * M_PI)) * std::exp(-(s2 / 2.0) * static_cast<double>(i * i)));
  }
  return a;
}

// 1-D zero-padded convolution of `len` values with stride `step` between taps, `lanes` contiguous
// lanes per value (1 for an NCHW row, C for an NHWC row): dst[x] = sum_j a[j] * src[x + j - r].
inline void conv1d_lanes(const float* __restrict src, float* __restrict dst, int64_t len, int64_t lanes,
                         const float* a, int64_t k) {
  const int64_t r = (k - 1) / 2;
  std::fill(dst, dst + len * lanes, 0.F);
  for (int64_t j = 0; j < k; ++j) {
    const int64_t sh = j - r;
    const int64_t lo = std::max<int64_t>(0, -sh), hi = std::min<int64_t>(len, len - sh);
    const float w = a[j];
    const float* s = src + (lo + sh) * lanes;
    float* d = dst + lo * lanes;
    const int64_t n = (hi - lo) * lanes;
    for (int64_t t = 0; t < n; ++t) d[t] += w * s[t];
  }
}

// Interpolate of docs/design.md 3.3 on valid params `p`: `f` and `out` NCHW, or NHWC when `nhwc`;
// `m` is the float mask [N,1,H,W].
template <class Backend>
void interpolate(const Backend& be, const SaiInterpParams& p, bool nhwc, const float* fd, const float* md,
                 float* od) {
  const int64_t N = p.N, C = p.C, H = p.H, W = p.W, HW = H * W, k = p.kernelSize;
  const std::vector<float> a = gaussian_1d(p);

  // den = conv(M, K) + eps, one plane per image (separable: rows, then columns)
  std::vector<float> den(N * HW), tmp(N * HW);
  be.parallel_for(0, N * H, 8, [&](int64_t b, int64_t e) {
    for (int64_t row = b; row < e; ++row) conv1d_lanes(md + row * W, tmp.data() + row * W, W, 1, a.data(), k);
  });
  be.parallel_for(0, N * W, 8, [&](int64_t b, int64_t e) {
    std::vector<float> col_in(H), col_out(H);
    for (int64_t nc = b; nc < e; ++nc) {
      const int64_t n = nc / W, x = nc % W;
      for (int64_t y = 0; y < H; ++y) col_in[y] = tmp[n * HW + y * W + x];
      conv1d_lanes(col_in.data(), col_out.data(), H, 1, a.data(), k);
      for (int64_t y = 0; y < H; ++y) den[n * HW + y * W + x] = col_out[y] + p.eps;
    }
  });

  if (!nhwc) {
    // One (n, c) plane at a time, as whole-plane loops (long and contiguous even for small maps):
    // gp = F*M (0 where M == 0) in rows padded by r zeros each side (row pitch Wp = W + 2r);
    // row pass into tp (r zero rows above and below); column pass into num; combine where M < 1.
    const int64_t r = (k - 1) / 2, Wp = W + 2 * r, plane = H * Wp;
    be.parallel_for(0, N * C, 1, [&](int64_t b, int64_t e) {
      std::vector<float> gp(plane, 0.F), tp((H + 2 * r) * Wp, 0.F), num(plane);
      for (int64_t nc = b; nc < e; ++nc) {
        const int64_t n = nc / C;
        const float* fp = fd + nc * HW;
        const float* mp = md + n * HW;
        float* op = od + nc * HW;
        for (int64_t y = 0; y < H; ++y) {
          float* gr = gp.data() + y * Wp + r;
          const float* fr = fp + y * W;
          const float* mr = mp + y * W;
          for (int64_t x = 0; x < W; ++x) gr[x] = mr[x] != 0.F ? fr[x] * mr[x] : 0.F;
        }
        // row pass: tp[(y + r) * Wp + x] = sum_j a[j] gp[y * Wp + x + j]   (x < W valid)
        float* trow = tp.data() + r * Wp;
        const int64_t rn = plane - 2 * r;
        std::fill(trow, trow + rn, 0.F);
        for (int64_t j = 0; j < k; ++j) {
          const float w = a[j];
          const float* src = gp.data() + j;
          for (int64_t q = 0; q < rn; ++q) trow[q] += w * src[q];
        }
        // column pass: num[y * Wp + x] = sum_i a[i] tp[(y + i) * Wp + x]
        std::fill(num.begin(), num.end(), 0.F);
        for (int64_t i = 0; i < k; ++i) {
          const float w = a[i];
          const float* src = tp.data() + i * Wp;
          float* dst = num.data();
          for (int64_t q = 0; q < plane; ++q) dst[q] += w * src[q];
        }
        for (int64_t y = 0; y < H; ++y) {
          const float* mrow = mp + y * W;
          const float* drow = den.data() + n * HW + y * W;
          const float* frow = fp + y * W;
          const float* nrow = num.data() + y * Wp;
          float* orow = op + y * W;
          for (int64_t x = 0; x < W; ++x) {
            const float mv = mrow[x];
            orow[x] = !sai::saiMaskNeedsInterp(mv) ? mv * frow[x]
                      : mv == 0.F                  ? nrow[x] / drow[x]
                                                   : sai::saiInterpCombine(mv, frow[x], nrow[x], drow[x]);
          }
        }
      }
    });
    return;
  }

  // NHWC: the same passes with C contiguous lanes per position
  std::vector<float> g(HW * C), t(HW * C);
  for (int64_t n = 0; n < N; ++n) {
    const float* fn = fd + n * HW * C;
    const float* mn = md + n * HW;
    float* on = od + n * HW * C;
    be.parallel_for(0, H, 1, [&](int64_t b, int64_t e) {
      for (int64_t y = b; y < e; ++y) {
        for (int64_t x = 0; x < W; ++x) {
          const float mv = mn[y * W + x];
          const float* fq = fn + (y * W + x) * C;
          float* gq = g.data() + (y * W + x) * C;
          for (int64_t c = 0; c < C; ++c) gq[c] = mv != 0.F ? fq[c] * mv : 0.F;
        }
        conv1d_lanes(g.data() + y * W * C, t.data() + y * W * C, W, C, a.data(), k);
      }
    });
    be.parallel_for(0, H, 1, [&](int64_t b, int64_t e) {
      std::vector<float> num(W * C);
      const int64_t r = (k - 1) / 2;
      for (int64_t y = b; y < e; ++y) {
        std::fill(num.begin(), num.end(), 0.F);
        for (int64_t i = std::max<int64_t>(0, r - y); i < std::min<int64_t>(k, H + r - y); ++i) {
          const float w = a[i];
          const float* tr = t.data() + (y + i - r) * W * C;
          for (int64_t q = 0; q < W * C; ++q) num[q] += w * tr[q];
        }
        for (int64_t x = 0; x < W; ++x) {
          const float mv = mn[y * W + x], dv = den[n * HW + y * W + x];
          const float* fq = fn + (y * W + x) * C;
          const float* nq = num.data() + x * C;
          float* oq = on + (y * W + x) * C;
          if (!sai::saiMaskNeedsInterp(mv)) {
            for (int64_t c = 0; c < C; ++c) oq[c] = mv * fq[c];
          } else if (mv == 0.F) {
            for (int64_t c = 0; c < C; ++c) oq[c] = nq[c] / dv;
          } else {
            for (int64_t c = 0; c < C; ++c) oq[c] = sai::saiInterpCombine(mv, fq[c], nq[c], dv);
          }
        }
      }
    });
  }
}

}  // namespace sai_cpu

#endif  // SAI_MODELS_CSRC_SAI_CPU_KERNELS_H
