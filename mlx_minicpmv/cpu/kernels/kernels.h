// The per-instruction-set kernels behind matmul.cpp: each reads the stored weights (MLX's
// affine quantisation, or bf16/fp16) and never holds more of them in fp32 than one tile.
//
// kernels_impl.h holds one body of each kernel, written over a small vector abstraction;
// kernels_{scalar,avx2,avx512}.cpp compile it for one instruction set each, and dispatch.cpp
// picks one at run time from what the CPU has.

#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace cpuk {

enum class Float : int { f32 = 0, bf16 = 1, f16 = 2 };  // the stored dtype of half weights and of scales

// One (N, K) weight matrix in MLX's affine format: row n, group g is scale·q + bias, the
// q packed little-end first into uint32 words (8 per word at 4 bits, 4 at 8 bits).
struct Quantized {
  const uint32_t* w;
  const void* scales;  // (N, K / group)
  const void* biases;
  Float dtype;  // of scales and biases
  int K, group, bits;
};

enum class Act : int { gelu_tanh = 0, swiglu = 1, silu = 2, sigmoid = 3 };  // activation(): b only for swiglu

struct Isa {
  const char* name;
  // At 4 bits the kernels read x in the nibble order of their vectors: in blocks of
  // nibble_block = 2·L values, (x0, x2, .., x_{2L-2}, x1, x3, .., x_{2L-1}), the order in which
  // L packed bytes widen to a vector of low nibbles and one of high nibbles (matmul.cpp's
  // permute_nibble_order). At 8 bits x is read as it is.
  int nibble_block;
  // y[n - n0] = Σ_g scale[n,g]·(xp · q[n,g]) + bias[n,g]·xsum[g] for n in [n0, n1); xsum
  // holds the sums of x by group.
  void (*qgemv)(const Quantized& q, const float* xp, const float* xsum, int n0, int n1, float* y);
  // rows [n0, n1) dequantised into tile (n1 - n0, K), fp32, in xp's k order (a GEMM against
  // the tile takes x permuted the same way, so no interleaving is needed here).
  void (*qdequant)(const Quantized& q, int n0, int n1, float* tile);
  // y[n - n0] = x · w[n] for half weights w (N, K).
  void (*hgemv)(const uint16_t* w, Float dtype, int K, const float* x, int n0, int n1, float* y);
  // rows [n0, n1) of w widened into tile (n1 - n0, K).
  void (*hwiden)(const uint16_t* w, Float dtype, int K, int n0, int n1, float* tile);
  // y[m·ldy + n - n0] = x[m] · w[n] for fp32 weights w (N, K), the M (1..kMaxRows) rows of x
  // (M, K) together, so that each weight is read once for all of them (a batch's decode step).
  void (*fgemv)(const float* w, int K, const float* x, int M, int n0, int n1, float* y, long ldy);
  // One decoded token of the gated delta rule for one (sequence, head): the state s_in (Dv, Dk)
  // decayed by g and updated with k, v and beta into s_out, and y (Dv) = s_out · q.
  void (*delta_step)(const float* s_in, const float* q, const float* k, const float* v, float g, float beta, int Dv,
                     int Dk, float* s_out, float* y);
  // Rows [r0, r1) of x (rows, S) -> their softmax in y, with fast_math.py's exp.
  void (*softmax)(const float* x, int S, long r0, long r1, float* y);
  // The max of x[0, n) and Σ e^(x - max) with fast_math.py's exp, a part of a row's logsumexp
  // (softmax.cpp); *nan where x holds a NaN (max drops them).
  void (*max_sum_exp)(const float* x, long n, float* top, float* sum, bool* nan);
  // y[i] = act(a[i], b[i]) for i in [i0, i1), with fast_math.py's exp; b nullptr for one input.
  void (*activation)(Act act, const float* a, const float* b, long i0, long i1, float* y);
  // One output row of a depthwise causal conv with its SiLU: y[c] = silu(Σ_k w[k·C + c]·rows[k][c])
  // for c in [0, C), the K taps summed in order (conv.cpp).
  void (*conv_silu)(const float* const* rows, const float* w, int K, int C, float* y);
  // Rows [r0, r1) of x (rows, D) -> LayerNorm (rms false) or RMSNorm (rms true) with weight w
  // and bias b (D floats each, or nullptr).
  void (*norm)(const float* x, const float* w, const float* b, float eps, bool rms, int D, long r0, long r1, float* y);
  // One head of a decoded token's attention over S cached positions: probs[s] = softmax of
  // scale·(q · k_s), with k_s the D floats at keys + s·key_stride, then o (D) = Σ_s probs[s]·v_s,
  // v_s at values + s·value_stride.
  void (*attend)(const float* q, const float* keys, long key_stride, const float* values, long value_stride, int S,
                 int D, float scale, float* probs, float* o);
  // y (M, N) = x (M, K) @ w.T for bf16 weights w (N, K), many rows at once; nullptr where the
  // set has none (the GEMM then widens tiles of w for sgemm).
  void (*bf16_gemm)(const uint16_t* w, int K, const float* x, int M, int N, float* y) = nullptr;
  // The same for bf16 or fp16 weights in the set's FMAs, where there is no bf16_gemm (or for
  // fp16); nullptr where the set has none (the GEMM then widens tiles of w for sgemm).
  void (*half_gemm)(const uint16_t* w, Float dtype, int K, const float* x, int M, int N, float* y) = nullptr;
  // y (M, N) = x (M, K; not in the nibble order) @ dequantised W.T, many rows at once; nullptr where
  // the set has none (the GEMM then dequantises tiles of W for sgemm).
  void (*quantized_gemm)(const Quantized& q, const float* x, int M, int N, float* y) = nullptr;
  // Where the CPU has AVX-512 VNNI (vnni.cpp; nullptr elsewhere), the quantised GEMV in integer dot
  // products: x_digits turns a row of x (K values, as they are) into digit_bytes(K, bits) bytes of
  // digits, K / group scales and the K / group sums of x, once for all threads; qgemv_digits is
  // then qgemv, x read as those.
  void (*x_digits)(const float* x, int K, int group, int bits, int8_t* digits, float* xscale, float* xsum) = nullptr;
  void (*qgemv_digits)(const Quantized& q, const int8_t* digits, const float* xscale, const float* xsum, int n0,
                       int n1, float* y) = nullptr;
};

// Bytes of x_digits' output for a row of K values: three for each value, in whole 64-byte blocks
// of weights (128 values at 4 bits, 64 at 8).
inline long digit_bytes(int K, int bits) {
  const int block = bits == 4 ? 128 : 64;
  return static_cast<long>((K + block - 1) / block) * block * 3;
}

constexpr int kMaxRows = 8;  // the most rows of x fgemv takes at once

const Isa& scalar_isa();
const Isa& avx2_isa();
const Isa& avx512_isa();
const Isa& avx512vnni_isa();  // AVX-512 with the VNNI quantised GEMV (vnni.cpp), where the compiler has VNNI
const Isa& amx_isa();  // that with the AMX GEMMs (amx.cpp), where the compiler has AMX
void amx_bf16_gemm(const uint16_t* w, int K, const float* x, int M, int N, float* y);
void amx_quantized_gemm(const Quantized& q, const float* x, int M, int N, float* y);
void vnni_quantized_gemm(const Quantized& q, const float* x, int M, int N, float* y);  // vnni_gemm.cpp
void avx512_half_gemm(const uint16_t* w, Float dtype, int K, const float* x, int M, int N, float* y);  // half_gemm.cpp

// The instruction sets this CPU (and its OS) can run, best first ("scalar" always last), and the first.
std::vector<const char*> runnable_isas();
const Isa* best_isa();
const Isa* isa_named(const char* name);  // nullptr where unknown or not runnable here

static inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}

static inline float f16_to_f32(uint16_t h) {
  // IEEE half -> float without F16C (the scalar path): exact, subnormals included.
  uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ffu, bits;
  if (exp == 0) {
    float f = static_cast<float>(man) * (1.0f / 16777216.0f);  // man · 2^-24
    return sign ? -f : f;
  }
  bits = sign | (exp == 0x1f ? 0x7f800000u : (exp + 112) << 23) | (man << 13);
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}

static inline float load_float(const void* p, Float dtype, long i) {
  switch (dtype) {
    case Float::bf16: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case Float::f16: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

}  // namespace cpuk
