"""models/csrc/sai_cpu_gemm.h, the GEMM of the fused block kernels, on its own: compiled here twice (the AVX2/FMA
register tiles with -march=native, and the portable C++ loop of a build without AVX2) and checked against a naive
double-precision product over shapes that hit every edge: rows off the 6-row tile, columns off the 16-column
panel, K across several K blocks and K = 0, a panel range, the accumulate-free store, bias and ReLU."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECK = r"""
#include "sai_cpu_gemm.h"
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>
int main() {
  std::printf("isa %s\n", sai_cpu::gemm_isa());
  const long shapes[][5] = {  // M, K, N, first panel, panel end (-1: all)
      {1, 1, 1, 0, -1}, {5, 7, 16, 0, -1}, {6, 256, 16, 0, -1}, {13, 300, 40, 0, -1}, {48, 576, 64, 0, -1},
      {97, 1030, 18, 0, -1}, {50, 64, 100, 2, 5}, {7, 0, 20, 0, -1}, {200, 2304, 33, 0, -1}};
  std::mt19937 g(0);
  std::uniform_real_distribution<float> u(-1.F, 1.F);
  double worst = 0;
  for (const auto& s : shapes) {
    const long M = s[0], K = s[1], N = s[2];
    for (int variant = 0; variant < 2; ++variant) {
      const bool with_bias = variant == 1, relu = variant == 1;
      const long lda = K + 3, ldc = N + 5;  // leading dimensions wider than the rows
      std::vector<float> A(M * lda), B(K * N + 1), C(M * ldc, 12345.F), bias(N);
      for (auto& v : A) v = u(g);
      for (auto& v : B) v = u(g);
      for (auto& v : bias) v = u(g);
      sai_cpu::PackedB pb;
      pb.pack(B.data(), K, N, N);
      const long p0 = s[3], p1 = s[4] < 0 ? pb.panels : s[4];
      sai_cpu::gemm_packed(M, A.data(), lda, pb, p0, p1, C.data(), ldc, with_bias ? bias.data() : nullptr, relu);
      for (long i = 0; i < M; ++i) {
        for (long j = 0; j < ldc; ++j) {
          const bool inside = j >= p0 * 16 && j < std::min(N, p1 * 16);
          if (!inside) {
            if (C[i * ldc + j] != 12345.F) { std::printf("FAIL wrote outside row %ld col %ld\n", i, j); return 1; }
            continue;
          }
          double r = with_bias ? bias[j] : 0.0, mag = std::fabs(r);
          for (long k = 0; k < K; ++k) { r += double(A[i * lda + k]) * B[k * N + j]; mag += std::fabs(double(A[i * lda + k]) * B[k * N + j]); }
          if (relu && r < 0) r = 0;
          const double err = std::fabs(C[i * ldc + j] - r) / (mag + 1e-30);
          worst = std::max(worst, err);
          if (!(err < 1e-6)) { std::printf("FAIL M=%ld K=%ld N=%ld at %ld,%ld: %g vs %g\n", M, K, N, i, j, C[i * ldc + j], r); return 1; }
        }
      }
    }
  }
  std::printf("ok worst %.3g\n", worst);
  return 0;
}
"""


@pytest.mark.parametrize("flags", [["-march=native"], ["-march=x86-64", "-mno-avx2", "-mno-fma"]],
                         ids=["native", "portable"])
def test_gemm_matches_a_double_precision_product(tmp_path, flags):
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        pytest.skip(f"{cxx} is not installed")
    if "-mno-avx2" in flags and os.uname().machine != "x86_64":
        pytest.skip("the portable variant is forced with x86-64 flags")
    src = tmp_path / "check.cpp"
    src.write_text(CHECK)
    exe = tmp_path / "check"
    subprocess.run([cxx, "-O2", "-std=c++17", *flags, f"-I{ROOT / 'models' / 'csrc'}", str(src), "-o", str(exe)],
                   check=True, capture_output=True, text=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stdout + out.stderr
    isa = out.stdout.splitlines()[0]
    if "-mno-avx2" in flags:
        assert isa == "isa portable C++"
