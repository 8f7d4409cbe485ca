// AVX2 + FMA + F16C: 8 floats a vector. Compiled with those flags (CMakeLists.txt) and run
// only where dispatch.cpp found them.

#include <immintrin.h>

#include "kernels.h"

namespace cpuk::avx2 {

struct V {
  using T = __m256;
  static constexpr int L = 8;
  static constexpr int regs = 16;  // vector registers
  static T zero() { return _mm256_setzero_ps(); }
  static T bcast(float v) { return _mm256_set1_ps(v); }
  static T load(const float* p) { return _mm256_loadu_ps(p); }
  static void prefetch(const float* p) { _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T0); }  // a hint: never faults, even past the end
  static void store(float* p, T v) { _mm256_storeu_ps(p, v); }
  static T add(T a, T b) { return _mm256_add_ps(a, b); }
  static T mul(T a, T b) { return _mm256_mul_ps(a, b); }
  static T sub(T a, T b) { return _mm256_sub_ps(a, b); }
  static T div(T a, T b) { return _mm256_div_ps(a, b); }
  static T max(T a, T b) { return _mm256_max_ps(a, b); }
  static T min(T a, T b) { return _mm256_min_ps(a, b); }
  // v, or 0 where v < below (softmax's negligible probabilities, kernels_impl.h)
  static T flush(T v, float below) { return _mm256_and_ps(v, _mm256_cmp_ps(v, _mm256_set1_ps(below), _CMP_GE_OQ)); }
  static float hmax(T v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
  }
  static T pow2n(T n) {  // 2^n from the bits of n + 1.5·2^23 (kernels_impl.h's exp_v)
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_sub_epi32(_mm256_castps_si256(n), _mm256_set1_epi32(0x4B400000 - 127)), 23));
  }
  static T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static float hsum(T v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }
  static __m128i bytes(const uint8_t* p) { return _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)); }
  static T widen_bytes(__m128i b) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b)); }
  static T u8(const uint8_t* p) { return widen_bytes(bytes(p)); }
  static void nibbles(const uint8_t* p, T& lo, T& hi) {  // each byte in a lane of its own: no mask for >> 4
    const __m256i b = _mm256_cvtepu8_epi32(bytes(p));
    lo = _mm256_cvtepi32_ps(_mm256_and_si256(b, _mm256_set1_epi32(15)));
    hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4));
  }
  static T bf16(const uint16_t* p) {
    __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
  }
  static T f16(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
};

#include "kernels_impl.h"

}  // namespace cpuk::avx2

namespace cpuk {
const Isa& avx2_isa() {
  static const Isa isa = avx2::make_isa<avx2::V>("avx2");
  return isa;
}
}  // namespace cpuk
