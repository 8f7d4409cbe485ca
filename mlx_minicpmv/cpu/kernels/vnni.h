// What the VNNI GEMV (vnni.cpp) and GEMM (vnni_gemm.cpp) share: x as three signed 8-bit digits a
// value, scaled per group, x ≈ sx·(65536·h + 256·m + l). Compiled with those files' flags.

#pragma once

#include <immintrin.h>

#include <cmath>
#include <cstdint>

namespace cpuk::vnni {

// The largest |round(x / sx)|: three digits in [-128, 127] hold up to 127·65793 = 8355711, less
// a margin for x / sx rounding up.
constexpr float kDigitsMax = 8355000.0f;

// v = round(x / sx) in 16 lanes -> its digits h, m, l, 16 bytes each, at d, d + stride, d + 2·stride.
static inline void store_digits(__m512i v, int8_t* d, long stride) {
  for (int digit = 2; digit >= 0; --digit) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + digit * stride), _mm512_cvtepi32_epi8(v));  // the low byte
    const __m512i low = _mm512_srai_epi32(_mm512_slli_epi32(v, 24), 24);                     // as a signed digit
    v = _mm512_srai_epi32(_mm512_sub_epi32(v, low), 8);
  }
}

// A group's scale sx (its largest |x| over kDigitsMax) and sum; returns 1 / sx, 0 for a group of
// zeros. A NaN or inf in x (the sum has it, where max may drop a NaN) makes sx NaN, so that the
// group's products are NaN, and 1 / sx 0.
static inline float scale_group(const float* xg, int group, float& xscale, float& xsum) {
  __m512 most = _mm512_setzero_ps(), total = _mm512_setzero_ps();
  for (int k = 0; k < group; k += 16) {
    const __m512 a = _mm512_loadu_ps(xg + k);
    most = _mm512_max_ps(most, _mm512_abs_ps(a));
    total = _mm512_add_ps(total, a);
  }
  const float biggest = _mm512_reduce_max_ps(most);
  xsum = _mm512_reduce_add_ps(total);
  xscale = std::isfinite(xsum) ? biggest / kDigitsMax : NAN;
  return biggest > 0 && std::isfinite(xscale) ? kDigitsMax / biggest : 0.0f;
}

}  // namespace cpuk::vnni
