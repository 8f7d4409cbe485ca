// What the AVX-512 GEMMs (amx.cpp, half_gemm.cpp, vnni_gemm.cpp) share, static so that each file
// keeps the copy compiled with its own flags (AVX-512F at least).

#pragma once

#include <immintrin.h>

namespace cpuk {

// The 16 x 16 transpose of 32-bit words: out[p] holds word p of every row, in[r] (unpacks of
// pairs, then of quads, then 128-bit lanes twice).
static inline void transpose16(const __m512i* in, __m512i* out) {
  __m512i a[16], b[16];
  for (int i = 0; i < 16; i += 2) {
    a[i] = _mm512_unpacklo_epi32(in[i], in[i + 1]);
    a[i + 1] = _mm512_unpackhi_epi32(in[i], in[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    b[i] = _mm512_unpacklo_epi64(a[i], a[i + 2]);
    b[i + 1] = _mm512_unpackhi_epi64(a[i], a[i + 2]);
    b[i + 2] = _mm512_unpacklo_epi64(a[i + 1], a[i + 3]);
    b[i + 3] = _mm512_unpackhi_epi64(a[i + 1], a[i + 3]);
  }
  for (int i = 0; i < 4; ++i) {  // 128-bit lane l of b[4j + i] holds words 4l + i.. of rows 4j..4j + 3
    a[i] = _mm512_shuffle_i32x4(b[i], b[i + 4], 0x88);
    a[i + 4] = _mm512_shuffle_i32x4(b[i], b[i + 4], 0xDD);
    a[i + 8] = _mm512_shuffle_i32x4(b[i + 8], b[i + 12], 0x88);
    a[i + 12] = _mm512_shuffle_i32x4(b[i + 8], b[i + 12], 0xDD);
  }
  for (int i = 0; i < 4; ++i) {
    out[i] = _mm512_shuffle_i32x4(a[i], a[i + 8], 0x88);
    out[i + 8] = _mm512_shuffle_i32x4(a[i], a[i + 8], 0xDD);
    out[i + 4] = _mm512_shuffle_i32x4(a[i + 4], a[i + 12], 0x88);
    out[i + 12] = _mm512_shuffle_i32x4(a[i + 4], a[i + 12], 0xDD);
  }
}

// A block of `rows` rows of y by a panel of 32 outputs, from out[row][32] into y (row stride ldy):
// the lanes past the panel's `width` left out.
static inline void store_block(const float* out, int rows, int width, float* y, long ldy) {
  const __mmask16 lo = static_cast<__mmask16>(width >= 16 ? 0xffff : (1u << width) - 1);
  const __mmask16 hi = static_cast<__mmask16>(width >= 32 ? 0xffff : width > 16 ? (1u << (width - 16)) - 1 : 0);
  for (int r = 0; r < rows; ++r) {
    _mm512_mask_storeu_ps(y + r * ldy, lo, _mm512_load_ps(out + r * 32));
    _mm512_mask_storeu_ps(y + r * ldy + 16, hi, _mm512_load_ps(out + r * 32 + 16));
  }
}

}  // namespace cpuk
