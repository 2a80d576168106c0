// SPDX-License-Identifier: Apache-2.0
//
// sai_cpu_gemm.h: the float32 GEMM of the fused sparse-block kernels (sai_cpu_blocks.h), header-only,
// with no BLAS behind it, so that the PyTorch extension and the ONNX Runtime custom-op library run
// the same code at the same speed.
//
//   C[M][N] = A[M][K] * B[K][N] (+ bias[N]) (ReLU)
//
// B (a weight) is packed once into panels of kNR = 16 columns, each K x 16 contiguous (zero-padded
// past N); A (im2col or gathered rows) is read in place, row-major with leading dimension lda. The
// loop nest is the classic one of GotoBLAS/BLIS reduced to what these shapes need: K in blocks of
// kKC (one panel slice, kKC x 16 floats = 16 KB, stays in L1 across the rows), rows of A in
// micro-tiles of kMR = 6 (the A block of M x kKC stays in L2 across the panels), a 6 x 16 register
// tile of 12 AVX2 accumulators (FMA) per micro-tile. Bias and ReLU are applied in the store of the
// last K block (the GEMM epilogue).
//
// Serial: callers split the rows (or the panels) across their thread pool.
#ifndef SAI_MODELS_CSRC_SAI_CPU_GEMM_H
#define SAI_MODELS_CSRC_SAI_CPU_GEMM_H

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SAI_GEMM_AVX2 1
#endif

namespace sai_cpu {

constexpr int64_t kNR = 16;   // columns per packed panel (two AVX2 registers)
constexpr int64_t kMR = 6;    // rows per register tile
constexpr int64_t kKC = 256;  // K per block
constexpr int64_t kMC = 48;   // rows of A per block (kMC x kKC floats stay in L2)

// What the GEMM runs on here (`sai doctor` reports it).
inline const char* gemm_isa() {
#ifdef SAI_GEMM_AVX2
  return "avx2+fma 6x16";
#else
  return "portable C++";
#endif
}

// A weight B[K][N] packed into ceil(N / kNR) panels of K x kNR floats (zero-padded past N): in its own
// 64-byte aligned storage (pack), or in a buffer the caller owns (pack_into / view, e.g. a tensor).
struct PackedB {
  int64_t K = 0, N = 0, panels = 0;
  const float* ptr = nullptr;
  std::unique_ptr<float[], void (*)(float*)> storage{nullptr, [](float* p) { ::operator delete[](p, std::align_val_t(64)); }};

  static int64_t packed_size(int64_t k_dim, int64_t n_dim) { return ((n_dim + kNR - 1) / kNR) * k_dim * kNR; }
  const float* panel(int64_t j) const { return ptr + j * K * kNR; }

  // B[k][n] at B + k * ldb + n, into `dst` (packed_size(k_dim, n_dim) floats), which this then views.
  void pack_into(float* dst, const float* B, int64_t k_dim, int64_t n_dim, int64_t ldb) {
    K = k_dim, N = n_dim, panels = (n_dim + kNR - 1) / kNR;
    for (int64_t j = 0; j < panels; ++j) {
      float* d = dst + j * K * kNR;
      const int64_t n0 = j * kNR, cols = std::min(kNR, N - n0);
      for (int64_t k = 0; k < K; ++k, d += kNR) {
        std::memcpy(d, B + k * ldb + n0, sizeof(float) * static_cast<size_t>(cols));
        std::fill(d + cols, d + kNR, 0.F);
      }
    }
    ptr = dst;
  }

  void pack(const float* B, int64_t k_dim, int64_t n_dim, int64_t ldb) {
    const size_t count = static_cast<size_t>(std::max<int64_t>(1, packed_size(k_dim, n_dim)));
    storage.reset(static_cast<float*>(::operator new[](count * sizeof(float), std::align_val_t(64))));
    pack_into(storage.get(), B, k_dim, n_dim, ldb);
  }

  // Views panels packed earlier (by pack_into) for a K x N weight; `p` must be 32-byte aligned.
  void view(const float* p, int64_t k_dim, int64_t n_dim) {
    K = k_dim, N = n_dim, panels = (n_dim + kNR - 1) / kNR, ptr = p;
  }
};

// One register tile: C[0..MR)[0..cols) (+)= A[0..MR)[0..kc) * panel slice [kc][16]; `first` stores
// instead of accumulating; `last` applies bias (+ column offset) and ReLU in the store.
template <int MR>
inline void micro_tile(const float* A, int64_t lda, const float* bp, int64_t kc, float* C, int64_t ldc, int64_t cols,
                       bool first, bool last, const float* bias, bool relu) {
#ifdef SAI_GEMM_AVX2
  // the accumulators live in registers only as long as nothing takes their address: the k loop ends
  // by storing them into `acc`, and the epilogue works on that
  __m256 c0[MR], c1[MR];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) c0[i] = c1[i] = _mm256_setzero_ps();
  const float* a[MR];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) a[i] = A + i * lda;
#pragma GCC unroll 4
  for (int64_t k = 0; k < kc; ++k, bp += kNR) {
    const __m256 b0 = _mm256_load_ps(bp), b1 = _mm256_load_ps(bp + 8);
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const __m256 av = _mm256_broadcast_ss(a[i] + k);
      c0[i] = _mm256_fmadd_ps(av, b0, c0[i]);
      c1[i] = _mm256_fmadd_ps(av, b1, c1[i]);
    }
  }
  alignas(32) float acc[MR][kNR];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
    _mm256_store_ps(acc[i], c0[i]);
    _mm256_store_ps(acc[i] + 8, c1[i]);
  }
  for (int i = 0; i < MR; ++i) {
    float* c = C + i * ldc;
    if (cols == kNR) {
      __m256 v0 = _mm256_load_ps(acc[i]), v1 = _mm256_load_ps(acc[i] + 8);
      if (!first) {
        v0 = _mm256_add_ps(v0, _mm256_loadu_ps(c));
        v1 = _mm256_add_ps(v1, _mm256_loadu_ps(c + 8));
      }
      if (last && bias != nullptr) {
        v0 = _mm256_add_ps(v0, _mm256_loadu_ps(bias));
        v1 = _mm256_add_ps(v1, _mm256_loadu_ps(bias + 8));
      }
      if (last && relu) {
        v0 = _mm256_max_ps(v0, _mm256_setzero_ps());
        v1 = _mm256_max_ps(v1, _mm256_setzero_ps());
      }
      _mm256_storeu_ps(c, v0);
      _mm256_storeu_ps(c + 8, v1);
    } else {
      for (int64_t j = 0; j < cols; ++j) {
        float v = acc[i][j] + (first ? 0.F : c[j]);
        if (last) {
          if (bias != nullptr) v += bias[j];
          if (relu) v = v > 0.F ? v : 0.F;
        }
        c[j] = v;
      }
    }
  }
#else
  float acc[MR][kNR] = {};
  for (int64_t k = 0; k < kc; ++k, bp += kNR) {
    for (int i = 0; i < MR; ++i) {
      const float av = A[i * lda + k];
      for (int64_t j = 0; j < kNR; ++j) acc[i][j] += av * bp[j];
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int64_t j = 0; j < cols; ++j) {
      float v = acc[i][j] + (first ? 0.F : C[i * ldc + j]);
      if (last) {
        if (bias != nullptr) v += bias[j];
        if (relu) v = v > 0.F ? v : 0.F;
      }
      C[i * ldc + j] = v;
    }
  }
#endif
}

// C[M][cols of panels [p0, p1)] = A[M][K] * B (+ bias) (ReLU), inside one thread. C + n is column n.
inline void gemm_packed(int64_t M, const float* A, int64_t lda, const PackedB& B, int64_t p0, int64_t p1, float* C,
                        int64_t ldc, const float* bias = nullptr, bool relu = false) {
  if (M <= 0 || p0 >= p1) return;
  const int64_t K = B.K;
  if (K == 0) {  // an empty sum: the epilogue of 0
    for (int64_t i = 0; i < M; ++i) {
      for (int64_t n = p0 * kNR; n < std::min(B.N, p1 * kNR); ++n) {
        float v = bias != nullptr ? bias[n] : 0.F;
        C[i * ldc + n] = relu && v < 0.F ? 0.F : v;
      }
    }
    return;
  }
  for (int64_t m0 = 0; m0 < M; m0 += kMC) {
    const int64_t mb = std::min(kMC, M - m0);
    const float* Am = A + m0 * lda;
    float* Cm = C + m0 * ldc;
    for (int64_t k0 = 0; k0 < K; k0 += kKC) {
      const int64_t kc = std::min(kKC, K - k0);
      const bool first = k0 == 0, last = k0 + kc == K;
      for (int64_t j = p0; j < p1; ++j) {
        const float* bp = B.panel(j) + k0 * kNR;
        const int64_t n0 = j * kNR, cols = std::min(kNR, B.N - n0);
        const float* bj = bias != nullptr ? bias + n0 : nullptr;
        int64_t i = 0;
        for (; i + kMR <= mb; i += kMR) {
          micro_tile<6>(Am + i * lda + k0, lda, bp, kc, Cm + i * ldc + n0, ldc, cols, first, last, bj, relu);
        }
        const float* a = Am + i * lda + k0;
        float* c = Cm + i * ldc + n0;
        switch (mb - i) {
          case 5: micro_tile<5>(a, lda, bp, kc, c, ldc, cols, first, last, bj, relu); break;
          case 4: micro_tile<4>(a, lda, bp, kc, c, ldc, cols, first, last, bj, relu); break;
          case 3: micro_tile<3>(a, lda, bp, kc, c, ldc, cols, first, last, bj, relu); break;
          case 2: micro_tile<2>(a, lda, bp, kc, c, ldc, cols, first, last, bj, relu); break;
          case 1: micro_tile<1>(a, lda, bp, kc, c, ldc, cols, first, last, bj, relu); break;
          default: break;
        }
      }
    }
  }
}

}  // namespace sai_cpu

#endif  // SAI_MODELS_CSRC_SAI_CPU_GEMM_H
