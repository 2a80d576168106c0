// SPDX-License-Identifier: Apache-2.0
//
// CPU kernels of sai::sparse_sample_conv and sai::interpolate (docs/design.md 3.2 / 3.3) as a PyTorch
// C++ extension: the ATen glue around the kernels of sai_cpu_kernels.h, which the ONNX Runtime
// custom-op library (models/csrc/ort/sai_ort_ops.cpp) runs too. They compute only what the mask
// asks for (see that header); here: argument checks, the ATen thread pool and GEMM (MKL/oneDNN
// BLAS), channels-last inputs, and the dense fallback for nearly full masks.
//
// Registered as library `sai_cpu`; sai/models/cpu_kernels.py routes the CPU dispatch of the `sai`
// custom ops here.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <string>
#include <vector>

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
      at::Tensor xp = at::constant_pad_nd(x_in, {pads[1], pads[3], pads[0], pads[2]}, 0);
      at::Tensor y = at::conv2d(xp, weight_in, has_bias ? *bias : at::Tensor(), stride,
                                at::IntArrayRef(std::vector<int64_t>{0, 0}), dilation, groups);
      if (p.activation == sai::kSAI_ACT_RELU) {
        y.relu_();
      }
      y.masked_fill_(mask <= 0, 0);
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
