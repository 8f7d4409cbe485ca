// The portable kernels: plain C++ the compiler may vectorise for the baseline target; used
// where no faster set runs, and as the reference the others are tested against.

#include "kernels.h"

namespace cpuk::scalar {

struct V {
  using T = float;
  static constexpr int L = 1;
  static constexpr int regs = 16;  // vector registers
  static T zero() { return 0.0f; }
  static T bcast(float v) { return v; }
  static T load(const float* p) { return *p; }
  static void prefetch(const float* p) { __builtin_prefetch(p); }  // a hint: never faults, even past the end
  static void store(float* p, T v) { *p = v; }
  static T add(T a, T b) { return a + b; }
  static T mul(T a, T b) { return a * b; }
  static T sub(T a, T b) { return a - b; }
  static T div(T a, T b) { return a / b; }
  static T max(T a, T b) { return a > b ? a : b; }
  static T min(T a, T b) { return a < b ? a : b; }
  // v, or 0 where v < below (softmax's negligible probabilities, kernels_impl.h)
  static T flush(T v, float below) { return v < below ? 0.0f : v; }
  static float hmax(T v) { return v; }
  static T pow2n(T n) {  // 2^n from the bits of n + 1.5·2^23 (kernels_impl.h's exp_v)
    uint32_t bits;
    __builtin_memcpy(&bits, &n, 4);
    bits = (bits - (0x4B400000u - 127u)) << 23;
    float f;
    __builtin_memcpy(&f, &bits, 4);
    return f;
  }
  static T fma(T a, T b, T c) { return a * b + c; }
  static float hsum(T v) { return v; }
  static T u8(const uint8_t* p) { return static_cast<float>(*p); }
  static void nibbles(const uint8_t* p, T& lo, T& hi) {
    lo = static_cast<float>(*p & 15);
    hi = static_cast<float>(*p >> 4);
  }
  static T bf16(const uint16_t* p) { return bf16_to_f32(*p); }
  static T f16(const uint16_t* p) { return f16_to_f32(*p); }
};

#include "kernels_impl.h"

}  // namespace cpuk::scalar

namespace cpuk {
const Isa& scalar_isa() {
  static const Isa isa = scalar::make_isa<scalar::V>("scalar");
  return isa;
}
}  // namespace cpuk
