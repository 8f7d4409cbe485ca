// The gated delta rule (the DeltaNet layers' recurrence) over a whole prompt on MLX's CPU
// backend: mlx-lm's per-token step, token after token, for each (sequence, value head) of the
// batch on the pool, the state kept in the output buffer throughout.
//
// The chunked form (cpu/gated_delta.py) does the same math as batched 64 x 64 matmuls, which
// MLX runs as one sgemm call per (head, chunk): ~1,000 calls a layer, each big enough for
// OpenBLAS to split over its threads, so each waits for a second thread to be scheduled. On
// an idle 2-core machine that is a few microseconds a call; on a busy one, a scheduler time
// slice: a 512-token prefill of the full-size 4.7 model took 120-139 s with other processes on
// the two cores (load average ~5), 107 s of a profiled 128 in this rule, against ~12 s idle.
// Here a layer is one call, one fork and join on the pool.
//
// Per token, each row of the state (Dk floats) is decayed and dotted with k, then updated and
// dotted with q, in two passes: s = g·s, kv = s·k, d = (v - kv)·beta, s += d·k, y = s·q.

#include "scan.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "mlx/backend/cpu/encoder.h"
#include "mlx/primitives.h"
#include "pool.h"
#include "state_primitive.h"

namespace mx = mlx::core;

namespace cpuk {

namespace {

struct Head {
  const float *q, *k, *v, *g, *beta;  // at token 0 of this (sequence, head)
  float *s, *y;                         // the state (Dv, Dk), updated in place; y at token 0
  long qk_step, v_step, gate_step;      // floats from one token to the next
  int T, Dk, Dv;
};

// W floats as one GCC vector: the target of the function it is inlined into decides the
// instructions (one AVX-512 register, two AVX2 ones, four SSE ones).
template <int W>
struct Vec;
template <>
struct Vec<4> {
  typedef float type __attribute__((vector_size(16)));
};
template <>
struct Vec<8> {
  typedef float type __attribute__((vector_size(32)));
};
template <>
struct Vec<16> {
  typedef float type __attribute__((vector_size(64)));
};

// The sum of a vector's lanes as a tree of halves: a row's dot product ends in one, and a
// chain of W scalar adds there took most of the time.
template <int W>
static inline __attribute__((always_inline)) float lane_sum(typename Vec<W>::type x) {
  if constexpr (W == 4) {
    return (x[0] + x[2]) + (x[1] + x[3]);
  } else {
    typename Vec<W / 2>::type lo, hi;
    std::memcpy(&lo, &x, sizeof lo);
    std::memcpy(&hi, reinterpret_cast<const char*>(&x) + sizeof lo, sizeof hi);
    return lane_sum<W / 2>(lo + hi);
  }
}

// R rows of the state at once, their dot products' add chains interleaved.
template <int W, int R>
static inline __attribute__((always_inline)) void scan_rows(const Head& h, const float* q, const float* k, float g,
                                                             float beta, const float* v, float* y, int i0) {
  using vec = typename Vec<W>::type;
  auto load = [](const float* p) {
    vec x;
    std::memcpy(&x, p, sizeof x);
    return x;
  };
  auto store = [](float* p, vec x) { std::memcpy(p, &x, sizeof x); };
  const int body = h.Dk / W * W;
  float* s[R];
  for (int r = 0; r < R; ++r) s[r] = h.s + static_cast<long>(i0 + r) * h.Dk;
  vec acc[R] = {};
  for (int j = 0; j < body; j += W) {  // s = g·s, kv = s·k
    const vec kj = load(k + j);
    for (int r = 0; r < R; ++r) {
      const vec x = load(s[r] + j) * g;
      store(s[r] + j, x);
      acc[r] += x * kj;
    }
  }
  float d[R];
  for (int r = 0; r < R; ++r) {
    float kv = lane_sum<W>(acc[r]);
    for (int j = body; j < h.Dk; ++j) {
      s[r][j] *= g;
      kv += s[r][j] * k[j];
    }
    d[r] = (v[i0 + r] - kv) * beta;
    acc[r] = vec{};
  }
  for (int j = 0; j < body; j += W) {  // s += d·k, y = s·q
    const vec kj = load(k + j), qj = load(q + j);
    for (int r = 0; r < R; ++r) {
      const vec x = load(s[r] + j) + kj * d[r];
      store(s[r] + j, x);
      acc[r] += x * qj;
    }
  }
  for (int r = 0; r < R; ++r) {
    float yi = lane_sum<W>(acc[r]);
    for (int j = body; j < h.Dk; ++j) {
      s[r][j] += k[j] * d[r];
      yi += s[r][j] * q[j];
    }
    y[i0 + r] = yi;
  }
}

// Each row of the state evolves on its own (its kv, d and y are its own), so a block of rows
// (16 KB) goes through all T tokens while it stays in L1; k and q are read once per block.
template <int W>
static inline __attribute__((always_inline)) void scan_head(const Head& h) {
  constexpr int R = 4;
  const int block = std::max(R, 4096 / std::max(h.Dk, 1) / R * R);
  for (int b0 = 0; b0 < h.Dv; b0 += block) {
    const int b1 = std::min(h.Dv, b0 + block);
    for (int t = 0; t < h.T; ++t) {
      const float *q = h.q + t * h.qk_step, *k = h.k + t * h.qk_step, *v = h.v + t * h.v_step;
      const float g = h.g[t * h.gate_step], beta = h.beta[t * h.gate_step];
      float* y = h.y + t * h.v_step;
      int i = b0;
      for (; i + R <= b1; i += R) scan_rows<W, R>(h, q, k, g, beta, v, y, i);
      for (; i < b1; ++i) scan_rows<W, 1>(h, q, k, g, beta, v, y, i);
    }
  }
}

#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("avx512f,fma"))) void scan_avx512(const Head& h) { scan_head<16>(h); }
__attribute__((target("avx2,fma"))) void scan_avx2(const Head& h) { scan_head<8>(h); }
#endif
void scan_portable(const Head& h) { scan_head<4>(h); }

using ScanFn = void (*)(const Head&);

ScanFn scan_for(const Isa* isa) {
#if defined(__x86_64__) || defined(__i386__)
  if (std::strcmp(isa->name, "avx512") == 0) return scan_avx512;
  if (std::strcmp(isa->name, "avx2") == 0) return scan_avx2;
#endif
  return scan_portable;
}

class DeltaScan : public StatePrimitive {
 public:
  using StatePrimitive::StatePrimitive;

  const char* name() const override { return "CpuGatedDeltaScan"; }

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto [held, out] = bind_arrays(stream(), inputs, outputs);
    auto& encoder = mx::cpu::get_command_encoder(stream());
    encoder.dispatch([scan = scan_for(isa_), held = std::move(held), out = std::move(out)]() mutable {
      const int B = held[0].shape(0), T = held[0].shape(1), Hk = held[0].shape(2), Dk = held[0].shape(3);
      const int Hv = held[2].shape(2), Dv = held[2].shape(3);
      const long state = static_cast<long>(Dv) * Dk;
      float* s_out = out[1].data<float>();
      std::memcpy(s_out, held[5].data<float>(), held[5].nbytes());
      Pool::get().parallel_for(static_cast<long>(B) * Hv, 1, [&](long first, long last) {
        for (long bh = first; bh < last; ++bh) {
          const long b = bh / Hv, hv = bh % Hv, hk = hv / (Hv / Hk);
          const long qk0 = (b * T * Hk + hk) * Dk, v0 = (b * T * Hv + hv) * Dv, gate0 = b * T * Hv + hv;
          scan(Head{held[0].data<float>() + qk0, held[1].data<float>() + qk0, held[2].data<float>() + v0,
                    held[3].data<float>() + gate0, held[4].data<float>() + gate0, s_out + bh * state,
                    out[0].data<float>() + v0, static_cast<long>(Hk) * Dk, static_cast<long>(Hv) * Dv, Hv, T, Dk,
                    Dv});
        }
      });
    });
  }
};

}  // namespace

std::vector<mx::array> gated_delta_scan(const mx::array& q, const mx::array& k, const mx::array& v, const mx::array& g,
                                        const mx::array& beta, const mx::array& state, const Isa* isa) {
  check_float32({&q, &k, &v, &g, &beta, &state});
  if (q.ndim() != 4 || k.shape() != q.shape() || v.ndim() != 4 || v.shape(0) != q.shape(0) || v.shape(1) != q.shape(1))
    throw std::invalid_argument("[cpu_kernels] q and k must be (B, T, Hk, Dk), v (B, T, Hv, Dv)");
  if (v.shape(2) % q.shape(2) != 0)
    throw std::invalid_argument("[cpu_kernels] the value heads must be a multiple of the key heads");
  if (g.shape() != mx::Shape{v.shape(0), v.shape(1), v.shape(2)} || beta.shape() != g.shape())
    throw std::invalid_argument("[cpu_kernels] g and beta must be (B, T, Hv)");
  if (state.shape() != mx::Shape{v.shape(0), v.shape(2), v.shape(3), q.shape(3)})
    throw std::invalid_argument("[cpu_kernels] the state must be (B, Hv, Dv, Dk)");
  return call<DeltaScan>({&q, &k, &v, &g, &beta, &state}, isa);
}

}  // namespace cpuk
