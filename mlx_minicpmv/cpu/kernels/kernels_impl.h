// One body of each kernel, over a vector type V (kernels_{scalar,avx2,avx512}.cpp): V::T holds
// V::L floats; V::u8 widens V::L bytes to floats, V::nibbles the low and the high nibbles of
// V::L bytes (one widening for both), V::bf16 / V::f16 V::L halves. Included once per instruction set, inside a namespace
// of its own, so each copy is compiled with its own target flags (kernels.h first).
//
// Why by hand: MLX's CPU quantised matmul dequantises element by element (0.35 GFLOP/s,
// measured), its bf16 matmul converts whole matrices per call, the OpenBLAS wheel exports no
// sbgemm or sbgemv (nm of cmeel-openblas 0.3.31: only the sbgemm_p/q/r tuning symbols), and
// ggml's CPU kernels read ggml's own block formats (Q8_0, Q4_K), not MLX's scale + bias per
// group, and quantise the activations to int8 first, which would break the 1e-4 agreement
// with MLX's own quantised matmul that keeps activations in float. So the weights are widened
// here, in registers (GEMV) or one tile at a time (GEMM, then OpenBLAS's sgemm), and every
// product and sum is fp32 as in MLX. (Where the CPU has VNNI, vnni.cpp's GEMV takes x as three
// int8 digits, 24 bits, and replaces qgemv, and vnni_gemm.cpp the quantised tiles.)

#pragma once

// GEMVs read R weight rows at once, each from its own R-th of the caller's range: a core's
// reads then form R streams far apart, which its prefetchers serve in parallel, where the next
// rows of one stream (R adjacent rows) are one stream. A 2 KB prefetch ahead in each, and the x
// vector loaded once for the R rows. Measured on 0.5 GB of bf16 rows on 2 cores: one row at a
// time 16.3 GB/s, 4 adjacent rows 18.7, 4 spread rows 26.0 (a plain read of it: 24-27 GB/s).
constexpr int kSpread = 4;
constexpr long kPrefetchBytes = 2048;

template <class V>
inline void prefetch_bytes(const void* p) {
  V::prefetch(reinterpret_cast<const float*>(static_cast<const char*>(p) + kPrefetchBytes));
}

// Rows [n0, n1) by f(first rows of R spread rows, R) then f(row, 1) for the rest; f takes the
// R row indices.
template <int R, class F>
void spread_rows(int n0, int n1, F&& f) {
  const int per = (n1 - n0) / R;
  int rows[R];
  for (int i = 0; i < per; ++i) {
    for (int r = 0; r < R; ++r) rows[r] = n0 + r * per + i;
    f(rows, std::integral_constant<int, R>{});
  }
  for (int n = n0 + R * per; n < n1; ++n) f(&n, std::integral_constant<int, 1>{});
}

// n of row `first`'s scales or biases as floats from index first, L at a time where the dtype
// allows (a scalar conversion per group was a third of a 4-bit GEMV's work: a group of 64 is
// two vector steps there).
template <class V>
[[gnu::always_inline]] inline void widen_groups(const void* p, Float dtype, long first, int n, float* out) {
  int g = 0;
  if (dtype == Float::bf16) {
    for (; g + V::L <= n; g += V::L) V::store(out + g, V::bf16(static_cast<const uint16_t*>(p) + first + g));
  } else if (dtype == Float::f16) {
    for (; g + V::L <= n; g += V::L) V::store(out + g, V::f16(static_cast<const uint16_t*>(p) + first + g));
  }
  for (; g < n; ++g) out[g] = load_float(p, dtype, first + g);
}

constexpr int kGroupBlock = 128;  // groups whose scales and biases are widened at once

// Rows ahead whose scales and biases widen_row_groups fetches: next to the weights' streams a
// GEMV's spread rows read theirs 32 bytes a row, which the hardware prefetcher did not keep up
// with at K = 1024 (the loads of this widening were 11% of a 4-bit decoded token, stalled; 8 rows
// ahead, a token 27.5 -> 26.1 ms, A/B alternated).
constexpr int kScaleRowsAhead = 8;

// Groups [g0, g0 + n) of row `row`'s scales and biases widened into scales and biases, and the
// biases' share of its product, Σ_g bias·xsum[g], added into bias_total (and bias_tail).
// Inlined by force: GCC 12 made it a call, whose vzeroupper and spills came once a row, and at
// K = 1024 a row is only 16 groups.
template <class V>
[[gnu::always_inline]] inline void widen_row_groups(const Quantized& q, long row, int g0, int n, const float* xsum,
                                                   float* scales, float* biases, typename V::T& bias_total,
                                                   float& bias_tail) {
  const long first = row * (q.K / q.group) + g0;
  const long ahead = (first + kScaleRowsAhead * static_cast<long>(q.K / q.group)) * (q.dtype == Float::f32 ? 4 : 2);
  V::prefetch(reinterpret_cast<const float*>(static_cast<const char*>(q.scales) + ahead));
  V::prefetch(reinterpret_cast<const float*>(static_cast<const char*>(q.biases) + ahead));
  widen_groups<V>(q.scales, q.dtype, first, n, scales);
  widen_groups<V>(q.biases, q.dtype, first, n, biases);
  int g = 0;
  for (; g + V::L <= n; g += V::L) bias_total = V::fma(V::load(biases + g), V::load(xsum + g0 + g), bias_total);
  for (; g < n; ++g) bias_tail += biases[g] * xsum[g0 + g];
}

// R spread rows (spread_rows) of quantised weights against x: per group, R sums of
// q·x (the R rows are the independent FMA chains), each scaled into its row's total; the
// biases' share, Σ_g bias·xsum[g], as one dot product a block of groups.
template <class V, int BITS, int GROUP, int R>
void qgemv_rows(const Quantized& q, const float* xp, const float* xsum, const int* rows, float* y) {
  using T = typename V::T;
  constexpr int L = V::L;
  const int G = q.K / GROUP;
  const long row_bytes = static_cast<long>(q.K) * BITS / 8;
  const uint8_t* base[R];
  T total[R], bias_total[R];
  float scales[R][kGroupBlock], biases[R][kGroupBlock];
  for (int r = 0; r < R; ++r) {
    base[r] = reinterpret_cast<const uint8_t*>(q.w) + rows[r] * row_bytes;
    total[r] = V::zero();
    bias_total[r] = V::zero();
  }
  float bias_tail[R] = {};
  for (int g0 = 0; g0 < G; g0 += kGroupBlock) {
    const int n = std::min(kGroupBlock, G - g0);
    for (int r = 0; r < R; ++r) widen_row_groups<V>(q, rows[r], g0, n, xsum, scales[r], biases[r], bias_total[r], bias_tail[r]);
    for (int g = g0; g < g0 + n; ++g) {
      const float* x = xp + g * GROUP;
      const long at = static_cast<long>(g) * (GROUP * BITS / 8);
      T acc[R];
      for (int r = 0; r < R; ++r) acc[r] = V::zero();
      if constexpr (BITS == 8) {
        for (int k = 0; k < GROUP; k += L) {
          const T xk = V::load(x + k);
          for (int r = 0; r < R; ++r) {
            const uint8_t* b = base[r] + at + k;
            if ((at + k) % 64 == 0) prefetch_bytes<V>(b);
            acc[r] = V::fma(V::u8(b), xk, acc[r]);
          }
        }
      } else {  // L bytes hold 2L values: the low nibbles the even ones, the high nibbles the odd ones
        for (int i = 0; i < GROUP / 2; i += L) {
          const T x0 = V::load(x + 2 * i), x1 = V::load(x + 2 * i + L);
          for (int r = 0; r < R; ++r) {
            const uint8_t* b = base[r] + at + i;
            if ((at + i) % 64 == 0) prefetch_bytes<V>(b);
            T lo, hi;
            V::nibbles(b, lo, hi);
            acc[r] = V::fma(hi, x1, V::fma(lo, x0, acc[r]));
          }
        }
      }
      for (int r = 0; r < R; ++r) total[r] = V::fma(V::bcast(scales[r][g - g0]), acc[r], total[r]);
    }
  }
  for (int r = 0; r < R; ++r) y[rows[r]] = V::hsum(total[r]) + (V::hsum(bias_total[r]) + bias_tail[r]);
}

template <class V, int BITS, int GROUP>
void qgemv_t(const Quantized& q, const float* xp, const float* xsum, int n0, int n1, float* y) {
  y -= n0;
  spread_rows<kSpread>(n0, n1, [&](const int* rows, auto r) {
    qgemv_rows<V, BITS, GROUP, decltype(r)::value>(q, xp, xsum, rows, y);
  });
}

template <class V, int BITS, int GROUP>
void qdequant_t(const Quantized& q, int n0, int n1, float* tile) {
  using T = typename V::T;
  constexpr int L = V::L;
  const int G = q.K / GROUP;
  const long row_bytes = static_cast<long>(q.K) * BITS / 8;
  for (int n = n0; n < n1; ++n) {
    const uint8_t* row = reinterpret_cast<const uint8_t*>(q.w) + n * row_bytes;
    float* out = tile + static_cast<long>(n - n0) * q.K;
    for (int g = 0; g < G; ++g) {
      const long i = static_cast<long>(n) * G + g;
      const T s = V::bcast(load_float(q.scales, q.dtype, i)), c = V::bcast(load_float(q.biases, q.dtype, i));
      const uint8_t* b = row + g * (GROUP * BITS / 8);
      float* o = out + g * GROUP;
      if constexpr (BITS == 8) {
        for (int k = 0; k < GROUP; k += L) V::store(o + k, V::fma(V::u8(b + k), s, c));
      } else {
        for (int i = 0; i < GROUP / 2; i += L) {
          T lo, hi;
          V::nibbles(b + i, lo, hi);
          V::store(o + 2 * i, V::fma(lo, s, c));
          V::store(o + 2 * i + L, V::fma(hi, s, c));
        }
      }
    }
  }
}

template <class V, bool BF16>
inline typename V::T widen(const uint16_t* p) {
  if constexpr (BF16) return V::bf16(p); else return V::f16(p);
}

template <class V, bool BF16, int R>
void hgemv_rows(const uint16_t* w, int K, const float* x, const int* rows, float* y) {
  using T = typename V::T;
  constexpr int L = V::L;
  const int body = K / L * L;
  const uint16_t* p[R];
  T acc[R];
  for (int r = 0; r < R; ++r) {
    p[r] = w + static_cast<long>(rows[r]) * K;
    acc[r] = V::zero();
  }
  for (int k = 0; k < body; k += L) {
    const T xk = V::load(x + k);
    for (int r = 0; r < R; ++r) {
      if (k % 32 == 0) prefetch_bytes<V>(p[r] + k);  // once per 64-byte line
      acc[r] = V::fma(widen<V, BF16>(p[r] + k), xk, acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    float sum = V::hsum(acc[r]);
    for (int k = body; k < K; ++k) sum += (BF16 ? bf16_to_f32(p[r][k]) : f16_to_f32(p[r][k])) * x[k];
    y[rows[r]] = sum;
  }
}

template <class V, bool BF16>
void hgemv_t(const uint16_t* w, int K, const float* x, int n0, int n1, float* y) {
  y -= n0;
  spread_rows<kSpread>(n0, n1, [&](const int* rows, auto r) { hgemv_rows<V, BF16, decltype(r)::value>(w, K, x, rows, y); });
}

template <class V, bool BF16>
void hwiden_t(const uint16_t* w, int K, int n0, int n1, float* tile) {
  constexpr int L = V::L;
  const int body = K / L * L;
  for (int n = n0; n < n1; ++n) {
    const uint16_t* row = w + static_cast<long>(n) * K;
    float* out = tile + static_cast<long>(n - n0) * K;
    for (int k = 0; k < body; k += L) V::store(out + k, widen<V, BF16>(row + k));
    for (int k = body; k < K; ++k) out[k] = BF16 ? bf16_to_f32(row[k]) : f16_to_f32(row[k]);
  }
}

// R weight rows by the M rows of x at once, R·M accumulators in registers: each weight vector
// is loaded once for the M rows of x, each x vector once for the R weight rows, so the loads
// per FMA fall from (M + 1) / M to 1/R + 1/M. R weight streams at once, and a prefetch a row
// ahead in each (4 KB at K = 1024: a page, where the hardware prefetcher stops), keep more of
// memory's bandwidth busy than one stream. One pass over 0.8 GB of fp32 weights shaped like the
// small serve.py model, AVX-512 on the 2-core CI machine at a load of 5 (a standalone loop, best
// of 3): one weight row at a time 65 / 95 / 112 ms for M = 1 / 4 / 8, blocked 56 / 69 / 88 ms.
// The x rows (M·K floats, 32 KB at M = 8, K = 1024) stay in L1/L2 while the weights stream by.
constexpr int kPrefetch = 1024;

template <class V, int M, int R>
void fgemv_block(const float* w, int K, const float* x, int n, float* y, long ldy) {
  using T = typename V::T;
  constexpr int L = V::L;
  const int body = K / L * L;
  const float* row = w + static_cast<long>(n) * K;
  T acc[R][M];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) acc[r][m] = V::zero();
  for (int k = 0; k < body; k += L) {
    T wk[R];
    for (int r = 0; r < R; ++r) {
      if (k % 16 == 0) V::prefetch(row + static_cast<long>(r) * K + k + kPrefetch);  // once per 64-byte line
      wk[r] = V::load(row + static_cast<long>(r) * K + k);
    }
    for (int m = 0; m < M; ++m) {
      const T xm = V::load(x + static_cast<long>(m) * K + k);
      for (int r = 0; r < R; ++r) acc[r][m] = V::fma(wk[r], xm, acc[r][m]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int m = 0; m < M; ++m) {
      float sum = V::hsum(acc[r][m]);
      for (int k = body; k < K; ++k) sum += row[static_cast<long>(r) * K + k] * x[static_cast<long>(m) * K + k];
      y[m * ldy + n + r] = sum;
    }
  }
}

// The most weight rows a block takes with M rows of x: R·M accumulators, R weight vectors and
// one x vector within the V::regs vector registers (32 with AVX-512, 16 with AVX2), at most 4.
template <class V, int M>
constexpr int block_rows() {
  int r = 4;
  while (r > 1 && r * M + r + 1 > V::regs) --r;
  return r;
}

// y[m·ldy + n - n0] = x[m] · w[n] for n in [n0, n1): blocks of R weight rows, then one at a time.
template <class V, int M>
void fgemv_t(const float* w, int K, const float* x, int n0, int n1, float* y, long ldy) {
  constexpr int R = block_rows<V, M>();
  y -= n0;
  int n = n0;
  for (; n + R <= n1; n += R) fgemv_block<V, M, R>(w, K, x, n, y, ldy);
  for (; n < n1; ++n) fgemv_block<V, M, 1>(w, K, x, n, y, ldy);
}

template <class V>
void fgemv_rows(const float* w, int K, const float* x, int M, int n0, int n1, float* y, long ldy) {
  switch (M) {
    case 1: return fgemv_t<V, 1>(w, K, x, n0, n1, y, ldy);
    case 2: return fgemv_t<V, 2>(w, K, x, n0, n1, y, ldy);
    case 3: return fgemv_t<V, 3>(w, K, x, n0, n1, y, ldy);
    case 4: return fgemv_t<V, 4>(w, K, x, n0, n1, y, ldy);
    case 5: return fgemv_t<V, 5>(w, K, x, n0, n1, y, ldy);
    case 6: return fgemv_t<V, 6>(w, K, x, n0, n1, y, ldy);
    case 7: return fgemv_t<V, 7>(w, K, x, n0, n1, y, ldy);
    default: return fgemv_t<V, 8>(w, K, x, n0, n1, y, ldy);
  }
}

// One token of the gated delta rule for one sequence's head (mlx-lm's _gated_delta_step_ops):
// S = g·S, kv = S·k, d = (v - kv)·beta, S = S + d·kᵀ, y = S·q, with S (Dv, Dk) row-major. Each
// row of S is read once and written once (it stays in L1 between the two halves), where MLX's
// ops pass over the whole state four times and write it twice: 1 MB per sequence and layer.
template <class V>
void delta_step_t(const float* s_in, const float* q, const float* k, const float* v, float g, float beta, int Dv,
                  int Dk, float* s_out, float* y) {
  using T = typename V::T;
  constexpr int L = V::L;
  const int body = Dk / L * L;
  const T gv = V::bcast(g);
  for (int i = 0; i < Dv; ++i) {
    const float* s = s_in + static_cast<long>(i) * Dk;
    float* o = s_out + static_cast<long>(i) * Dk;
    T acc = V::zero();
    for (int j = 0; j < body; j += L) {
      const T sj = V::mul(V::load(s + j), gv);
      V::store(o + j, sj);
      acc = V::fma(sj, V::load(k + j), acc);
    }
    float kv = V::hsum(acc);
    for (int j = body; j < Dk; ++j) {
      o[j] = s[j] * g;
      kv += o[j] * k[j];
    }
    const float d = (v[i] - kv) * beta;
    const T dv = V::bcast(d);
    acc = V::zero();
    for (int j = 0; j < body; j += L) {
      const T sj = V::fma(V::load(k + j), dv, V::load(o + j));
      V::store(o + j, sj);
      acc = V::fma(sj, V::load(q + j), acc);
    }
    float yi = V::hsum(acc);
    for (int j = body; j < Dk; ++j) {
      o[j] += k[j] * d;
      yi += o[j] * q[j];
    }
    y[i] = yi;
  }
}

// e^x as fast_math.py's exp computes it in MLX ops: x clipped to [-80, 89], x·log2(e) = n + f
// with |f| <= 1/2 (n by adding 1.5·2^23), 2^f by its degree-7 Taylor polynomial in Estrin's
// scheme, 2^n from n's bits. The same numbers as there, a vector at a time.
template <class V>
inline typename V::T exp_v(typename V::T x) {
  using T = typename V::T;
  constexpr float kRound = 12582912.0f;
  const T t = V::mul(V::max(V::min(x, V::bcast(89.0f)), V::bcast(-80.0f)), V::bcast(1.4426950408889634f));
  const T n = V::add(t, V::bcast(kRound));
  const T f = V::sub(t, V::sub(n, V::bcast(kRound)));
  const T f2 = V::mul(f, f);
  const T p01 = V::fma(V::bcast(0.6931471805599453f), f, V::bcast(1.0f));
  const T p23 = V::fma(V::bcast(0.05550410866482158f), f, V::bcast(0.2402265069591007f));
  const T p45 = V::fma(V::bcast(0.0013333558146428443f), f, V::bcast(0.009618129107628477f));
  const T p67 = V::fma(V::bcast(1.525273380405984e-05f), f, V::bcast(0.00015403530393381606f));
  const T p = V::fma(V::mul(f2, f2), V::fma(f2, p67, p45), V::fma(f2, p23, p01));
  return V::mul(V::pow2n(n), p);
}

// Probabilities below this are written as 0. exp_v bottoms out at e^-80 (never a subnormal),
// so a masked score's probability came out ~2e-37, not 0 as MLX's exp(-inf): times the values
// in probs @ V, such products are subnormal, which x86 computes in microcode (a causal layer's
// probs @ V took twice as long). Against the row's sum, 1, anything below 2^-64 is nothing in
// float32.
constexpr float kNegligible = 0x1p-64f;

template <class V>
void max_sum_exp_t(const float* x, long n, float* top_out, float* sum_out, bool* nan) {
  using T = typename V::T;
  constexpr int L = V::L;
  const long body = n / L * L;
  // v clamped to ±FLT_MAX, times 0, summed: 0, or NaN where v holds a NaN (min and max return
  // their second operand, v, when it is one)
  const T biggest = V::bcast(__FLT_MAX__), lowest = V::bcast(-__FLT_MAX__);
  T m = V::bcast(-__builtin_huge_valf()), poison = V::zero();
  for (long i = 0; i < body; i += L) {
    const T v = V::load(x + i);
    m = V::max(m, v);
    poison = V::add(poison, V::mul(V::max(lowest, V::min(biggest, v)), V::zero()));
  }
  float top = V::hmax(m), nans = V::hsum(poison);
  for (long i = body; i < n; ++i) {
    top = x[i] > top ? x[i] : top;
    nans += x[i] != x[i] ? x[i] : 0.0f;
  }
  *nan = nans != nans;
  *top_out = top;
  if (top == -__builtin_huge_valf() || top == __builtin_huge_valf()) {  // the caller's answer is the top itself
    *sum_out = 0.0f;
    return;
  }
  const T mv = V::bcast(top);
  T acc = V::zero();
  for (long i = 0; i < body; i += L) acc = V::add(acc, exp_v<V>(V::sub(V::load(x + i), mv)));
  float sum = V::hsum(acc);
  if (body < n) {  // the tail through one more vector, padded, its padding not counted
    float pad[L];
    for (int i = 0; i < L; ++i) pad[i] = body + i < n ? x[body + i] : top;
    float e[L];
    V::store(e, exp_v<V>(V::sub(V::load(pad), mv)));
    for (long i = body; i < n; ++i) sum += e[i - body];
  }
  *sum_out = sum;
}

// Rows [r0, r1) of x (rows, S) -> softmax along each row into y: the row's max, e^(x - max)
// with its sum, then a multiply by 1/sum; a row of S floats stays in L1 through the three passes.
template <class V>
void softmax_rows_t(const float* x, int S, long r0, long r1, float* y) {
  using T = typename V::T;
  constexpr int L = V::L;
  const int body = S / L * L;
  for (long r = r0; r < r1; ++r) {
    const float* xr = x + r * S;
    float* yr = y + r * S;
    T m = V::bcast(-__builtin_huge_valf());
    for (int i = 0; i < body; i += L) m = V::max(m, V::load(xr + i));
    float top = V::hmax(m);
    for (int i = body; i < S; ++i) top = xr[i] > top ? xr[i] : top;
    const T mv = V::bcast(top);
    T acc = V::zero();
    for (int i = 0; i < body; i += L) {
      const T e = exp_v<V>(V::sub(V::load(xr + i), mv));
      V::store(yr + i, e);
      acc = V::add(acc, e);
    }
    float sum = V::hsum(acc);
    if (body < S) {  // the tail through one more vector, padded, so it gets the same numbers
      float pad[L];
      for (int i = 0; i < L; ++i) pad[i] = body + i < S ? xr[body + i] : top;
      V::store(pad, exp_v<V>(V::sub(V::load(pad), mv)));
      for (int i = body; i < S; ++i) {
        yr[i] = pad[i - body];
        sum += yr[i];
      }
    }
    const float inv = 1.0f / sum;
    const T iv = V::bcast(inv);
    for (int i = 0; i < body; i += L) V::store(yr + i, V::flush(V::mul(V::load(yr + i), iv), kNegligible));
    for (int i = body; i < S; ++i) yr[i] = yr[i] * inv < kNegligible ? 0.0f : yr[i] * inv;
  }
}

// One head's attention for a decoded token (kernels.h's attend): the scores' dot products in
// vectors, the same softmax as softmax_rows_t's, then the values' rows summed into o.
template <class V>
void attend_t(const float* q, const float* keys, long key_stride, const float* values, long value_stride, int S, int D,
              float scale, float* probs, float* o) {
  using T = typename V::T;
  constexpr int L = V::L;
  const int body = D / L * L;
  for (int s = 0; s < S; ++s) {
    const float* k = keys + s * key_stride;
    T acc = V::zero();
    for (int i = 0; i < body; i += L) acc = V::fma(V::load(q + i), V::load(k + i), acc);
    float dot = V::hsum(acc);
    for (int i = body; i < D; ++i) dot += q[i] * k[i];
    probs[s] = dot * scale;
  }
  softmax_rows_t<V>(probs, S, 0, 1, probs);
  std::fill_n(o, D, 0.0f);
  for (int s = 0; s < S; ++s) {
    const float* v = values + s * value_stride;
    const T p = V::bcast(probs[s]);
    for (int i = 0; i < body; i += L) V::store(o + i, V::fma(p, V::load(v + i), V::load(o + i)));
    for (int i = body; i < D; ++i) o[i] += probs[s] * v[i];
  }
}

// The activations of fast_math.py, elementwise over [i0, i1), in its order of operations:
// tanh-GELU x / (1 + e^(-1.5957691·(x + 0.044715·x³))), SwiGLU gate / (1 + e^-gate) · x (silu
// first: gate·x can overflow where silu(gate)·x is 0), SiLU x / (1 + e^-x), sigmoid 1 / (1 + e^-x).
template <class V>
inline typename V::T act_v(Act act, typename V::T a, typename V::T b) {
  using T = typename V::T;
  const T one = V::bcast(1.0f);
  if (act == Act::gelu_tanh) {
    const T arg = V::mul(V::bcast(-1.5957691216057308f), V::add(a, V::mul(V::mul(V::mul(V::bcast(0.044715f), a), a), a)));
    return V::div(a, V::add(one, exp_v<V>(arg)));
  }
  const T denominator = V::add(one, exp_v<V>(V::sub(V::zero(), a)));
  if (act == Act::sigmoid) return V::div(one, denominator);
  const T silu = V::div(a, denominator);
  return act == Act::silu ? silu : V::mul(silu, b);
}

template <class V>
void activation_t(Act act, const float* a, const float* b, long i0, long i1, float* y) {
  constexpr int L = V::L;
  long i = i0;
  for (; i + L <= i1; i += L) V::store(y + i, act_v<V>(act, V::load(a + i), b ? V::load(b + i) : V::zero()));
  if (i < i1) {  // the tail through one more vector, padded with zeros
    float pa[L] = {}, pb[L] = {};
    for (long j = i; j < i1; ++j) {
      pa[j - i] = a[j];
      pb[j - i] = b ? b[j] : 0.0f;
    }
    V::store(pa, act_v<V>(act, V::load(pa), V::load(pb)));
    for (long j = i; j < i1; ++j) y[j] = pa[j - i];
  }
}

template <class V>
void conv_silu_t(const float* const* rows, const float* w, int K, int C, float* y) {
  constexpr int L = V::L;
  int c = 0;
  for (; c + L <= C; c += L) {
    typename V::T acc = V::mul(V::load(rows[0] + c), V::load(w + c));
    for (int k = 1; k < K; ++k) acc = V::fma(V::load(rows[k] + c), V::load(w + static_cast<long>(k) * C + c), acc);
    V::store(y + c, act_v<V>(Act::silu, acc, V::zero()));
  }
  if (c < C) {  // the tail through one more vector, padded with zeros
    float pa[L] = {};
    for (int j = c; j < C; ++j) {
      float acc = rows[0][j] * w[j];
      for (int k = 1; k < K; ++k) acc = __builtin_fmaf(rows[k][j], w[static_cast<long>(k) * C + j], acc);
      pa[j - c] = acc;
    }
    V::store(pa, act_v<V>(Act::silu, V::load(pa), V::zero()));
    for (int j = c; j < C; ++j) y[j] = pa[j - c];
  }
}

// Rows [r0, r1) of x (rows, D) normalised into y: LayerNorm (x - mean)·rsqrt(var + eps)·w + b
// with the variance of x - mean (two passes, as MLX's), or RMSNorm x·rsqrt(mean(x²) + eps)·w;
// w and b may be null (then 1 and 0).
template <class V>
void norm_rows_t(const float* x, const float* w, const float* b, float eps, bool rms, int D, long r0, long r1,
                 float* y) {
  using T = typename V::T;
  constexpr int L = V::L;
  const int body = D / L * L;
  for (long r = r0; r < r1; ++r) {
    const float* xr = x + r * D;
    float* yr = y + r * D;
    float mean = 0.0f;
    if (!rms) {
      T acc = V::zero();
      for (int i = 0; i < body; i += L) acc = V::add(acc, V::load(xr + i));
      float sum = V::hsum(acc);
      for (int i = body; i < D; ++i) sum += xr[i];
      mean = sum / D;
    }
    const T mv = V::bcast(mean);
    T acc = V::zero();
    for (int i = 0; i < body; i += L) {
      const T c = V::sub(V::load(xr + i), mv);
      acc = V::fma(c, c, acc);
    }
    float squares = V::hsum(acc);
    for (int i = body; i < D; ++i) squares += (xr[i] - mean) * (xr[i] - mean);
    const float scale = 1.0f / __builtin_sqrtf(squares / D + eps);
    const T sv = V::bcast(scale);
    for (int i = 0; i < body; i += L) {
      T v = V::mul(V::sub(V::load(xr + i), mv), sv);
      if (w) v = V::mul(v, V::load(w + i));
      if (b) v = V::add(v, V::load(b + i));
      V::store(yr + i, v);
    }
    for (int i = body; i < D; ++i) yr[i] = (xr[i] - mean) * scale * (w ? w[i] : 1.0f) + (b ? b[i] : 0.0f);
  }
}

template <class V, int BITS>
void qgemv_bits(const Quantized& q, const float* xp, const float* xsum, int n0, int n1, float* y) {
  switch (q.group) {
    case 32: return qgemv_t<V, BITS, 32>(q, xp, xsum, n0, n1, y);
    case 64: return qgemv_t<V, BITS, 64>(q, xp, xsum, n0, n1, y);
    default: return qgemv_t<V, BITS, 128>(q, xp, xsum, n0, n1, y);
  }
}

template <class V, int BITS>
void qdequant_bits(const Quantized& q, int n0, int n1, float* tile) {
  switch (q.group) {
    case 32: return qdequant_t<V, BITS, 32>(q, n0, n1, tile);
    case 64: return qdequant_t<V, BITS, 64>(q, n0, n1, tile);
    default: return qdequant_t<V, BITS, 128>(q, n0, n1, tile);
  }
}

// The Isa table of V; matmul.cpp checks bits in {4, 8} and group in {32, 64, 128} first.
template <class V>
Isa make_isa(const char* name) {
  return Isa{
      name,
      2 * V::L,
      [](const Quantized& q, const float* xp, const float* xsum, int n0, int n1, float* y) {
        q.bits == 8 ? qgemv_bits<V, 8>(q, xp, xsum, n0, n1, y) : qgemv_bits<V, 4>(q, xp, xsum, n0, n1, y);
      },
      [](const Quantized& q, int n0, int n1, float* tile) {
        q.bits == 8 ? qdequant_bits<V, 8>(q, n0, n1, tile) : qdequant_bits<V, 4>(q, n0, n1, tile);
      },
      [](const uint16_t* w, Float dtype, int K, const float* x, int n0, int n1, float* y) {
        dtype == Float::bf16 ? hgemv_t<V, true>(w, K, x, n0, n1, y) : hgemv_t<V, false>(w, K, x, n0, n1, y);
      },
      [](const uint16_t* w, Float dtype, int K, int n0, int n1, float* tile) {
        dtype == Float::bf16 ? hwiden_t<V, true>(w, K, n0, n1, tile) : hwiden_t<V, false>(w, K, n0, n1, tile);
      },
      fgemv_rows<V>,
      delta_step_t<V>,
      softmax_rows_t<V>,
      max_sum_exp_t<V>,
      activation_t<V>,
      conv_silu_t<V>,
      norm_rows_t<V>,
      attend_t<V>,
  };
}
