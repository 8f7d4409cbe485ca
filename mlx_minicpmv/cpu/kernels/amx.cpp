// y = x @ W.T for bf16 W on Intel AMX (Sapphire Rapids on), x and y float32, for the GEMM's
// many rows (prefill, the vision tower): the tile unit multiplies bf16 pairs into fp32 at ~16x
// the rate of AVX-512 FMAs, and reads W as stored (no widened tile, no sgemm).
//
// AMX takes bf16 on both sides, and x is float32: rounding it to bf16 would move every product
// by up to 2^-9, where MLX's bf16 matmul multiplies the widened weights by x in fp32. So x is
// split into three bf16 pieces, x = p0 + p1 + p2 with p0 = bf16(x), p1 = bf16(x - p0), p2 =
// bf16(x - p0 - p1), which hold all 24 bits of its significand, and W·p0 + W·p1 + W·p2 is
// accumulated in fp32; W's values are bf16, so each product is exact and only the order of the
// sums differs from sgemm's. Two pieces (16 bits) were 3e-6 from the fp32 product, and the
// tiny random test models amplified that to 1.5e-3 in their logits (their bound: 1e-3). Three
// pieces cost 1.5x the tile work of two.
//
// The weights are the tiles' A operand (16 rows of 32 k each, W's own layout), x the B operand
// (packed once per call into AMX's pair layout: row p of a tile holds x[m][2p], x[m][2p+1] for
// 16 rows m), so C tiles hold y transposed, 16 outputs by 16 rows, and are written back so.
//
// Quantised weights (MLX's affine format, 4 or 8 bits) go through the same tiles: their integer
// codes are exact in bf16, so the tiles hold the codes, each group's products are summed apart
// (C tiles zeroed per group), and y gathers Σ_g scale·(q·x) + bias·Σx per group in fp32, the
// GEMV's own formula (kernels_impl.h). Every product is again exact; dequantised weights split
// into bf16 halves were not (16 of their 24 bits: the tiny models' logits 2e-4 from MLX's).
//
// Why by hand: no BLAS here has a bf16 GEMM (kernels_impl.h); oneDNN's dnnl_gemm_bf16bf16f32
// and MKL's cblas_gemm_bf16bf16f32 would, but PyPI's oneDNN (2026.1) is a SYCL build that
// needs the DPC++ runtime and TBB (~400 MB of wheels, for one function) and MKL's wheel is
// ~200 MB under Intel's own licence; ggml's AMX code multiplies its own quantised blocks only.

#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "avx512_gemm.h"
#include "kernels.h"
#include "pool.h"
#include "scratch.h"

namespace cpuk {

namespace {

constexpr int kPieces = 3;         // bf16 pieces of x
constexpr int kRowsPerPass = 256;  // rows of x per pass
// A pass's packed x (3 pieces of its rows by a block of K) is read once per panel of W, so it
// must stay in L2 (2 MB a core here): at K = 3584 the whole row (5.5 MB) came from L3 and the
// GEMM ran at 2/3 the speed of K = 1024. So K is cut into blocks of at most this many bytes.
constexpr long kPassBytes = 1536 * 1024;
constexpr int kPanel = 32;         // weight rows per panel: two A tiles

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Eight tiles of 16 rows by 64 bytes: C (0-3, fp32 16 x 16), A (4, 5: 16 weight rows by 32 k),
// B (6, 7: 16 pairs of k by 16 rows of x).
void configure() {
  TileConfig c;
  for (int t = 0; t < 8; ++t) {
    c.colsb[t] = 64;
    c.rows[t] = 16;
  }
  _tile_loadconfig(&c);
}

inline __m512 widen(__m256bh h) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)h), 16));
}

// Rows [m0, m0 + rows) of x (row stride ld, K columns from x on; rows a multiple of 16) into its
// pieces, each (blocks of 16 rows, Kp/32 chunks, 16 pairs, 16 rows) as uint32 pairs; rows past
// M and k past K are zero. A row's 32 floats of a chunk round to 16 bf16 pairs in one vector, so
// a chunk of 16 rows is a 16 x 16 transpose of words (storing them one by one to their places,
// 64 bytes apart, took a GEMM at M = 512, K = 1024 ~1 ms before its first product).
void pack_x(const float* x, long ld, int M, int K, int Kp, int m0, int rows, uint32_t* const* pieces) {
  const int chunks = Kp / 32;
  for (int r0 = 0; r0 < rows; r0 += 16) {
    const long block = static_cast<long>(r0 / 16) * chunks * 256;
    for (int c = 0; c < chunks; ++c) {
      const int k = 32 * c, n = std::max(0, std::min(32, K - k));
      const __mmask16 lo = static_cast<__mmask16>(n >= 16 ? 0xFFFF : (1u << n) - 1);
      const __mmask16 hi = static_cast<__mmask16>(n >= 32 ? 0xFFFF : n > 16 ? (1u << (n - 16)) - 1 : 0);
      __m512i words[kPieces][16];
      for (int r = 0; r < 16; ++r) {
        __m512 a = _mm512_setzero_ps(), b = _mm512_setzero_ps();
        if (m0 + r0 + r < M) {
          const float* row = x + (m0 + r0 + r) * ld + k;
          a = _mm512_maskz_loadu_ps(lo, row);
          b = _mm512_maskz_loadu_ps(hi, row + 16);
        }
        for (int i = 0; i < kPieces; ++i) {  // each piece the rounding of what the ones before left
          const __m512bh p = _mm512_cvtne2ps_pbh(b, a);  // bf16 of a in the low half, of b in the high
          words[i][r] = (__m512i)p;
          a = _mm512_sub_ps(a, widen((__m256bh)_mm512_castsi512_si256((__m512i)p)));
          b = _mm512_sub_ps(b, widen((__m256bh)_mm512_extracti64x4_epi64((__m512i)p, 1)));
        }
      }
      for (int i = 0; i < kPieces; ++i) {
        __m512i t[16];
        transpose16(words[i], t);
        uint32_t* out = pieces[i] + block + c * 256;
        for (int p = 0; p < 16; ++p) _mm512_store_si512(out + 16 * p, t[p]);
      }
    }
  }
}

// Weight rows [n0, n0 + kPanel), columns [k0, k0 + kb), into panel (kPanel, Kp), zero past N
// and K.
void pack_panel(const uint16_t* w, int N, int K, int n0, int k0, int kb, int Kp, uint16_t* panel) {
  for (int r = 0; r < kPanel; ++r) {
    uint16_t* out = panel + static_cast<long>(r) * Kp;
    const int n = n0 + r;
    if (n < N) {
      std::memcpy(out, w + static_cast<long>(n) * K + k0, sizeof(uint16_t) * kb);
      std::fill(out + kb, out + Kp, 0);
    } else {
      std::fill(out, out + Kp, 0);
    }
  }
}

// C tiles 0-3 += A tiles 4, 5 (weight blocks) by B tiles 6, 7 (x blocks), each by each.
inline void four_products() {
  _tile_dpbf16ps(0, 4, 6);
  _tile_dpbf16ps(1, 4, 7);
  _tile_dpbf16ps(2, 5, 6);
  _tile_dpbf16ps(3, 5, 7);
}

// A quantised panel's groups: its rows' scales and biases ([kPanel][G], zero past N) and the
// pass's sums of x by group ([G][rows]). size 0: one group of all of K, no scales (bf16).
struct Groups {
  int size = 0;
  const float* scales = nullptr;
  const float* biases = nullptr;
  const float* xsum = nullptr;
};

// One panel of 32 weight rows by the packed rows of one pass, 32 rows of x at a time, each piece
// of x in turn against the same A tiles; with groups, each group's sums scaled into acc. The
// result is written to y, or added to it (accumulate: a later block of K).
void panel_times_pass(const uint16_t* panel, int Kp, uint32_t* const* pieces, int rows, int n0, int N, int m0, int M,
                      float* y, const Groups& groups, bool accumulate) {
  const int chunks = Kp / 32;
  const int per_group = groups.size ? groups.size / 32 : chunks, G = chunks / per_group;
  const long stride = static_cast<long>(Kp) * 2, block = static_cast<long>(chunks) * 256;
  alignas(64) float out[4][16][16];
  alignas(64) float acc[4][16][16];
  for (int b = 0; b < rows / 16; b += 2) {
    if (groups.size) std::memset(acc, 0, sizeof(acc));
    for (int g = 0; g < G; ++g) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int c = g * per_group; c < (g + 1) * per_group; ++c) {
        _tile_loadd(4, panel + c * 32, stride);
        _tile_loadd(5, panel + 16 * static_cast<long>(Kp) + c * 32, stride);
        for (int i = 0; i < kPieces; ++i) {
          const uint32_t* x0 = pieces[i] + b * block + c * 256;
          _tile_loadd(6, x0, 64);
          _tile_loadd(7, x0 + block, 64);
          four_products();
        }
      }
      _tile_stored(0, out[0], 64);
      _tile_stored(1, out[1], 64);
      _tile_stored(2, out[2], 64);
      _tile_stored(3, out[3], 64);
      if (!groups.size) break;
      for (int t = 0; t < 4; ++t) {  // acc[t][i] += scale·out[t][i] + bias·(x's sums over the group)
        const __m512 xs = _mm512_loadu_ps(groups.xsum + static_cast<long>(g) * rows + 16 * (b + t % 2));
        for (int i = 0; i < 16; ++i) {
          const long at = static_cast<long>(16 * (t / 2) + i) * G + g;
          __m512 a = _mm512_fmadd_ps(_mm512_set1_ps(groups.scales[at]), _mm512_load_ps(out[t][i]), _mm512_load_ps(acc[t][i]));
          _mm512_store_ps(acc[t][i], _mm512_fmadd_ps(_mm512_set1_ps(groups.biases[at]), xs, a));
        }
      }
    }
    const float(*result)[16][16] = groups.size ? acc : out;
    for (int t = 0; t < 4; ++t) {  // tile t: weight block t / 2, x block b + t % 2; result[t][i][j] = y[m j][n i]
      const int nb = n0 + 16 * (t / 2), mb = m0 + 16 * (b + t % 2);
      const int ni = std::min(16, N - nb), mj = std::min(16, M - mb);
      for (int j = 0; j < mj; ++j) {
        float* yr = y + static_cast<long>(mb + j) * N + nb;
        if (accumulate) {
          for (int i = 0; i < ni; ++i) yr[i] += result[t][i][j];
        } else {
          for (int i = 0; i < ni; ++i) yr[i] = result[t][i][j];
        }
      }
    }
  }
}

// Quantised rows [n0, n0 + kPanel), columns [k0, k0 + kb) (whole groups), into panel as bf16
// codes (natural k order, zero past N), and their scales and biases as float ([kPanel][kb /
// group], zero past N).
void pack_quantized_panel(const Quantized& q, int N, int n0, int k0, int kb, uint16_t* panel, float* scales,
                          float* biases) {
  const int K = kb, G = kb / q.group, g0 = k0 / q.group, row_groups = q.K / q.group;
  const long row_bytes = static_cast<long>(q.K) * q.bits / 8, block_bytes = static_cast<long>(kb) * q.bits / 8;
  const __m512i low = _mm512_set1_epi32(0xF), high_half = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  for (int r = 0; r < kPanel; ++r) {
    const int n = n0 + r;
    uint16_t* out = panel + static_cast<long>(r) * K;
    if (n >= N) {
      std::fill(out, out + K, 0);
      std::fill(scales + static_cast<long>(r) * G, scales + static_cast<long>(r + 1) * G, 0.0f);
      std::fill(biases + static_cast<long>(r) * G, biases + static_cast<long>(r + 1) * G, 0.0f);
      continue;
    }
    const uint8_t* bytes = reinterpret_cast<const uint8_t*>(q.w) + n * row_bytes + static_cast<long>(k0) * q.bits / 8;
    for (int i = 0; i < block_bytes; i += 16) {  // 16 bytes: 16 codes at 8 bits, 32 at 4 (K is a multiple of 32)
      const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes + i)));
      if (q.bits == 8) {  // a code's float has its 8 bits in the top half: that half is its bf16
        const __m512i f = _mm512_srli_epi32(_mm512_castps_si512(_mm512_cvtepi32_ps(b)), 16);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), _mm512_cvtepi32_epi16(f));
      } else {  // word j = (bf16 of the low nibble, k = 2j) | (bf16 of the high one, k = 2j + 1) << 16
        const __m512i lo = _mm512_castps_si512(_mm512_cvtepi32_ps(_mm512_and_si512(b, low)));
        const __m512i hi = _mm512_castps_si512(_mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4)));
        _mm512_storeu_si512(out + 2 * i, _mm512_or_si512(_mm512_srli_epi32(lo, 16), _mm512_and_si512(hi, high_half)));
      }
    }
    for (int g = 0; g < G; ++g) {
      scales[static_cast<long>(r) * G + g] = load_float(q.scales, q.dtype, static_cast<long>(n) * row_groups + g0 + g);
      biases[static_cast<long>(r) * G + g] = load_float(q.biases, q.dtype, static_cast<long>(n) * row_groups + g0 + g);
    }
  }
}

// y (M, N) = x (M, K) @ W.T by passes of kRowsPerPass rows of x and blocks of K (whole groups,
// kPassBytes of packed x at most): each pass's block of x packed into its pieces once, then the
// panels of W over the pool, each packed by pack(n0, k0, kb, Kp, panel, scales, biases) (the last
// two, [kPanel][kb / group] floats, for quantised panels only), later blocks added to y.
template <class Pack>
void gemm(int K, const float* x, int M, int N, float* y, int group, Pack pack) {
  const int panels = (N + kPanel - 1) / kPanel;
  thread_local Scratch<uint32_t> packed;
  thread_local Scratch<float> sums;
  for (int m0 = 0; m0 < M; m0 += kRowsPerPass) {
    const int rows = (std::min(kRowsPerPass, M - m0) + 31) / 32 * 32;
    // Blocks of K: a multiple of 128 (of 32 and every group size), as even as that allows.
    const long most = std::max<long>(128, kPassBytes / (kPieces * 2L * rows) / 128 * 128);
    const long blocks = (K + most - 1) / most;
    const int block = blocks == 1 ? K : static_cast<int>((K + blocks - 1) / blocks + 127) / 128 * 128;
    for (int k0 = 0; k0 < K; k0 += block) {
      const int kb = std::min(block, K - k0), Kp = (kb + 31) / 32 * 32, G = group ? kb / group : 0;
      const size_t words = static_cast<size_t>(rows) * Kp / 2;
      uint32_t* const base = packed.get(kPieces * words);
      uint32_t* pieces[kPieces];
      for (int i = 0; i < kPieces; ++i) pieces[i] = base + i * words;
      float* const xsum = sums.get(static_cast<size_t>(G) * rows);
      Pool::get().parallel_for(rows / 16, 1, [&](long b, long e) {
        uint32_t* at[kPieces];
        for (int i = 0; i < kPieces; ++i) at[i] = pieces[i] + b * (Kp / 32) * 256;
        pack_x(x + k0, K, M, kb, Kp, m0 + 16 * static_cast<int>(b), 16 * static_cast<int>(e - b), at);
        for (int r = 16 * static_cast<int>(b); r < 16 * static_cast<int>(e) && G; ++r) {  // x's sums by group, [G][rows]
          const float* row = x + static_cast<long>(m0 + r) * K + k0;
          for (int g = 0; g < G; ++g) {
            __m512 sum = _mm512_setzero_ps();  // groups are multiples of 16
            if (m0 + r < M) {
              for (int k = g * group; k < (g + 1) * group; k += 16) sum = _mm512_add_ps(sum, _mm512_loadu_ps(row + k));
            }
            xsum[static_cast<size_t>(g) * rows + r] = _mm512_reduce_add_ps(sum);
          }
        }
      });
      Pool::get().parallel_for(panels, 1, [&](long p0, long p1) {
        thread_local Scratch<uint16_t> panel_buffer;
        thread_local Scratch<float> scales;
        uint16_t* const panel = panel_buffer.get(static_cast<size_t>(kPanel) * Kp);
        float* panel_scales = scales.get(static_cast<size_t>(2 * kPanel) * G + 1);
        float* panel_biases = panel_scales + kPanel * G;
        const Groups groups{group, panel_scales, panel_biases, xsum};
        configure();
        for (long p = p0; p < p1; ++p) {
          pack(static_cast<int>(p) * kPanel, k0, kb, Kp, panel, panel_scales, panel_biases);
          panel_times_pass(panel, Kp, pieces, rows, static_cast<int>(p) * kPanel, N, m0, M, y, groups, k0 > 0);
        }
        _tile_release();
      });
    }
  }
}

}  // namespace

void amx_bf16_gemm(const uint16_t* w, int K, const float* x, int M, int N, float* y) {
  gemm(K, x, M, N, y, 0, [&](int n0, int k0, int kb, int Kp, uint16_t* panel, float*, float*) {
    pack_panel(w, N, K, n0, k0, kb, Kp, panel);
  });
}

void amx_quantized_gemm(const Quantized& q, const float* x, int M, int N, float* y) {
  gemm(q.K, x, M, N, y, q.group, [&](int n0, int k0, int kb, int, uint16_t* panel, float* scales, float* biases) {
    pack_quantized_panel(q, N, n0, k0, kb, panel, scales, biases);
  });
}

}  // namespace cpuk
