// The AVX-512F vector of kernels_impl.h (16 floats), included inside the namespace of each file
// compiled with AVX-512 flags: kernels_avx512.cpp, and vnni.cpp for the parts it shares.

struct V {
  using T = __m512;
  static constexpr int L = 16;
  static constexpr int regs = 32;  // vector registers
  static T zero() { return _mm512_setzero_ps(); }
  static T bcast(float v) { return _mm512_set1_ps(v); }
  static T load(const float* p) { return _mm512_loadu_ps(p); }
  static void prefetch(const float* p) { _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T0); }  // a hint: never faults, even past the end
  static void store(float* p, T v) { _mm512_storeu_ps(p, v); }
  static T add(T a, T b) { return _mm512_add_ps(a, b); }
  static T mul(T a, T b) { return _mm512_mul_ps(a, b); }
  static T sub(T a, T b) { return _mm512_sub_ps(a, b); }
  static T div(T a, T b) { return _mm512_div_ps(a, b); }
  static T max(T a, T b) { return _mm512_max_ps(a, b); }
  static T min(T a, T b) { return _mm512_min_ps(a, b); }
  // v, or 0 where v < below (softmax's negligible probabilities, kernels_impl.h)
  static T flush(T v, float below) { return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, _mm512_set1_ps(below), _CMP_GE_OQ), v); }
  static float hmax(T v) { return _mm512_reduce_max_ps(v); }
  static T pow2n(T n) {  // 2^n from the bits of n + 1.5·2^23 (kernels_impl.h's exp_v)
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_sub_epi32(_mm512_castps_si512(n), _mm512_set1_epi32(0x4B400000 - 127)), 23));
  }
  static T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static float hsum(T v) { return _mm512_reduce_add_ps(v); }
  static __m128i bytes(const uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }
  static T widen_bytes(__m128i b) { return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b)); }
  static T u8(const uint8_t* p) { return widen_bytes(bytes(p)); }
  // Each byte in a lane of its own, and each nibble's float looked up: vpermps reads the low four
  // bits of a lane as the index, so no mask and no int-to-float conversion (a layer's 4-bit GEMVs
  // 0.82 -> 0.75 ms, medians of four runs each, alternated).
  static void nibbles(const uint8_t* p, T& lo, T& hi) {
    const __m512i b = _mm512_cvtepu8_epi32(bytes(p));
    const __m512 values = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    lo = _mm512_permutexvar_ps(b, values);
    hi = _mm512_permutexvar_ps(_mm512_srli_epi32(b, 4), values);
  }
  // 16 bf16 or fp16 values as floats, from memory or from a register (vnni.cpp's masked loads)
  static T widen_bf16(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
  static T widen_f16(__m256i h) { return _mm512_cvtph_ps(h); }
  static T bf16(const uint16_t* p) { return widen_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static T f16(const uint16_t* p) { return widen_f16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
};
