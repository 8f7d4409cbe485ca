// y = x @ W.T for bf16 or fp16 W in AVX-512 FMAs, for the GEMM's many rows (prefill, the vision
// tower): bf16 where the CPU has no AMX (amx.cpp's GEMM comes first), fp16 on every AVX-512 CPU.
//
// The tiled GEMM (matmul.cpp) widens 4 MB of W into fp32 for OpenBLAS's sgemm, which then packs
// that tile again into its own panels: the widened tile goes through the caches twice before a
// product is made. Here W is widened straight into the panels a micro-kernel reads (32 rows, for
// each k their 32 values), once a call, and x is packed once into blocks of 12 rows (for each k
// their 12 values). A 12 x 32 block of y is 24 vectors of sums that stay in registers over all of
// K: each k one load of the panel's two vectors and 12 broadcasts of x for 24 FMAs. Every product
// and sum is fp32, as in sgemm; only the order of the sums differs.

#include <immintrin.h>

#include <algorithm>

#include "avx512_gemm.h"
#include "kernels.h"
#include "pool.h"
#include "scratch.h"

namespace cpuk::avx512 {

#include "avx512_vector.h"

namespace {

constexpr int kRows = 12;   // rows of x a block
constexpr int kPanel = 32;  // rows of W a panel

// x's rows [m0, m0 + 12) (those past M as zeros) -> out[k][row].
void pack_x(const float* x, int M, int K, int m0, float* out) {
  for (int r = 0; r < kRows; ++r) {
    const float* row = x + static_cast<long>(m0 + r) * K;
    for (int k = 0; k < K; ++k) out[static_cast<long>(k) * kRows + r] = m0 + r < M ? row[k] : 0.0f;
  }
}

// W's rows [n0, n0 + 32) (those past N as zeros), widened -> panel[k][lane].
template <bool BF16>
void pack_panel(const uint16_t* w, int K, int N, int n0, float* panel) {
  const int body = K / 16 * 16;
  for (int half = 0; half < kPanel; half += 16) {
    for (int k = 0; k < body; k += 16) {
      __m512i rows[16], columns[16];
      for (int i = 0; i < 16; ++i) {
        const int n = n0 + half + i;
        const uint16_t* p = w + static_cast<long>(n) * K + k;
        rows[i] = _mm512_castps_si512(n < N ? (BF16 ? V::bf16(p) : V::f16(p)) : _mm512_setzero_ps());
      }
      transpose16(rows, columns);
      for (int i = 0; i < 16; ++i) _mm512_store_si512(panel + static_cast<long>(k + i) * kPanel + half, columns[i]);
    }
  }
  for (int j = 0; j < kPanel; ++j) {
    const int n = n0 + j;
    for (int k = body; k < K; ++k) {
      const uint16_t h = n < N ? w[static_cast<long>(n) * K + k] : 0;
      panel[static_cast<long>(k) * kPanel + j] = BF16 ? bf16_to_f32(h) : f16_to_f32(h);
    }
  }
}

// A block of 12 rows of x by the panel over all of K: out[row][lane].
void block(const float* xp, const float* panel, int K, float* out) {
  __m512 acc[kRows][2];
  for (int r = 0; r < kRows; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int k = 0; k < K; ++k) {
    const __m512 b0 = _mm512_load_ps(panel + static_cast<long>(k) * kPanel);
    const __m512 b1 = _mm512_load_ps(panel + static_cast<long>(k) * kPanel + 16);
    const float* a = xp + static_cast<long>(k) * kRows;
    for (int r = 0; r < kRows; ++r) {
      const __m512 ar = _mm512_set1_ps(a[r]);
      acc[r][0] = _mm512_fmadd_ps(ar, b0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(ar, b1, acc[r][1]);
    }
  }
  for (int r = 0; r < kRows; ++r) {
    _mm512_store_ps(out + r * kPanel, acc[r][0]);
    _mm512_store_ps(out + r * kPanel + 16, acc[r][1]);
  }
}

template <bool BF16>
void panels(const uint16_t* w, int K, const float* xp, int M, int N, long p0, long p1, float* y) {
  const int blocks = (M + kRows - 1) / kRows;
  thread_local Scratch<float> buffer;
  float* panel = buffer.get(static_cast<size_t>(K) * kPanel + kRows * kPanel);
  float* out = panel + static_cast<long>(K) * kPanel;
  for (long p = p0; p < p1; ++p) {
    const int n0 = static_cast<int>(p) * kPanel;
    pack_panel<BF16>(w, K, N, n0, panel);
    for (int blk = 0; blk < blocks; ++blk) {
      block(xp + static_cast<long>(blk) * K * kRows, panel, K, out);
      store_block(out, std::min(kRows, M - blk * kRows), N - n0, y + static_cast<long>(blk) * kRows * N + n0, N);
    }
  }
}

}  // namespace

}  // namespace cpuk::avx512

namespace cpuk {

void avx512_half_gemm(const uint16_t* w, Float dtype, int K, const float* x, int M, int N, float* y) {
  const int blocks = (M + avx512::kRows - 1) / avx512::kRows;
  thread_local Scratch<float> packed;
  float* xp = packed.get(static_cast<size_t>(blocks) * K * avx512::kRows);
  Pool& pool = Pool::get();
  pool.parallel_for(blocks, 4, [&](long b, long e) {
    for (long blk = b; blk < e; ++blk) avx512::pack_x(x, M, K, static_cast<int>(blk) * avx512::kRows, xp + blk * K * avx512::kRows);
  });
  pool.parallel_for((N + avx512::kPanel - 1) / avx512::kPanel, 1, [&](long p0, long p1) {
    dtype == Float::bf16 ? avx512::panels<true>(w, K, xp, M, N, p0, p1, y) : avx512::panels<false>(w, K, xp, M, N, p0, p1, y);
  });
}

}  // namespace cpuk
