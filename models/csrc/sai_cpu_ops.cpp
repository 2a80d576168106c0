// SPDX-License-Identifier: Apache-2.0
//
// CPU kernels of sai::sparse_sample_conv and sai::interpolate (docs/design.md 3.2 / 3.3) as a PyTorch
// C++ extension: the ATen glue around the kernels of sai_cpu_kernels.h, which the ONNX Runtime
// custom-op library (models/csrc/ort/sai_ort_ops.cpp) runs too. They compute only what the mask
// asks for (see that header); here: argument checks, the ATen thread pool and GEMM (MKL/oneDNN
// BLAS), channels-last inputs, and the dense fallback for nearly full masks.
//
// Also the fused NHWC kernel of a whole sparse block (deformable too), sai_cpu::sparse_block
// (sai_cpu_blocks.h on the packed GEMM of sai_cpu_gemm.h, the kernel libsai_ort_ops.so runs too),
// which sai.models.fuse calls directly in eager float32 CPU inference.
//
// Registered as library `sai_cpu`; sai/models/cpu_kernels.py routes the CPU dispatch of the `sai`
// custom ops here.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
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
  int64_t threads() const { return at::get_num_threads(); }
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
  TORCH_CHECK(x_in.dim() == 4 && weight_in.dim() == 4, "x and weight must be 4-D");
  const bool nhwc = x_in.dim() == 4 && x_in.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  SaiConvParams p = sai::saiConvParamsOf(x_in.sizes().data(), weight_in.sizes().data(), stride.data(), pads.data(),
                                         dilation.data(), groups, deform_groups,
                                         sai::saiActivationFromString(std::string(activation).c_str()));
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

// A conv weight [Cout, Cin, kh, kw] packed as the block kernel's GEMM operand (sai_cpu_gemm.h): a tensor
// of the weight's shape whose storage holds the packed panels (PackedB::packed_size floats, more than
// the shape's numel when Cout is not a multiple of 16). Opaque: only sparse_block reads it.
at::Tensor pack_conv_weight_cpu(const at::Tensor& w_in) {
  TORCH_CHECK(w_in.dim() == 4 && w_in.scalar_type() == at::kFloat && w_in.size(2) == w_in.size(3) &&
                  w_in.size(2) % 2 == 1,
              "sai_cpu::pack_conv_weight: w must be a float32 [Cout, Cin, k, k] conv weight with k odd, got ",
              w_in.sizes());
  const at::Tensor w = w_in.contiguous();
  const int64_t cout = w.size(0), cin = w.size(1), k = w.size(2);
  const int64_t size = sai_cpu::PackedB::packed_size(k * k * cin, cout);
  at::Tensor storage = at::empty({std::max<int64_t>(size, w.numel())}, w.options());
  sai_cpu::PackedB pb;
  sai_cpu::pack_conv_weight(w.data_ptr<float>(), cout, cin, k, k, pb, storage.data_ptr<float>());
  return storage.as_strided(w.sizes(), w.strides());
}

// The PackedB view of a tensor from pack_conv_weight (0 when `t` is absent); `what` names it.
int64_t packed_view(const std::optional<at::Tensor>& t, const char* what, sai_cpu::PackedB& out) {
  if (!t.has_value() || !t->defined()) return 0;
  TORCH_CHECK(t->dim() == 4 && t->scalar_type() == at::kFloat && t->size(2) == t->size(3) && t->is_contiguous(),
              "sai_cpu::sparse_block: ", what, " must come from sai_cpu::pack_conv_weight, got ", t->sizes());
  const int64_t k = t->size(2), K = k * k * t->size(1), N = t->size(0);
  const int64_t need = sai_cpu::PackedB::packed_size(K, N);
  TORCH_CHECK(t->storage_offset() == 0 && static_cast<int64_t>(t->storage().nbytes()) >= need * 4 &&
                  reinterpret_cast<uintptr_t>(t->data_ptr<float>()) % 32 == 0,
              "sai_cpu::sparse_block: ", what, " must come from sai_cpu::pack_conv_weight (its storage is too small)");
  out.view(t->data_ptr<float>(), K, N);
  return k;
}

std::vector<float> opt_vector(const std::optional<at::Tensor>& t) {
  if (!t.has_value() || !t->defined()) return {};
  const at::Tensor c = t->to(at::kFloat).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

// One sparse residual block, NHWC throughout (docs/design.md 3.4), sai_cpu::sparse_block_nhwc: the
// weights come from pack_conv_weight (sai.models.fuse packs them once); with wo, conv_b is deformable
// (DCN v1) with its offsets from the offset conv wo (+ bo) of x at offset_stride. Returns a channels_last
// [N, Cout, Ho, Wo] tensor.
at::Tensor sparse_block_cpu(const at::Tensor& x_in, const at::Tensor& m1_in, const at::Tensor& m2_in,
                            const at::Tensor& wa, const std::optional<at::Tensor>& ba, int64_t sa, const at::Tensor& wb,
                            const std::optional<at::Tensor>& bb, int64_t sb, bool relu_b,
                            const std::optional<at::Tensor>& wc, const std::optional<at::Tensor>& tail_bias,
                            const std::optional<at::Tensor>& wd, const std::optional<at::Tensor>& bd,
                            int64_t down_stride, double sigma1, double sigma2, int64_t kernel_size, double eps,
                            const std::optional<at::Tensor>& wo, const std::optional<at::Tensor>& bo,
                            int64_t offset_stride) {
  TORCH_CHECK(x_in.dim() == 4 && x_in.scalar_type() == at::kFloat, "sai_cpu::sparse_block: x must be float32 [N, C, H, W]");
  TORCH_CHECK(sa >= 1 && sb >= 1 && down_stride >= 1 && offset_stride >= 1,
              "sai_cpu::sparse_block: strides must be >= 1");
  const auto cl = at::MemoryFormat::ChannelsLast;
  const at::Tensor x = x_in.contiguous(cl);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  sai_cpu::BlockWeights w;
  const int64_t ka = packed_view(wa, "wa", w.wa), kb = packed_view(wb, "wb", w.wb);
  TORCH_CHECK(packed_view(wc, "wc", w.wc) <= 1 && packed_view(wd, "wd", w.wd) <= 1,
              "sai_cpu::sparse_block: wc and wd must be 1x1 convs");
  w.ko = packed_view(wo, "wo", w.wo);
  w.ba = opt_vector(ba), w.bb = opt_vector(bb), w.tail_bias = opt_vector(tail_bias), w.bd = opt_vector(bd);
  w.bo = opt_vector(bo);
  sai_cpu::BlockSpec s;
  s.sa = sa, s.sb = sb, s.down_stride = down_stride, s.relu_b = relu_b, s.kernel_size = kernel_size;
  s.offset_stride = offset_stride;
  s.sigma1 = static_cast<float>(sigma1), s.sigma2 = static_cast<float>(sigma2), s.eps = static_cast<float>(eps);
  sai::SaiInterpParams ip;
  ip.kernelSize = static_cast<int32_t>(kernel_size), ip.eps = s.eps;
  for (const float sigma : {s.sigma1, s.sigma2}) {
    ip.sigma = sigma;
    TORCH_CHECK(sai::saiInterpParamsValid(ip), "sai_cpu::sparse_block: kernel_size must be odd and at most ",
                sai::kSAI_MAX_INTERP_KERNEL, ", sigma finite, eps >= 0");
  }
  sai_cpu::BlockGeometry g;
  const std::string why = sai_cpu::block_geometry(N, C, H, W, s, w, ka, kb, g);
  TORCH_CHECK(why.empty(), "sai_cpu::sparse_block: x ", x.sizes(), ": ", why);
  TORCH_CHECK(m1_in.numel() == N * g.ga.Ho * g.ga.Wo && m2_in.numel() == N * g.gb.Ho * g.gb.Wo,
              "sai_cpu::sparse_block: mask shapes do not match the convolutions' output grids");
  const at::Tensor m1 = m1_in.to(at::kFloat).contiguous(), m2 = m2_in.to(at::kFloat).contiguous();
  at::Tensor out = at::empty({N, g.Cout, g.gb.Ho, g.gb.Wo}, x.options().memory_format(cl));
  if (out.numel() == 0) return out;
  sai_cpu::sparse_block_nhwc(AtenBackend{}, g, s, w, x.data_ptr<float>(), m1.data_ptr<float>(), m2.data_ptr<float>(),
                             out.data_ptr<float>());
  return out;
}

}  // namespace

TORCH_LIBRARY(sai_cpu, m) {
  m.def(
      "sparse_sample_conv(Tensor x, Tensor mask, Tensor weight, Tensor? bias, Tensor? offset, int[] stride, "
      "int[] pads, int[] dilation, int groups, int deform_groups, str activation, float dense_above) -> Tensor");
  m.def("interpolate(Tensor feature, Tensor mask, float sigma, int kernel_size, float eps) -> Tensor");
  m.def("pack_conv_weight(Tensor w) -> Tensor");
  m.def(
      "sparse_block(Tensor x, Tensor m1, Tensor m2, Tensor wa, Tensor? ba, int sa, Tensor wb, Tensor? bb, int sb, "
      "bool relu_b, Tensor? wc, Tensor? tail_bias, Tensor? wd, Tensor? bd, int down_stride, float sigma1, "
      "float sigma2, int kernel_size, float eps, Tensor? wo=None, Tensor? bo=None, int offset_stride=1) -> Tensor");
  m.def("block_gemm() -> str");
}

TORCH_LIBRARY_IMPL(sai_cpu, CPU, m) {
  m.impl("sparse_sample_conv", &sparse_sample_conv_cpu);
  m.impl("interpolate", &interpolate_cpu);
  m.impl("pack_conv_weight", &pack_conv_weight_cpu);
  m.impl("sparse_block", &sparse_block_cpu);
}

// What sparse_block's small-weight GEMMs run on here (`sai doctor` reports it).
TORCH_LIBRARY_IMPL(sai_cpu, CatchAll, m) {
  m.impl("block_gemm", []() -> std::string { return sai_cpu::gemm_isa(); });
}
