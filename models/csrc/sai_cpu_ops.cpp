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

at::Tensor to_nhwc(const at::Tensor& t) {
  return t.permute({0, 2, 3, 1}).contiguous();
}

// The output in the memory format of the input (like PyTorch's own conv): NHWC storage viewed as
// NCHW is channels_last; otherwise one copy to contiguous NCHW.
at::Tensor from_nhwc(const at::Tensor& out_nhwc, const at::Tensor& like) {
  at::Tensor out = out_nhwc.permute({0, 3, 1, 2});
  if (like.suggest_memory_format() == at::MemoryFormat::ChannelsLast) {
    return out;
  }
  return out.contiguous();
}

at::Tensor sparse_sample_conv_cpu(const at::Tensor& x, const at::Tensor& mask, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& offset,
                                  at::IntArrayRef stride, at::IntArrayRef pads, at::IntArrayRef dilation,
                                  int64_t groups, int64_t deform_groups, c10::string_view activation,
                                  double dense_above) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat,
              "sai_cpu::sparse_sample_conv supports float32 only");
  TORCH_CHECK(stride.size() == 2 && pads.size() == 4 && dilation.size() == 2, "bad stride/pads/dilation");
  SaiConvParams p;
  p.N = x.size(0);
  p.C = x.size(1);
  p.H = x.size(2);
  p.W = x.size(3);
  p.Cout = weight.size(0);
  p.kh = weight.size(2);
  p.kw = weight.size(3);
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
  const at::Tensor mflat = mask.reshape({total});
  const at::Tensor active = at::nonzero(mflat > 0).reshape({-1});  // int64 positions, sorted
  const int64_t P = active.numel();
  auto opts = x.options();
  if (P == 0) {
    return from_nhwc(at::zeros({p.N, p.Ho, p.Wo, p.Cout}, opts), x);
  }

  const bool has_offset = offset.has_value() && offset->defined();
  const bool has_bias = bias.has_value() && bias->defined();
  // Nearly full masks: the dense convolution (oneDNN) is faster than gather + GEMM; same result.
  if (!has_offset && static_cast<double>(P) >= dense_above * static_cast<double>(total)) {
    at::Tensor xp = at::constant_pad_nd(x, {pads[1], pads[3], pads[0], pads[2]}, 0);
    at::Tensor y = at::conv2d(xp, weight, has_bias ? *bias : at::Tensor(), stride,
                                   at::IntArrayRef(std::vector<int64_t>{0, 0}), dilation, groups);
    if (p.activation == sai::kSAI_ACT_RELU) {
      y.relu_();
    }
    return at::where(mask > 0, y, at::zeros({}, opts));
  }

  const at::Tensor xt = to_nhwc(x);  // [N, H, W, C]
  const float* xd = xt.data_ptr<float>();
  const int64_t G = p.groups, cin_g = p.cinPerGroup, cout_g = p.coutPerGroup, K = p.kernelTaps;
  const int64_t kdim = K * cin_g;  // column order: (ky, kx, c_local)
  // weight [Cout, cin_g, kh, kw] -> [G, kh*kw*cin_g, cout_g]
  const at::Tensor wmat =
      weight.reshape({G, cout_g, cin_g, p.kh, p.kw}).permute({0, 3, 4, 2, 1}).reshape({G, kdim, cout_g}).contiguous();
  at::Tensor off_c;
  const float* od = nullptr;
  if (has_offset) {
    off_c = offset->contiguous();
    od = off_c.data_ptr<float>();
  }
  const float* bd = nullptr;
  at::Tensor bias_c;
  if (has_bias) {
    bias_c = bias->contiguous();
    bd = bias_c.data_ptr<float>();
  }
  const int64_t* ad = active.data_ptr<int64_t>();
  at::Tensor out = at::zeros({p.N, p.Ho, p.Wo, p.Cout}, opts);
  float* outd = out.data_ptr<float>();

  // rows per chunk: keep the column buffer around 8 MB
  const int64_t row_bytes = G * kdim * static_cast<int64_t>(sizeof(float));
  const int64_t chunk = std::max<int64_t>(64, std::min<int64_t>(P, (8 << 20) / std::max<int64_t>(row_bytes, 1)));
  at::Tensor cols = at::empty({G, chunk, kdim}, opts);
  at::Tensor rows = at::empty({G, chunk, cout_g}, opts);
  const int64_t C = p.C, H = p.H, W = p.W, dgc = p.C / p.deformGroups, hwo = static_cast<int64_t>(p.Ho) * p.Wo;

  for (int64_t start = 0; start < P; start += chunk) {
    const int64_t rcount = std::min(chunk, P - start);
    float* cd = cols.data_ptr<float>();
    at::parallel_for(0, rcount, 16, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        int32_t n, oy, ox;
        sai::saiPositionDecode(p, ad[start + r], &n, &oy, &ox);
        const float* xn = xd + static_cast<int64_t>(n) * H * W * C;
        for (int32_t ky = 0; ky < p.kh; ++ky) {
          for (int32_t kx = 0; kx < p.kw; ++kx) {
            int32_t iy, ix;
            sai::saiConvTapCoord(p, oy, ox, ky, kx, &iy, &ix);
            const int64_t k = ky * p.kw + kx;
            if (!has_offset) {
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
              const int64_t ch = (static_cast<int64_t>(n) * 2 * p.deformGroups * K + dg * 2 * K + 2 * k) * hwo +
                                 static_cast<int64_t>(oy) * p.Wo + ox;
              const float py = static_cast<float>(iy) + od[ch];
              const float px = static_cast<float>(ix) + od[ch + hwo];
              int64_t idx[4];
              float wts[4];
              bilinear_corners(H, W, py, px, idx, wts);
              for (int64_t c = dg * dgc; c < (dg + 1) * dgc; ++c) {
                float v = 0.F;
                for (int q = 0; q < 4; ++q) {
                  if (idx[q] >= 0) {
                    v += wts[q] * xn[idx[q] * C + c];
                  }
                }
                const int64_t g = c / cin_g;
                cd[(g * chunk + r) * kdim + k * cin_g + (c - g * cin_g)] = v;
              }
            }
          }
        }
      }
    });
    at::Tensor rows_used = rows.narrow(1, 0, rcount);
    const at::Tensor cols_used = cols.narrow(1, 0, rcount);
    if (G == 1) {
      at::Tensor r0 = rows_used.select(0, 0);
      at::mm_out(r0, cols_used.select(0, 0), wmat.select(0, 0));
    } else {
      at::bmm_out(rows_used, cols_used, wmat);
    }
    const float* rd = rows.data_ptr<float>();
    at::parallel_for(0, rcount, 64, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        float* dst = outd + ad[start + r] * p.Cout;
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
  return from_nhwc(out, x);
}

at::Tensor interpolate_cpu(const at::Tensor& feature, const at::Tensor& mask, double sigma, int64_t kernel_size,
                           double eps) {
  TORCH_CHECK(feature.scalar_type() == at::kFloat, "sai_cpu::interpolate supports float32 only");
  SaiInterpParams p;
  p.N = feature.size(0);
  p.C = feature.size(1);
  p.H = feature.size(2);
  p.W = feature.size(3);
  p.kernelSize = kernel_size;
  p.sigma = static_cast<float>(sigma);
  p.eps = static_cast<float>(eps);
  TORCH_CHECK(sai::saiInterpParamsValid(p), "invalid Interpolate parameters");
  const int64_t k = kernel_size, r = (k - 1) / 2, C = p.C, H = p.H, W = p.W;
  std::vector<float> table(k * k);
  sai::saiGaussianTable(p, table.data());
  const at::Tensor ft = to_nhwc(feature);
  const at::Tensor mc = mask.to(at::kFloat).contiguous();
  const float* fd = ft.data_ptr<float>();
  const float* md = mc.data_ptr<float>();
  at::Tensor out = at::empty({p.N, p.H, p.W, p.C}, feature.options());
  float* od = out.data_ptr<float>();
  at::parallel_for(0, static_cast<int64_t>(p.N) * H, 1, [&](int64_t b, int64_t e) {
    std::vector<float> acc(C);
    for (int64_t row = b; row < e; ++row) {
      const int64_t n = row / H, y = row % H;
      const float* mn = md + n * H * W;
      const float* fn = fd + n * H * W * C;
      for (int64_t x = 0; x < W; ++x) {
        const float mv = mn[y * W + x];
        const float* f = fn + (y * W + x) * C;
        float* o = od + ((n * H + y) * W + x) * C;
        if (!sai::saiMaskNeedsInterp(mv)) {
          for (int64_t c = 0; c < C; ++c) o[c] = mv * f[c];
          continue;
        }
        std::fill(acc.begin(), acc.end(), 0.F);
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
            const float* fq = fn + (yy * W + xx) * C;
            float* a = acc.data();
            for (int64_t c = 0; c < C; ++c) a[c] += w * fq[c];
          }
        }
        den += p.eps;
        if (mv == 0.F) {
          const float inv = 1.F / den;
          for (int64_t c = 0; c < C; ++c) o[c] = acc[c] * inv;
        } else {
          for (int64_t c = 0; c < C; ++c) o[c] = sai::saiInterpCombine(mv, f[c], acc[c], den);
        }
      }
    }
  });
  return from_nhwc(out, feature);
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
