// SPDX-License-Identifier: Apache-2.0
//
// CPU kernels of sai::sparse_sample_conv and sai::interpolate (DESIGN.md 3.2 / 3.3) as a PyTorch
// C++ extension. They compute only what the mask asks for:
//
//   SparseSampleConv: compaction of the M > 0 positions -> gather (im2col) of only those positions
//   from the NHWC input (bilinear taps for deformable conv v1) -> GEMM through ATen (MKL/oneDNN BLAS)
//   -> bias + activation -> scatter into a zeroed output. Rows are processed in chunks so the
//   column buffer stays in cache and memory stays bounded.
//   Interpolate: the separable Gaussian (row and column passes, vectorised) and the combine only
//   where M < 1.
//
// Index math (tap coordinates, position decode, activation, Gaussian weights, the interpolation
// combine) comes from the headers shared with the CUDA kernels: trt_plugins/common/*.h.
// Registered as library `sai_cpu`; sai/models/cpu_kernels.py routes the CPU dispatch of the `sai`
// custom ops here.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "interpolateMath.h"
#include "saiCommon.h"
#include "sparseSampleConvMath.h"

namespace {

using sai::SaiConvParams;
using sai::SaiInterpParams;

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
  void fill(const SaiConvParams& p, const float* od, const ChunkPositions& cp, int64_t count) {
    const int64_t K = p.kernelTaps, DG = p.deformGroups, hwo = static_cast<int64_t>(p.Ho) * p.Wo;
    idx.resize(DG * K * count * 4);
    wts.resize(DG * K * count * 4);
    at::parallel_for(0, DG * K, 1, [&](int64_t b, int64_t e) {
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

// NCHW path: channel-major im2col cols[G][cin_g*K][count] (column order of the weight, see
// saiConvColumnIndex), GEMM W_g[cout_g, cin_g*K] x cols -> rows[G][cout_g][count], scatter.
void conv_chunk_nchw(const SaiConvParams& p, const float* xd, const float* od, const at::Tensor& wmat,
                     const float* bd, const ChunkPositions& cp, int64_t count, at::Tensor& cols, at::Tensor& rows,
                     float* outd) {
  const int64_t G = p.groups, cin_g = p.cinPerGroup, cout_g = p.coutPerGroup, K = p.kernelTaps, kdim = p.kdim;
  const int64_t H = p.H, W = p.W, C = p.C, dgc = p.C / p.deformGroups, hwo = static_cast<int64_t>(p.Ho) * p.Wo;
  DeformTaps taps;
  if (od != nullptr) taps.fill(p, od, cp, count);
  float* cd = cols.data_ptr<float>();
  const int64_t chunk = cols.size(2);
  // Non-deformable: per tap, the flat input index (without the channel term) of every position,
  // or -1 outside the image; the gather of a (channel, tap) row is then one indexed load each.
  std::vector<int64_t> tap_idx;
  if (od == nullptr) {
    tap_idx.resize(K * count);
    at::parallel_for(0, K, 1, [&](int64_t b, int64_t e) {
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
  at::parallel_for(0, G * kdim, 4, [&](int64_t b, int64_t e) {
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
    at::Tensor rg = rows.select(0, g).narrow(1, 0, count);
    at::mm_out(rg, wmat.select(0, g), cols.select(0, g).narrow(1, 0, count));
  }
  const float* rd = rows.data_ptr<float>();
  const int64_t stride_g = rows.size(1) * rows.size(2), ld = rows.size(2);
  at::parallel_for(0, p.Cout, 4, [&](int64_t b, int64_t e) {
    for (int64_t oc = b; oc < e; ++oc) {
      const float* src = rd + (oc / cout_g) * stride_g + (oc % cout_g) * ld;
      for (int64_t r = 0; r < count; ++r) {
        outd[(static_cast<int64_t>(cp.n[r]) * p.Cout + oc) * hwo + cp.rem[r]] =
            sai::saiConvEpilogue<float>(p, src[r], bd, static_cast<int32_t>(oc));
      }
    }
  });
}

// NHWC path (channels_last input): position-major im2col cols[G][count][K*cin_g] with contiguous
// channel runs, GEMM cols x W_g^T -> rows[G][count][cout_g], scatter of contiguous output rows.
void conv_chunk_nhwc(const SaiConvParams& p, const float* xd, const float* od, const at::Tensor& wmat_t,
                     const float* bd, const ChunkPositions& cp, int64_t count, at::Tensor& cols, at::Tensor& rows,
                     float* outd) {
  const int64_t G = p.groups, cin_g = p.cinPerGroup, cout_g = p.coutPerGroup, K = p.kernelTaps;
  const int64_t H = p.H, W = p.W, C = p.C, dgc = p.C / p.deformGroups, kdim = K * cin_g;
  const int64_t chunk = cols.size(1);
  DeformTaps taps;
  if (od != nullptr) taps.fill(p, od, cp, count);
  float* cd = cols.data_ptr<float>();
  at::parallel_for(0, count, 16, [&](int64_t b, int64_t e) {
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
    at::Tensor rg = rows.select(0, g).narrow(0, 0, count);
    at::mm_out(rg, cols.select(0, g).narrow(0, 0, count), wmat_t.select(0, g));
  }
  const float* rd = rows.data_ptr<float>();
  const int64_t hwo = static_cast<int64_t>(p.Ho) * p.Wo;
  at::parallel_for(0, count, 64, [&](int64_t b, int64_t e) {
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

at::Tensor sparse_sample_conv_cpu(const at::Tensor& x_in, const at::Tensor& mask, const at::Tensor& weight_in,
                                  const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& offset,
                                  at::IntArrayRef stride, at::IntArrayRef pads, at::IntArrayRef dilation,
                                  int64_t groups, int64_t deform_groups, c10::string_view activation,
                                  double dense_above) {
  TORCH_CHECK(x_in.scalar_type() == at::kFloat && weight_in.scalar_type() == at::kFloat,
              "sai_cpu::sparse_sample_conv supports float32 only");
  TORCH_CHECK(stride.size() == 2 && pads.size() == 4 && dilation.size() == 2, "bad stride/pads/dilation");
  const bool nhwc = x_in.dim() == 4 && x_in.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  SaiConvParams p;
  p.N = x_in.size(0);
  p.C = x_in.size(1);
  p.H = x_in.size(2);
  p.W = x_in.size(3);
  p.Cout = weight_in.size(0);
  p.kh = weight_in.size(2);
  p.kw = weight_in.size(3);
  p.strideH = stride[0];
  p.strideW = stride[1];
  p.padTop = pads[0];
  p.padLeft = pads[1];
  p.padBottom = pads[2];
  p.padRight = pads[3];
  p.dilationH = dilation[0];
  p.dilationW = dilation[1];
  p.groups = groups;
  p.deformGroups = deform_groups;
  p.activation = sai::saiActivationFromString(std::string(activation).c_str());
  TORCH_CHECK(p.activation >= 0, "activation must be none or relu");
  TORCH_CHECK(sai::saiConvFinalize(p), "inconsistent SparseSampleConv shapes/attributes");
  TORCH_CHECK(mask.size(0) == p.N && mask.size(2) == p.Ho && mask.size(3) == p.Wo, "mask shape");

  const int64_t total = static_cast<int64_t>(p.N) * p.Ho * p.Wo;
  const at::Tensor active = at::nonzero(mask.reshape({total}) > 0).reshape({-1});  // sorted positions
  const int64_t P = active.numel();
  const auto out_format = nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  auto opts = x_in.options();
  at::Tensor out = at::empty({p.N, p.Cout, p.Ho, p.Wo}, opts.memory_format(out_format)).zero_();
  if (P == 0) {
    return out;
  }
  const bool has_offset = offset.has_value() && offset->defined();
  const bool has_bias = bias.has_value() && bias->defined();
  // Nearly full masks: the dense convolution (oneDNN) is faster than gather + GEMM; same result.
  if (!has_offset && static_cast<double>(P) >= dense_above * static_cast<double>(total)) {
    at::Tensor xp = at::constant_pad_nd(x_in, {pads[1], pads[3], pads[0], pads[2]}, 0);
    at::Tensor y = at::conv2d(xp, weight_in, has_bias ? *bias : at::Tensor(), stride,
                              at::IntArrayRef(std::vector<int64_t>{0, 0}), dilation, groups);
    if (p.activation == sai::kSAI_ACT_RELU) {
      y.relu_();
    }
    y.masked_fill_(mask <= 0, 0);
    return y.contiguous(out_format);
  }

  const at::Tensor x = x_in.contiguous(out_format);
  const float* xd = x.data_ptr<float>();
  at::Tensor off_c, bias_c;
  const float* od = nullptr;
  const float* bd = nullptr;
  if (has_offset) {
    off_c = offset->contiguous();
    od = off_c.data_ptr<float>();
  }
  if (has_bias) {
    bias_c = bias->contiguous();
    bd = bias_c.data_ptr<float>();
  }
  const int64_t* ad = active.data_ptr<int64_t>();
  float* outd = out.data_ptr<float>();
  const int64_t G = p.groups, cin_g = p.cinPerGroup, cout_g = p.coutPerGroup, K = p.kernelTaps;
  // chunk of positions: column buffer up to 32 MB (larger GEMMs; measured faster than 4 MB)
  const int64_t col_bytes = G * cin_g * K * static_cast<int64_t>(sizeof(float));
  const int64_t chunk = std::max<int64_t>(64, std::min<int64_t>(P, (32 << 20) / std::max<int64_t>(col_bytes, 1)));
  ChunkPositions cp;
  if (nhwc) {
    // weight [Cout, cin_g, kh, kw] -> [G, kh*kw*cin_g, cout_g] (column order (ky, kx, c))
    const at::Tensor wmat_t = weight_in.reshape({G, cout_g, cin_g, p.kh, p.kw})
                                  .permute({0, 3, 4, 2, 1})
                                  .reshape({G, K * cin_g, cout_g})
                                  .contiguous();
    at::Tensor cols = at::empty({G, chunk, K * cin_g}, opts);
    at::Tensor rows = at::empty({G, chunk, cout_g}, opts);
    for (int64_t start = 0; start < P; start += chunk) {
      const int64_t count = std::min(chunk, P - start);
      cp.fill(p, ad, start, count);
      conv_chunk_nhwc(p, xd, od, wmat_t, bd, cp, count, cols, rows, outd);
    }
  } else {
    const at::Tensor wmat = weight_in.reshape({G, cout_g, cin_g * K}).contiguous();
    at::Tensor cols = at::empty({G, cin_g * K, chunk}, opts);
    at::Tensor rows = at::empty({G, cout_g, chunk}, opts);
    for (int64_t start = 0; start < P; start += chunk) {
      const int64_t count = std::min(chunk, P - start);
      cp.fill(p, ad, start, count);
      conv_chunk_nchw(p, xd, od, wmat, bd, cp, count, cols, rows, outd);
    }
  }
  return out;
}

// Interpolate through the separable Gaussian: K[i,j] = a[i] * a[j] with
// a[i] = sqrt(sigma^2 / (2 pi)) * exp(-(sigma^2 / 2) * i^2), so num and den are a row pass and a
// column pass of 1-D convolutions (2k instead of k*k multiply-adds per element, vectorised along
// the contiguous axis). The combine M*F + (1-M)*num/den is applied only where M < 1.
std::vector<float> gaussian_1d(const SaiInterpParams& p) {
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

at::Tensor interpolate_cpu(const at::Tensor& feature_in, const at::Tensor& mask, double sigma, int64_t kernel_size,
                           double eps) {
  TORCH_CHECK(feature_in.scalar_type() == at::kFloat, "sai_cpu::interpolate supports float32 only");
  SaiInterpParams p;
  p.N = feature_in.size(0);
  p.C = feature_in.size(1);
  p.H = feature_in.size(2);
  p.W = feature_in.size(3);
  p.kernelSize = kernel_size;
  p.sigma = static_cast<float>(sigma);
  p.eps = static_cast<float>(eps);
  TORCH_CHECK(sai::saiInterpParamsValid(p), "invalid Interpolate parameters");
  const bool nhwc = feature_in.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  const auto fmt = nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor f = feature_in.contiguous(fmt);
  const at::Tensor mc = mask.to(at::kFloat).contiguous();
  const int64_t N = p.N, C = p.C, H = p.H, W = p.W, HW = H * W, k = kernel_size;
  const std::vector<float> a = gaussian_1d(p);
  const float* fd = f.data_ptr<float>();
  const float* md = mc.data_ptr<float>();
  at::Tensor out = at::empty({N, C, H, W}, f.options().memory_format(fmt));
  float* od = out.data_ptr<float>();

  // den = conv(M, K) + eps, one plane per image (separable: rows, then columns)
  std::vector<float> den(N * HW), tmp(N * HW);
  at::parallel_for(0, N * H, 8, [&](int64_t b, int64_t e) {
    for (int64_t row = b; row < e; ++row) conv1d_lanes(md + row * W, tmp.data() + row * W, W, 1, a.data(), k);
  });
  at::parallel_for(0, N * W, 8, [&](int64_t b, int64_t e) {
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
    at::parallel_for(0, N * C, 1, [&](int64_t b, int64_t e) {
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
    return out;
  }

  // NHWC: the same passes with C contiguous lanes per position
  std::vector<float> g(HW * C), t(HW * C);
  for (int64_t n = 0; n < N; ++n) {
    const float* fn = fd + n * HW * C;
    const float* mn = md + n * HW;
    float* on = od + n * HW * C;
    at::parallel_for(0, H, 1, [&](int64_t b, int64_t e) {
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
    at::parallel_for(0, H, 1, [&](int64_t b, int64_t e) {
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
  return out;
}

}  // namespace

TORCH_LIBRARY(sai_cpu, m) {
  m.def(
      "sparse_sample_conv(Tensor x, Tensor mask, Tensor weight, Tensor? bias, Tensor? offset, int[] stride, "
      "int[] pads, int[] dilation, int groups, int deform_groups, str activation, float dense_above) -> Tensor");
  m.def("interpolate(Tensor feature, Tensor mask, float sigma, int kernel_size, float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(sai_cpu, CPU, m) {
  m.impl("sparse_sample_conv", &sparse_sample_conv_cpu);
  m.impl("interpolate", &interpolate_cpu);
}
