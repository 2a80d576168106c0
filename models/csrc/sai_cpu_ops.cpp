// SPDX-License-Identifier: Apache-2.0
//
// CPU kernels of sai::sparse_sample_conv and sai::interpolate (DESIGN.md 3.2 / 3.3) as a PyTorch
// C++ extension. They compute only what the mask asks for:
//
//   SparseSampleConv: compaction of the M > 0 positions -> gather (im2col) of only those positions
//   from the NHWC input (bilinear taps for deformable conv v1) -> GEMM through ATen (MKL/oneDNN BLAS)
//   -> bias + activation -> scatter into a zeroed output. Rows are processed in chunks so the
//   column buffer stays in cache and memory stays bounded.
//   Interpolate: the Gaussian sum is evaluated only where M < 1, and only over taps with M != 0.
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
  at::parallel_for(0, G * kdim, 4, [&](int64_t b, int64_t e) {
    for (int64_t gr = b; gr < e; ++gr) {
      const int64_t g = gr / kdim;
      int32_t cl, ky, kx;
      sai::saiConvColumnDecode(p, static_cast<int32_t>(gr % kdim), &cl, &ky, &kx);
      const int64_t c = g * cin_g + cl;
      float* dst = cd + gr * chunk;
      if (od == nullptr) {
        for (int64_t r = 0; r < count; ++r) {
          int32_t iy, ix;
          sai::saiConvTapCoord(p, cp.oy[r], cp.ox[r], ky, kx, &iy, &ix);
          dst[r] = (iy >= 0 && iy < H && ix >= 0 && ix < W)
                       ? xd[(static_cast<int64_t>(cp.n[r]) * C + c) * H * W + static_cast<int64_t>(iy) * W + ix]
                       : 0.F;
        }
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
  // chunk of positions: keep the column buffer around 4 MB
  const int64_t col_bytes = G * cin_g * K * static_cast<int64_t>(sizeof(float));
  const int64_t chunk = std::max<int64_t>(64, std::min<int64_t>(P, (4 << 20) / std::max<int64_t>(col_bytes, 1)));
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

// The positions where M < 1 of one image, each with its denominator and the list of its taps with
// M != 0 (source position, K * M). Shared by every channel.
struct InterpTargets {
  std::vector<int64_t> pos;    // target positions (y * W + x)
  std::vector<float> m, den;   // M and conv(M, K) + eps there
  std::vector<int64_t> start;  // list range of target t: [start[t], start[t + 1])
  std::vector<int64_t> src;    // source positions
  std::vector<float> w;        // K * M at the source
};

void build_targets(const SaiInterpParams& p, const float* mn, const float* table, InterpTargets& t) {
  const int64_t H = p.H, W = p.W, k = p.kernelSize, r = (k - 1) / 2;
  t.start.push_back(0);
  for (int64_t y = 0; y < H; ++y) {
    for (int64_t x = 0; x < W; ++x) {
      const float mv = mn[y * W + x];
      if (!sai::saiMaskNeedsInterp(mv)) continue;
      float den = 0.F;
      for (int64_t i = -r; i <= r; ++i) {
        const int64_t yy = y + i;
        if (yy < 0 || yy >= H) continue;
        for (int64_t j = -r; j <= r; ++j) {
          const int64_t xx = x + j;
          if (xx < 0 || xx >= W) continue;
          const float mq = mn[yy * W + xx];
          if (mq == 0.F) continue;
          const float w = table[(i + r) * k + (j + r)] * mq;
          den += w;
          t.src.push_back(yy * W + xx);
          t.w.push_back(w);
        }
      }
      t.pos.push_back(y * W + x);
      t.m.push_back(mv);
      t.den.push_back(den + p.eps);
      t.start.push_back(static_cast<int64_t>(t.src.size()));
    }
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
  const int64_t C = p.C, HW = static_cast<int64_t>(p.H) * p.W;
  std::vector<float> table(kernel_size * kernel_size);
  sai::saiGaussianTable(p, table.data());
  std::vector<InterpTargets> targets(p.N);
  at::parallel_for(0, p.N, 1, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) build_targets(p, mc.data_ptr<float>() + n * HW, table.data(), targets[n]);
  });
  // out = M * F everywhere (exact where M >= 1), then the targets (M < 1) are overwritten.
  at::Tensor out = at::mul(f, mc).contiguous(fmt);
  const float* fd = f.data_ptr<float>();
  float* od = out.data_ptr<float>();
  for (int64_t n = 0; n < p.N; ++n) {
    const InterpTargets& t = targets[n];
    const int64_t T = static_cast<int64_t>(t.pos.size());
    if (T == 0) continue;
    if (nhwc) {
      const float* fn = fd + n * HW * C;
      float* on = od + n * HW * C;
      at::parallel_for(0, T, 16, [&](int64_t b, int64_t e) {
        std::vector<float> acc(C);
        for (int64_t q = b; q < e; ++q) {
          std::fill(acc.begin(), acc.end(), 0.F);
          for (int64_t l = t.start[q]; l < t.start[q + 1]; ++l) {
            const float w = t.w[l];
            const float* fs = fn + t.src[l] * C;
            for (int64_t c = 0; c < C; ++c) acc[c] += w * fs[c];
          }
          const float mv = t.m[q], den = t.den[q];
          const float* fq = fn + t.pos[q] * C;
          float* oq = on + t.pos[q] * C;
          for (int64_t c = 0; c < C; ++c) oq[c] = mv == 0.F ? acc[c] / den : sai::saiInterpCombine(mv, fq[c], acc[c], den);
        }
      });
    } else {
      at::parallel_for(0, C, 1, [&](int64_t b, int64_t e) {
        for (int64_t c = b; c < e; ++c) {
          const float* fp = fd + (n * C + c) * HW;
          float* op = od + (n * C + c) * HW;
          for (int64_t q = 0; q < T; ++q) {
            float acc = 0.F;
            for (int64_t l = t.start[q]; l < t.start[q + 1]; ++l) acc += t.w[l] * fp[t.src[l]];
            const float mv = t.m[q];
            op[t.pos[q]] = mv == 0.F ? acc / t.den[q] : sai::saiInterpCombine(mv, fp[t.pos[q]], acc, t.den[q]);
          }
        }
      });
    }
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
