// The quantised GEMV in AVX-512 VNNI's integer dot products, where the CPU has them.
//
// The float GEMV (kernels_impl.h) widens every weight to a float lane before its FMA: at 4 bits
// three shuffles a vector of 16 weights, which bound a 4-bit decoded token's GEMVs at 15-18 GB/s
// on two cores, half the memory's rate. vpdpbusd multiplies 64 unsigned bytes by 64 signed
// bytes and adds them in fours into 16 int32 lanes in one op, so the weights stay bytes (at 4
// bits, one AND and one shift split 64 bytes into their 128 nibbles).
//
// x cannot be rounded to int8 as ggml does (8 bits of x; MLX's quantised matmul keeps x in fp32),
// so each value goes in as three signed 8-bit digits scaled per group: x ≈ sx·(65536·h + 256·m + l),
// 24 bits, fp32's own precision, and each digit's dot product is exact in int32: three dot
// products where one would do.

#include <immintrin.h>

#include "kernels.h"
#include "vnni.h"

namespace cpuk::vnni {

#include "avx512_vector.h"
#include "kernels_impl.h"

// The weights of a row in blocks of 64 bytes (128 values at 4 bits, 64 at 8). For each block x's
// digits are 64-byte vectors in the weights' byte order, h then m then l; at 4 bits each digit
// has two, the values of the low nibbles (x0, x2, .., x126) and of the high ones (x1, .., x127).
template <int BITS>
struct Layout {
  static constexpr int per_lane = BITS == 4 ? 8 : 4;  // values in each 4-byte lane of a block
  static constexpr int block = 16 * per_lane;
  static constexpr int halves = BITS == 4 ? 2 : 1;
  static constexpr int digit_stride = 64 * halves;  // from h to m to l
  static constexpr int bytes = 3 * digit_stride;     // a block's digits
};

template <int BITS>
void x_digits_t(const float* x, int K, int group, int8_t* digits, float* xscale, float* xsum) {
  using Lay = Layout<BITS>;
  const int blocks = (K + Lay::block - 1) / Lay::block;
  if (K % Lay::block) std::fill_n(digits + static_cast<long>(blocks - 1) * Lay::bytes, Lay::bytes, int8_t{0});
  const __m512i evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odds = _mm512_add_epi32(evens, _mm512_set1_epi32(1));
  for (int g = 0; g < K / group; ++g) {
    const float* xg = x + static_cast<long>(g) * group;
    const __m512 inv = _mm512_set1_ps(scale_group(xg, group, xscale[g], xsum[g]));
    for (int k = 0; k < group; k += 32) {  // 32 values at a time, within one block and group
      const int e = g * group + k;
      int8_t* d = digits + static_cast<long>(e / Lay::block) * Lay::bytes;
      const int in_block = e % Lay::block;
      const __m512 a = _mm512_loadu_ps(xg + k), b = _mm512_loadu_ps(xg + k + 16);
      if constexpr (BITS == 4) {
        store_digits(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_permutex2var_ps(a, evens, b), inv)), d + in_block / 2,
                     Lay::digit_stride);
        store_digits(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_permutex2var_ps(a, odds, b), inv)), d + 64 + in_block / 2,
                     Lay::digit_stride);
      } else {
        store_digits(_mm512_cvtps_epi32(_mm512_mul_ps(a, inv)), d + in_block, Lay::digit_stride);
        store_digits(_mm512_cvtps_epi32(_mm512_mul_ps(b, inv)), d + in_block + 16, Lay::digit_stride);
      }
    }
  }
}

void x_digits(const float* x, int K, int group, int bits, int8_t* digits, float* xscale, float* xsum) {
  bits == 4 ? x_digits_t<4>(x, K, group, digits, xscale, xsum) : x_digits_t<8>(x, K, group, digits, xscale, xsum);
}

// 16 of a row's scales or biases from group `first` (masked: groups past the row's end read as 0).
inline __m512 load_groups(const void* p, Float dtype, long first, __mmask16 m) {
  if (dtype == Float::f32) return _mm512_maskz_loadu_ps(m, static_cast<const float*>(p) + first);
  const __m256i h = _mm512_castsi512_si256(_mm512_maskz_loadu_epi16(m, static_cast<const uint16_t*>(p) + first));
  return dtype == Float::f16 ? V::widen_f16(h) : V::widen_bf16(h);
}

// R spread rows (spread_rows) against x's digits, 16 groups at a time: their scales times x's in
// one vector, from which each block's lanes take theirs by a permute in registers, and the
// biases' share (Σ_g bias·xsum[g]) added into the same total. Per block and row, the digits' dot
// products go into one int32 vector (h's shifted up before m's are added, then m's before l's).
// Why in registers: at K = 1024 a row is 8 blocks, and widening its groups through memory, as the
// float GEMV does, took as long as the blocks' dot products.
template <int BITS, int GROUP, int R>
void qgemv_rows(const Quantized& q, const int8_t* digits, const float* xscale, const float* xsum, const int* rows,
                float* y) {
  using Lay = Layout<BITS>;
  constexpr int chunk_blocks = 16 * GROUP / Lay::block;  // the blocks of 16 groups
  const int G = q.K / GROUP;
  const long row_bytes = static_cast<long>(q.K) * BITS / 8;
  const int blocks = static_cast<int>((q.K + Lay::block - 1) / Lay::block);
  // each lane's group, counted from the block's first (a group may span blocks: then all 0)
  const __m512i lane_group = _mm512_srli_epi32(
      _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                         _mm512_set1_epi32(Lay::per_lane)),
      __builtin_ctz(GROUP));
  const __m512i nibble = _mm512_set1_epi8(0x0f);
  const uint8_t* base[R];
  __m512 total[R];
  for (int r = 0; r < R; ++r) {
    base[r] = reinterpret_cast<const uint8_t*>(q.w) + rows[r] * row_bytes;
    total[r] = _mm512_setzero_ps();
  }
  const long scale_bytes = q.dtype == Float::f32 ? 4 : 2;
  for (int g0 = 0; g0 < G; g0 += 16) {
    const __mmask16 groups = G - g0 >= 16 ? __mmask16(0xffff) : __mmask16((1u << (G - g0)) - 1);
    const __m512 xs = _mm512_maskz_loadu_ps(groups, xscale + g0), xg = _mm512_maskz_loadu_ps(groups, xsum + g0);
    __m512 scale[R];
    for (int r = 0; r < R; ++r) {
      const long first = static_cast<long>(rows[r]) * G + g0;
      const long ahead = (first + kScaleRowsAhead * static_cast<long>(G)) * scale_bytes;
      V::prefetch(reinterpret_cast<const float*>(static_cast<const char*>(q.scales) + ahead));
      V::prefetch(reinterpret_cast<const float*>(static_cast<const char*>(q.biases) + ahead));
      scale[r] = _mm512_mul_ps(load_groups(q.scales, q.dtype, first, groups), xs);
      total[r] = _mm512_fmadd_ps(load_groups(q.biases, q.dtype, first, groups), xg, total[r]);
    }
    const int b0 = g0 * GROUP / Lay::block, b1 = std::min(blocks, b0 + chunk_blocks);
    for (int blk = b0; blk < b1; ++blk) {
      const int8_t* d = digits + static_cast<long>(blk) * Lay::bytes;
      const long at = static_cast<long>(blk) * 64;
      // the bytes of the row's last block, where the row ends inside it
      const int left = static_cast<int>(std::min<long>(64, row_bytes - at));
      const __mmask64 mask = left == 64 ? ~__mmask64{0} : (__mmask64{1} << left) - 1;
      const __m512i lanes = _mm512_add_epi32(lane_group, _mm512_set1_epi32((blk - b0) * Lay::block / GROUP));
      __m512i x[3 * Lay::halves];
      for (int i = 0; i < 3 * Lay::halves; ++i) x[i] = _mm512_loadu_si512(d + 64 * i);
      for (int r = 0; r < R; ++r) {
        const uint8_t* b = base[r] + at;
        prefetch_bytes<V>(b);
        const __m512i w = _mm512_maskz_loadu_epi8(mask, b);
        __m512 dot;
        if constexpr (BITS == 4) {
          const __m512i lo = _mm512_and_si512(w, nibble), hi = _mm512_and_si512(_mm512_srli_epi16(w, 4), nibble);
          __m512i acc = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, x[0]);
          acc = _mm512_dpbusd_epi32(acc, hi, x[1]);
          acc = _mm512_dpbusd_epi32(_mm512_slli_epi32(acc, 8), lo, x[2]);  // |acc| < 2^31: 8 products of 15·128, ·65536
          acc = _mm512_dpbusd_epi32(acc, hi, x[3]);
          acc = _mm512_dpbusd_epi32(_mm512_slli_epi32(acc, 8), lo, x[4]);
          dot = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(acc, hi, x[5]));
        } else {  // 4 products of 255·128 a lane: h·65536 would overflow int32, so l apart
          const __m512i hm = _mm512_dpbusd_epi32(_mm512_slli_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), w, x[0]), 8), w, x[1]);
          const __m512i l = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, x[2]);
          dot = _mm512_fmadd_ps(_mm512_cvtepi32_ps(hm), _mm512_set1_ps(256.0f), _mm512_cvtepi32_ps(l));
        }
        total[r] = _mm512_fmadd_ps(_mm512_permutexvar_ps(lanes, scale[r]), dot, total[r]);
      }
    }
  }
  for (int r = 0; r < R; ++r) y[rows[r]] = _mm512_reduce_add_ps(total[r]);
}

template <int BITS, int GROUP>
void qgemv_t(const Quantized& q, const int8_t* digits, const float* xscale, const float* xsum, int n0, int n1,
             float* y) {
  y -= n0;
  spread_rows<kSpread>(n0, n1, [&](const int* rows, auto r) {
    qgemv_rows<BITS, GROUP, decltype(r)::value>(q, digits, xscale, xsum, rows, y);
  });
}

template <int BITS>
void qgemv_bits(const Quantized& q, const int8_t* digits, const float* xscale, const float* xsum, int n0, int n1,
                float* y) {
  switch (q.group) {
    case 32: return qgemv_t<BITS, 32>(q, digits, xscale, xsum, n0, n1, y);
    case 64: return qgemv_t<BITS, 64>(q, digits, xscale, xsum, n0, n1, y);
    default: return qgemv_t<BITS, 128>(q, digits, xscale, xsum, n0, n1, y);
  }
}

void qgemv_digits(const Quantized& q, const int8_t* digits, const float* xscale, const float* xsum, int n0, int n1,
                  float* y) {
  q.bits == 8 ? qgemv_bits<8>(q, digits, xscale, xsum, n0, n1, y) : qgemv_bits<4>(q, digits, xscale, xsum, n0, n1, y);
}

}  // namespace cpuk::vnni

namespace cpuk {

const Isa& avx512vnni_isa() {
  static const Isa isa = [] {
    Isa vnni = avx512_isa();
    vnni.name = "avx512vnni";
    vnni.x_digits = vnni::x_digits;
    vnni.qgemv_digits = vnni::qgemv_digits;
    vnni.quantized_gemm = vnni_quantized_gemm;
    return vnni;
  }();
  return isa;
}

#ifdef CPUK_HAVE_AMX
const Isa& amx_isa() {
  static const Isa isa = [] {
    Isa amx = avx512vnni_isa();
    amx.name = "amx";
    amx.bf16_gemm = amx_bf16_gemm;
    amx.quantized_gemm = amx_quantized_gemm;
    return amx;
  }();
  return isa;
}
#endif

}  // namespace cpuk
