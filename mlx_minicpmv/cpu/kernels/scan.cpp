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
// Per token: s = g·s, kv = s·k, d = (v - kv)·beta, s += d·k, y = s·q (see scan_head).

#include "scan.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "mlx/backend/cpu/encoder.h"
#include "mlx/primitives.h"
#include "pool.h"
#include "scratch.h"
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

// Each row of the state evolves on its own (its kv, d and y are its own), so a block of 2W rows
// goes through all T tokens at once, vectorised across the rows: the state is held transposed,
// sT[j][r] = s[r][j], so that a vector is one column's 2W rows and every dot product over j is a
// chain of FMAs with k[j] or q[j] broadcast, with no sum across lanes (the row-wise form spent
// most of its time in those sums: 48 cycles a row and token against ~16 here). One pass a token:
// s = g·s + k⊗d, y = s·q, and already the next token's kv = s·k_next, so that with
// kv = g·(s_old·k): d = (v - kv)·beta. Rows are padded to 2W with zero state and v (they stay 0).
template <int W>
static inline __attribute__((always_inline)) void scan_head(const Head& h) {
  using vec = typename Vec<W>::type;
  constexpr int R = 2 * W;
  const int Dk = h.Dk, Dv = h.Dv, T = h.T, Dvp = (Dv + R - 1) / R * R;
  thread_local Scratch<float> state_buffer, v_buffer, y_buffer;
  float* sT = state_buffer.get(static_cast<size_t>(Dk) * Dvp);
  float* vp = v_buffer.get(static_cast<size_t>(T) * Dvp);
  float* yp = y_buffer.get(static_cast<size_t>(T) * Dvp);
  for (int j = 0; j < Dk; ++j) {
    for (int r = 0; r < Dv; ++r) sT[static_cast<long>(j) * Dvp + r] = h.s[static_cast<long>(r) * Dk + j];
    for (int r = Dv; r < Dvp; ++r) sT[static_cast<long>(j) * Dvp + r] = 0.0f;
  }
  for (int t = 0; t < T; ++t) {
    std::memcpy(vp + static_cast<long>(t) * Dvp, h.v + t * h.v_step, sizeof(float) * Dv);
    std::fill(vp + static_cast<long>(t) * Dvp + Dv, vp + static_cast<long>(t + 1) * Dvp, 0.0f);
  }
  auto load = [](const float* p) {
    vec x;
    std::memcpy(&x, p, sizeof x);
    return x;
  };
  auto store = [](float* p, vec x) { std::memcpy(p, &x, sizeof x); };
  for (int r0 = 0; r0 < Dvp; r0 += R) {
    vec kv0 = {}, kv1 = {};
    for (int j = 0; j < Dk; ++j) {  // token 0's s·k
      const float* col = sT + static_cast<long>(j) * Dvp + r0;
      kv0 += load(col) * h.k[j];
      kv1 += load(col + W) * h.k[j];
    }
    for (int t = 0; t < T; ++t) {
      const float *q = h.q + t * h.qk_step, *k = h.k + t * h.qk_step;
      const float* k_next = t + 1 < T ? k + h.qk_step : k;
      const float g = h.g[t * h.gate_step], beta = h.beta[t * h.gate_step];
      const float* v = vp + static_cast<long>(t) * Dvp + r0;
      const vec d0 = (load(v) - kv0 * g) * beta, d1 = (load(v + W) - kv1 * g) * beta;
      vec y0 = {}, y1 = {};
      kv0 = vec{};
      kv1 = vec{};
      for (int j = 0; j < Dk; ++j) {
        float* col = sT + static_cast<long>(j) * Dvp + r0;
        const vec s0 = load(col) * g + d0 * k[j], s1 = load(col + W) * g + d1 * k[j];
        store(col, s0);
        store(col + W, s1);
        y0 += s0 * q[j];
        y1 += s1 * q[j];
        kv0 += s0 * k_next[j];
        kv1 += s1 * k_next[j];
      }
      store(yp + static_cast<long>(t) * Dvp + r0, y0);
      store(yp + static_cast<long>(t) * Dvp + r0 + W, y1);
    }
  }
  for (int t = 0; t < T; ++t) std::memcpy(h.y + t * h.v_step, yp + static_cast<long>(t) * Dvp, sizeof(float) * Dv);
  for (int r = 0; r < Dv; ++r)
    for (int j = 0; j < Dk; ++j) h.s[static_cast<long>(r) * Dk + j] = sT[static_cast<long>(j) * Dvp + r];
}

#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("avx512f,fma"))) void scan_avx512(const Head& h) { scan_head<16>(h); }
__attribute__((target("avx2,fma"))) void scan_avx2(const Head& h) { scan_head<8>(h); }
#endif
void scan_portable(const Head& h) { scan_head<4>(h); }

using ScanFn = void (*)(const Head&);

ScanFn scan_for(const Isa* isa) {
#if defined(__x86_64__) || defined(__i386__)
  // amx is AVX-512 with the tile GEMMs.
  if (std::strcmp(isa->name, "avx512") == 0 || std::strcmp(isa->name, "amx") == 0) return scan_avx512;
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
