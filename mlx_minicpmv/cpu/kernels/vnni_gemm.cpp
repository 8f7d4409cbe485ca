// y = x @ W.T for quantised W in AVX-512 VNNI's integer dot products, for the GEMM's many rows
// (prefill, the vision tower) where the CPU has VNNI and no AMX.
//
// Without AMX the tiled GEMM (matmul.cpp) widens W into fp32 tiles for sgemm, which runs at the
// FMAs' rate: 16 products an op. vpdpbusd makes 64, and with x as three int8 digits a value (24
// bits, as the GEMV takes it: every product exact, vnni.h) a value's products cost 3/64 of an op
// against an FMA's 1/16. In cache on Zen 4 this file's inner loop makes 1.33x the products of an
// FMA loop, 1.23x once each group's sums are scaled (a measured bound, not the GEMM's own rate).
//
// W's rows go in panels of 32, packed once a call: for each 4 k, 32 lanes of 4 code bytes, two
// vectors of vpdpbusd's unsigned operand. x's rows go in blocks of 3: for each 4 k, each row's
// three digits as 4 bytes, which the instruction broadcasts from memory. A block of 3 rows by a
// panel sums group by group into 18 int32 accumulators (3 rows, 2 vectors of 16 outputs, 3
// digits), then adds (256·(256·Σh + Σm) + Σl)·scale·sx + bias·Σx in fp32, the GEMV's formula.
// Over a group of 128 8-bit codes |Σh| < 2^22, so 256·Σh + Σm stays inside int32.
//
// vpdpbusd is written in asm: GCC 12 kept the intrinsic's accumulators in memory (0.55x an FMA
// loop's products where the asm makes 1.33x).

#include <immintrin.h>

#include <algorithm>

#include "avx512_gemm.h"
#include "kernels.h"
#include "pool.h"
#include "scratch.h"
#include "vnni.h"

namespace cpuk::vnni {

namespace {

constexpr int kRows = 3;    // rows of x a block
constexpr int kPanel = 32;  // rows of W a panel
constexpr int kDigits = 3;

// acc += w · broadcast(*x) in 16 lanes of 4 byte products.
inline void dot4(__m512i& acc, __m512i w, const int32_t* x) {
  asm("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*x));
}

// x's rows [m0, m0 + 3) (those past M as zeros) -> digits[k / 4][row][digit] as int32 of 4 digit
// bytes, and per group its rows' scales and sums: scale[g][row], sum[g][row].
void pack_x(const float* x, int M, int K, int group, int m0, int32_t* digits, float* scale, float* sum) {
  const int G = K / group;
  alignas(64) int8_t d[kDigits * 16];
  for (int r = 0; r < kRows; ++r) {
    const int m = m0 + r;
    for (int g = 0; g < G; ++g) {
      float inv = 0.0f;
      const float* xg = x + static_cast<long>(m) * K + static_cast<long>(g) * group;
      if (m < M) {
        inv = scale_group(xg, group, scale[g * kRows + r], sum[g * kRows + r]);
      } else {
        scale[g * kRows + r] = sum[g * kRows + r] = 0.0f;
      }
      for (int k = 0; k < group; k += 16) {
        const __m512i v = m < M ? _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xg + k), _mm512_set1_ps(inv)))
                                : _mm512_setzero_si512();
        store_digits(v, d, 16);
        const long k4 = (static_cast<long>(g) * group + k) / 4;
        for (int q = 0; q < 4; ++q)
          for (int digit = 0; digit < kDigits; ++digit)
            __builtin_memcpy(digits + ((k4 + q) * kRows + r) * kDigits + digit, d + digit * 16 + 4 * q, 4);
      }
    }
  }
}

// W's rows [n0, n0 + 32) (those past N as zeros) -> codes[k / 4][lane] as 4 code bytes, and per
// group the rows' scales and biases in fp32: scale[g][lane], bias[g][lane].
void pack_panel(const Quantized& q, int N, int n0, uint32_t* codes, float* scale, float* bias) {
  const int K = q.K, G = K / q.group, words = K * q.bits / 32;
  for (int j = 0; j < kPanel; ++j) {
    const int n = n0 + j;
    const uint32_t* row = q.w + static_cast<long>(n) * words;
    for (int k4 = 0; k4 < K / 4; ++k4) {
      uint32_t c = 0;
      if (n < N) {
        if (q.bits == 8) {
          c = row[k4];
        } else {  // 8 nibbles a word, the first lowest: 4 of them into the low nibble of 4 bytes
          const uint32_t h = row[k4 / 2] >> (16 * (k4 % 2));
          c = (h & 0xf) | ((h & 0xf0) << 4) | ((h & 0xf00) << 8) | ((h & 0xf000) << 12);
        }
      }
      codes[static_cast<long>(k4) * kPanel + j] = c;
    }
    for (int g = 0; g < G; ++g) {
      const long at = static_cast<long>(n) * G + g;
      scale[g * kPanel + j] = n < N ? load_float(q.scales, q.dtype, at) : 0.0f;
      bias[g * kPanel + j] = n < N ? load_float(q.biases, q.dtype, at) : 0.0f;
    }
  }
}

// y's block of 3 rows by the panel's 32 outputs: out[row][lane].
template <int STEPS>  // k / 4 steps a group
void block(const int32_t* digits, const float* xscale, const float* xsum, const uint32_t* codes, const float* scale,
           const float* bias, int G, float* out) {
  __m512 y[kRows][2];
  for (int r = 0; r < kRows; ++r) y[r][0] = y[r][1] = _mm512_setzero_ps();
  for (int g = 0; g < G; ++g) {
    __m512i acc[kRows][2][kDigits];
    for (int r = 0; r < kRows; ++r)
      for (int h = 0; h < 2; ++h)
        for (int digit = 0; digit < kDigits; ++digit) acc[r][h][digit] = _mm512_setzero_si512();
    for (int s = 0; s < STEPS; ++s) {
      const long k4 = static_cast<long>(g) * STEPS + s;
      const __m512i w0 = _mm512_load_si512(codes + k4 * kPanel), w1 = _mm512_load_si512(codes + k4 * kPanel + 16);
      const int32_t* x = digits + k4 * kRows * kDigits;
      for (int r = 0; r < kRows; ++r)
        for (int digit = 0; digit < kDigits; ++digit) {
          dot4(acc[r][0][digit], w0, x + r * kDigits + digit);
          dot4(acc[r][1][digit], w1, x + r * kDigits + digit);
        }
    }
    const __m512 s[2] = {_mm512_load_ps(scale + g * kPanel), _mm512_load_ps(scale + g * kPanel + 16)};
    const __m512 b[2] = {_mm512_load_ps(bias + g * kPanel), _mm512_load_ps(bias + g * kPanel + 16)};
    for (int r = 0; r < kRows; ++r) {
      const __m512 sx = _mm512_set1_ps(xscale[g * kRows + r]), sum = _mm512_set1_ps(xsum[g * kRows + r]);
      for (int h = 0; h < 2; ++h) {
        const __m512i hm = _mm512_add_epi32(_mm512_slli_epi32(acc[r][h][0], 8), acc[r][h][1]);
        const __m512 dot = _mm512_fmadd_ps(_mm512_cvtepi32_ps(hm), _mm512_set1_ps(256.0f), _mm512_cvtepi32_ps(acc[r][h][2]));
        y[r][h] = _mm512_fmadd_ps(dot, _mm512_mul_ps(s[h], sx), y[r][h]);
        y[r][h] = _mm512_fmadd_ps(b[h], sum, y[r][h]);
      }
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int h = 0; h < 2; ++h) _mm512_store_ps(out + r * kPanel + h * 16, y[r][h]);
}

template <int STEPS>
void panels(const Quantized& q, const int32_t* digits, const float* xscale, const float* xsum, int M, int N, long p0,
            long p1, float* y) {
  const int K = q.K, G = K / q.group, blocks = (M + kRows - 1) / kRows;
  thread_local Scratch<uint32_t> code_buffer;
  thread_local Scratch<float> float_buffer;
  uint32_t* codes = code_buffer.get(static_cast<size_t>(K / 4) * kPanel);
  float* scale = float_buffer.get(2 * static_cast<size_t>(G) * kPanel + kRows * kPanel);
  float* bias = scale + static_cast<long>(G) * kPanel;
  float* out = bias + static_cast<long>(G) * kPanel;
  for (long p = p0; p < p1; ++p) {
    const int n0 = static_cast<int>(p) * kPanel;
    pack_panel(q, N, n0, codes, scale, bias);
    for (int blk = 0; blk < blocks; ++blk) {
      block<STEPS>(digits + static_cast<long>(blk) * (K / 4) * kRows * kDigits, xscale + static_cast<long>(blk) * G * kRows,
                   xsum + static_cast<long>(blk) * G * kRows, codes, scale, bias, G, out);
      store_block(out, std::min(kRows, M - blk * kRows), N - n0, y + static_cast<long>(blk) * kRows * N + n0, N);
    }
  }
}

}  // namespace

}  // namespace cpuk::vnni

namespace cpuk {

using namespace vnni;

void vnni_quantized_gemm(const Quantized& q, const float* x, int M, int N, float* y) {
  const int K = q.K, G = K / q.group, blocks = (M + kRows - 1) / kRows;
  thread_local Scratch<int32_t> digit_buffer;
  thread_local Scratch<float> sum_buffer;
  int32_t* digits = digit_buffer.get(static_cast<size_t>(blocks) * (K / 4) * kRows * kDigits);
  float* xscale = sum_buffer.get(2 * static_cast<size_t>(blocks) * G * kRows);
  float* xsum = xscale + static_cast<long>(blocks) * G * kRows;
  Pool& pool = Pool::get();
  pool.parallel_for(blocks, 8, [&](long b, long e) {
    for (long blk = b; blk < e; ++blk)
      pack_x(x, M, K, q.group, static_cast<int>(blk) * kRows, digits + blk * (K / 4) * kRows * kDigits,
             xscale + blk * G * kRows, xsum + blk * G * kRows);
  });
  const long count = (N + kPanel - 1) / kPanel;
  pool.parallel_for(count, 1, [&](long p0, long p1) {
    switch (q.group) {
      case 32: return panels<8>(q, digits, xscale, xsum, M, N, p0, p1, y);
      case 64: return panels<16>(q, digits, xscale, xsum, M, N, p0, p1, y);
      default: return panels<32>(q, digits, xscale, xsum, M, N, p0, p1, y);
    }
  });
}

}  // namespace cpuk
