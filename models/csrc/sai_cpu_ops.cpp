// SPDX-License-Identifier: Apache-2.0
//
// CPU kernels of sai::sparse_sample_conv and sai::interpolate (docs/design.md 3.2 / 3.3) as a PyTorch
// C++ extension: the ATen glue around the kernels of sai_cpu_kernels.h, which the ONNX Runtime
// custom-op library (models/csrc/ort/sai_ort_ops.cpp) runs too. They compute only what the mask
// asks for (see that header); here: argument checks, the ATen thread pool and GEMM (MKL/oneDNN
// BLAS), channels-last inputs, and the dense fallback for nearly full masks.
//
// Also the fused NHWC kernel of a whole non-deformable sparse block, sai_cpu::sparse_block
// (sai_cpu_blocks.h; its GEMMs on ATen's brgemm microkernel), which sai.models.fuse calls directly
// in eager float32 CPU inference.
//
// Registered as library `sai_cpu`; sai/models/cpu_kernels.py routes the CPU dispatch of the `sai`
// custom ops here.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "sai_cpu_blocks.h"
#include "sai_cpu_kernels.h"

namespace {

using sai::SaiConvParams;
using sai::SaiInterpParams;

// The kernels' Backend on ATen: its intra-op thread pool and at::mm (MKL).
struct AtenBackend {
  template <class F>
  void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) const {
    at::parallel_for(begin, end, grain, f);
  }
  void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
            int64_t ldc) const {
    auto opts = at::TensorOptions().dtype(at::kFloat);
    at::Tensor a = at::from_blob(const_cast<float*>(A), {M, K}, {lda, 1}, opts);
    at::Tensor b = at::from_blob(const_cast<float*>(B), {K, N}, {ldb, 1}, opts);
    at::Tensor c = at::from_blob(C, {M, N}, {ldc, 1}, opts);
    at::mm_out(c, a, b);
  }
};

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
  const at::Tensor mask_f = mask.to(at::kFloat).contiguous();
  const auto out_format = nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  auto opts = x_in.options();
  const bool has_offset = offset.has_value() && offset->defined();
  const bool has_bias = bias.has_value() && bias->defined();
  // Nearly full masks: the dense convolution (oneDNN) is faster than gather + GEMM; same result.
  if (!has_offset && total > 0) {
    const int64_t P = (mask_f > 0).sum().item<int64_t>();
    if (P > 0 && static_cast<double>(P) >= dense_above * static_cast<double>(total)) {
      // symmetric pads go to the convolution itself (no padded copy of the input); a full mask needs
      // no masking pass; elsewhere every position that is not active (M <= 0 or NaN) is exactly 0
      const bool symmetric = pads[0] == pads[2] && pads[1] == pads[3];
      at::Tensor y = symmetric
                         ? at::conv2d(x_in, weight_in, has_bias ? *bias : at::Tensor(), stride,
                                      at::IntArrayRef(std::vector<int64_t>{pads[0], pads[1]}), dilation, groups)
                         : at::conv2d(at::constant_pad_nd(x_in, {pads[1], pads[3], pads[0], pads[2]}, 0), weight_in,
                                      has_bias ? *bias : at::Tensor(), stride,
                                      at::IntArrayRef(std::vector<int64_t>{0, 0}), dilation, groups);
      if (p.activation == sai::kSAI_ACT_RELU) {
        y.relu_();
      }
      if (P < total) {
        y.masked_fill_(at::logical_not(mask_f > 0), 0);
      }
      return y.contiguous(out_format);
    }
  }
  at::Tensor out = at::empty({p.N, p.Cout, p.Ho, p.Wo}, opts.memory_format(out_format)).zero_();
  const at::Tensor x = x_in.contiguous(out_format);
  at::Tensor off_c, bias_c;
  if (has_offset) off_c = offset->contiguous();
  if (has_bias) bias_c = bias->contiguous();
  const at::Tensor w = weight_in.contiguous();
  std::vector<float> wop_nhwc;
  if (nhwc) wop_nhwc = sai_cpu::weight_nhwc_operand(p, w.data_ptr<float>());
  sai_cpu::sparse_sample_conv(AtenBackend{}, p, nhwc, x.data_ptr<float>(), mask_f.data_ptr<float>(),
                              nhwc ? wop_nhwc.data() : w.data_ptr<float>(),
                              has_bias ? bias_c.data_ptr<float>() : nullptr,
                              has_offset ? off_c.data_ptr<float>() : nullptr, out.data_ptr<float>());
  return out;
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
  at::Tensor out = at::empty({p.N, p.C, p.H, p.W}, f.options().memory_format(fmt));
  sai_cpu::interpolate(AtenBackend{}, p, nhwc, f.data_ptr<float>(), mc.data_ptr<float>(), out.data_ptr<float>());
  return out;
}

// ---- the fused sparse block (sai_cpu_blocks.h) ------------------------------------------------

// The kernels' Backend for work inside one thread of a parallel region.
struct SerialBackend {
  template <class F>
  void parallel_for(int64_t begin, int64_t end, int64_t /*grain*/, const F& f) const {
    if (begin < end) f(begin, end);
  }
};

// Positions per tile of the fused conv: the tile's im2col rows and results stay in L1/L2.
constexpr int64_t kTileRows = 32;

// ATen's batch-reduce GEMM microkernel (oneDNN's brgemm ukernel) runs float32 on x86-64 with AVX2
// at about 2-3x the throughput of at::mm on the small-N shapes of a sparse block (measured in
// docs/benchmarks.md). Probed once: where it throws or is wrong, the tiles use at::mm
// (SAI_CPU_BRGEMM=0 forces that).
bool brgemm_usable() {
  static const bool ok = [] {
    const char* env = std::getenv("SAI_CPU_BRGEMM");
    if (env != nullptr && std::string(env) == "0") return false;
    try {
      const int64_t M = 5, N = 16, K = 7;
      std::vector<float> a(M * K), b(K * N), c(M * N, -1.F);
      for (int64_t i = 0; i < M * K; ++i) a[i] = static_cast<float>(i % 5) - 2.F;
      for (int64_t i = 0; i < K * N; ++i) b[i] = static_cast<float>(i % 3) - 1.F;
      at::native::cpublas::brgemm(M, N, K, K, N, N, false, a.data(), b.data(), c.data(), false);
      at::native::cpublas::brgemm_release(false);
      for (int64_t i = 0; i < M; ++i) {
        for (int64_t j = 0; j < N; ++j) {
          float ref = 0.F;
          for (int64_t q = 0; q < K; ++q) ref += a[i * K + q] * b[q * N + j];
          if (c[i * N + j] != ref) return false;
        }
      }
      return true;
    } catch (const std::exception&) {
      return false;
    }
  }();
  return ok;
}

// C[M][N] = A[M][K] * B[K][N], all row-major and dense, inside one thread.
void tile_gemm(bool brgemm, int64_t M, int64_t N, int64_t K, const float* A, const float* B, float* C) {
  if (brgemm) {
    at::native::cpublas::brgemm(M, N, K, K, N, N, false, A, B, C, false);
    return;
  }
  auto opts = at::TensorOptions().dtype(at::kFloat);
  at::Tensor c = at::from_blob(C, {M, N}, opts);
  at::mm_out(c, at::from_blob(const_cast<float*>(A), {M, K}, opts), at::from_blob(const_cast<float*>(B), {K, N}, opts));
}

// The tiles re-read the whole weight for every tile: above this many bytes of weight (about an L2
// share) the blocked at::mm (MKL) over a chunk of im2col rows is faster (measured at the stage-3/4
// shapes of ResNet-50/101).
constexpr int64_t kTileWeightBytes = 640 << 10;

// rows[P][Cout] = the conv of NHWC `x` at the active positions of `s`, then bias and ReLU (when
// `relu`), then, when `wc` is given, times wc [Cb][Cout] (the reordered Bottleneck's conv3 on the
// same positions). Small weights: tiles of kTileRows positions, each im2col'd, multiplied by the
// GEMM microkernel against the packed weight `wop` [kh*kw*C][Cb], given its epilogue [and its second
// GEMM] while it is in cache: no full im2col matrix and no intermediate rows. Large weights: im2col
// in chunks of up to 32 MB and at::mm.
at::Tensor rows_conv(const float* x, const SaiConvParams& g, const sai_cpu::ActiveSet& s, const at::Tensor& wop,
                     const float* bias, bool relu, const at::Tensor* wc) {
  const int64_t P = s.count(), kdim = g.kdim, Cb = wop.size(1), Cout = wc != nullptr ? wc->size(1) : Cb;
  auto opts = at::TensorOptions().dtype(at::kFloat);
  const bool brgemm = brgemm_usable();
  const bool tile_b = brgemm && kdim * Cb * 4 <= kTileWeightBytes;
  const bool tile_c = tile_b && wc != nullptr && Cb * Cout * 4 <= kTileWeightBytes;
  at::Tensor rows = at::empty({P, tile_c || wc == nullptr ? Cout : Cb}, opts);
  const float* w = wop.data_ptr<float>();
  const float* w2 = tile_c ? wc->data_ptr<float>() : nullptr;
  float* out = rows.data_ptr<float>();
  if (tile_b) {
    const int64_t tiles = (P + kTileRows - 1) / kTileRows;
    at::parallel_for(0, tiles, 1, [&](int64_t b, int64_t e) {
      std::vector<float> cols(static_cast<size_t>(kTileRows * kdim));
      std::vector<float> mid(w2 != nullptr ? static_cast<size_t>(kTileRows * Cb) : 0);
      for (int64_t t = b; t < e; ++t) {
        const int64_t first = t * kTileRows, count = std::min(kTileRows, P - first);
        sai_cpu::im2col_rows(SerialBackend{}, g, x, s.pos.data(), first, count, cols.data());
        float* dst = w2 != nullptr ? mid.data() : out + first * Cb;
        tile_gemm(true, count, Cb, kdim, cols.data(), w, dst);
        sai_cpu::rows_bias_act(SerialBackend{}, dst, count, Cb, bias, relu);
        if (w2 != nullptr) tile_gemm(true, count, Cout, Cb, mid.data(), w2, out + first * Cout);
      }
      at::native::cpublas::brgemm_release(false);
    });
  } else {
    const int64_t chunk = std::max<int64_t>(64, std::min<int64_t>(P, (32 << 20) / (kdim * 4)));
    static thread_local sai_cpu::FloatBuffer cols_buf;
    float* cd = cols_buf.get(chunk * kdim);
    for (int64_t first = 0; first < P; first += chunk) {
      const int64_t count = std::min(chunk, P - first);
      sai_cpu::im2col_rows(AtenBackend{}, g, x, s.pos.data(), first, count, cd);
      at::Tensor dst = rows.narrow(0, first, count);
      at::mm_out(dst, at::from_blob(cd, {count, kdim}, opts), wop);
    }
    sai_cpu::rows_bias_act(AtenBackend{}, out, P, Cb, bias, relu);
  }
  if (wc != nullptr && !tile_c) return at::mm(rows, *wc);
  return rows;
}

void check_packed(const at::Tensor& w, int64_t kdim, const char* what) {
  TORCH_CHECK(w.scalar_type() == at::kFloat && w.dim() == 2 && w.size(0) == kdim,
              "sai_cpu::sparse_block: ", what, " must be a float32 [", kdim, ", Cout] packed weight, got ", w.sizes());
}

const float* opt_ptr(const std::optional<at::Tensor>& t, int64_t numel, const char* what) {
  if (!t.has_value() || !t->defined()) return nullptr;
  TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->numel() == numel,
              "sai_cpu::sparse_block: ", what, " must be a contiguous float32 tensor of ", numel, " values");
  return t->data_ptr<float>();
}

// One sparse residual block, NHWC throughout (docs/design.md 3.4):
//   a   = Interpolate(relu(conv_a(x) + ba) at m1, m1, sigma1)          conv_a: ka x ka, stride sa
//   b   = act_b(conv_b(a) + bb) at m2                                  conv_b: kb x kb, stride sb
//   c   = b @ wc                       (optional: the reordered Bottleneck's conv3)
//   out = relu(Interpolate(c, m2, sigma2) + tail_bias + identity)
// The weights come packed as GEMM operands [k*k*Cin][Cout] in (ky, kx, c) order (sai.models.fuse
// packs them once). Returns `out` as a channels_last [N, C, Ho, Wo] tensor.
at::Tensor sparse_block_cpu(const at::Tensor& x_in, const at::Tensor& m1_in, const at::Tensor& m2_in,
                            const at::Tensor& wa, const std::optional<at::Tensor>& ba, int64_t ka, int64_t sa,
                            const at::Tensor& wb, const std::optional<at::Tensor>& bb, int64_t kb, int64_t sb,
                            bool relu_b, const std::optional<at::Tensor>& wc,
                            const std::optional<at::Tensor>& tail_bias, const at::Tensor& identity_in, double sigma1,
                            double sigma2, int64_t kernel_size, double eps) {
  TORCH_CHECK(x_in.dim() == 4 && x_in.scalar_type() == at::kFloat, "sai_cpu::sparse_block: x must be float32 NCHW");
  TORCH_CHECK(ka % 2 == 1 && kb % 2 == 1 && sa >= 1 && sb >= 1, "sai_cpu::sparse_block: odd kernels, stride >= 1");
  const auto cl = at::MemoryFormat::ChannelsLast;
  const at::Tensor x = x_in.contiguous(cl);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  // the two convs (groups 1, "same" padding, no dilation) as SparseSampleConv parameters
  auto conv = [](int64_t n, int64_t c, int64_t h, int64_t w, int64_t k, int64_t stride) {
    SaiConvParams p;
    p.N = n, p.C = c, p.H = h, p.W = w, p.kh = p.kw = k, p.strideH = p.strideW = stride;
    p.padTop = p.padLeft = p.padBottom = p.padRight = (k - 1) / 2;
    return p;
  };
  SaiConvParams ga = conv(N, C, H, W, ka, sa);
  check_packed(wa, ka * ka * C, "wa");
  const int64_t Cm = wa.size(1);
  ga.Cout = Cm;
  SaiConvParams gb = conv(N, Cm, 0, 0, kb, sb);
  TORCH_CHECK(sai::saiConvFinalize(ga), "sai_cpu::sparse_block: inconsistent conv_a shapes");
  gb.H = ga.Ho, gb.W = ga.Wo;
  check_packed(wb, kb * kb * Cm, "wb");
  const int64_t Cb = wb.size(1);
  gb.Cout = Cb;
  TORCH_CHECK(sai::saiConvFinalize(gb), "sai_cpu::sparse_block: inconsistent conv_b shapes");
  const bool has_c = wc.has_value() && wc->defined();
  if (has_c) check_packed(*wc, Cb, "wc");
  const int64_t Cout = has_c ? wc->size(1) : Cb;
  TORCH_CHECK(m1_in.numel() == N * ga.Ho * ga.Wo && m2_in.numel() == N * gb.Ho * gb.Wo,
              "sai_cpu::sparse_block: mask shapes do not match the convolutions' output grids");
  TORCH_CHECK(identity_in.dim() == 4 && identity_in.size(0) == N && identity_in.size(1) == Cout &&
                  identity_in.size(2) == gb.Ho && identity_in.size(3) == gb.Wo,
              "sai_cpu::sparse_block: identity must be [N, Cout, Ho, Wo]");
  const at::Tensor m1 = m1_in.to(at::kFloat).contiguous(), m2 = m2_in.to(at::kFloat).contiguous();
  const at::Tensor identity = identity_in.to(at::kFloat).contiguous(cl);
  // the two Interpolates (sigma set per use): the same validity rules as sai::interpolate
  sai::SaiInterpParams ip;
  ip.N = N, ip.C = Cm, ip.H = ga.Ho, ip.W = ga.Wo, ip.kernelSize = kernel_size, ip.eps = static_cast<float>(eps);
  for (const double sigma : {sigma1, sigma2}) {
    ip.sigma = static_cast<float>(sigma);
    TORCH_CHECK(sai::saiInterpParamsValid(ip), "sai_cpu::sparse_block: kernel_size must be odd and at most ",
                sai::kSAI_MAX_INTERP_KERNEL, ", sigma finite, eps >= 0");
  }
  auto opts = x.options();

  sai_cpu::ActiveSet s1, s2;
  s1.fill(m1.data_ptr<float>(), m1.numel());
  s2.fill(m2.data_ptr<float>(), m2.numel());

  const at::Tensor rows_a = rows_conv(x.data_ptr<float>(), ga, s1, wa, opt_ptr(ba, Cm, "ba"), true, nullptr);
  at::Tensor a = at::empty({N, Cm, ga.Ho, ga.Wo}, opts.memory_format(cl));
  ip.sigma = static_cast<float>(sigma1);
  const std::vector<float> g1 = sai_cpu::gaussian_1d(ip);
  sai_cpu::interpolate_rows(AtenBackend{}, N, ga.Ho, ga.Wo, Cm, rows_a.data_ptr<float>(), Cm, s1.row_of.data(),
                            m1.data_ptr<float>(), g1.data(), kernel_size, ip.eps, sai_cpu::InterpTail{},
                            a.data_ptr<float>());

  const at::Tensor rows_b =
      rows_conv(a.data_ptr<float>(), gb, s2, wb, opt_ptr(bb, Cb, "bb"), relu_b, has_c ? &*wc : nullptr);
  at::Tensor out = at::empty({N, Cout, gb.Ho, gb.Wo}, opts.memory_format(cl));
  ip.sigma = static_cast<float>(sigma2);
  const std::vector<float> g2 = sai_cpu::gaussian_1d(ip);
  sai_cpu::InterpTail tail;
  tail.bias = opt_ptr(tail_bias, Cout, "tail_bias");
  tail.identity = identity.data_ptr<float>();
  tail.relu = true;
  sai_cpu::interpolate_rows(AtenBackend{}, N, gb.Ho, gb.Wo, Cout, rows_b.data_ptr<float>(), Cout, s2.row_of.data(),
                            m2.data_ptr<float>(), g2.data(), kernel_size, ip.eps, tail, out.data_ptr<float>());
  return out;
}

}  // namespace

TORCH_LIBRARY(sai_cpu, m) {
  m.def(
      "sparse_sample_conv(Tensor x, Tensor mask, Tensor weight, Tensor? bias, Tensor? offset, int[] stride, "
      "int[] pads, int[] dilation, int groups, int deform_groups, str activation, float dense_above) -> Tensor");
  m.def("interpolate(Tensor feature, Tensor mask, float sigma, int kernel_size, float eps) -> Tensor");
  m.def(
      "sparse_block(Tensor x, Tensor m1, Tensor m2, Tensor wa, Tensor? ba, int ka, int sa, Tensor wb, Tensor? bb, "
      "int kb, int sb, bool relu_b, Tensor? wc, Tensor? tail_bias, Tensor identity, float sigma1, float sigma2, "
      "int kernel_size, float eps) -> Tensor");
  m.def("block_gemm() -> str");
}

TORCH_LIBRARY_IMPL(sai_cpu, CPU, m) {
  m.impl("sparse_sample_conv", &sparse_sample_conv_cpu);
  m.impl("interpolate", &interpolate_cpu);
  m.impl("sparse_block", &sparse_block_cpu);
}

// What sparse_block's small-weight GEMMs run on here (`sai doctor` reports it).
TORCH_LIBRARY_IMPL(sai_cpu, CatchAll, m) {
  m.impl("block_gemm", []() -> std::string { return brgemm_usable() ? "brgemm" : "at::mm"; });
}
