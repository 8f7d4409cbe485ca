// One decoded token through a whole DeltaNet decoder layer as one primitive, on MLX's CPU backend.
//
// MLX's CPU backend hands each op of a graph to its stream's thread as a task of its own, ~6 us
// an op on this machine however small the op (2.3 us a view), and a decoded token's DeltaNet
// layer is ~90 ops after compilation: its norms, gates, conv and reshapes cost more than its
// matmuls at 4 bits. Here the layer's math is the same code the separate primitives run (the
// kernels of kernels_impl.h and vnni.cpp, linear.h's matmuls), called in order from one task:
//
//   h = x + out_proj(rms_norm(o, norm) · silu(z)),   o, state = delta_step(q, k, v, g, beta, state)
//   out = h + down(silu(gate(n)) · up(n)),           n = rms_norm(h, post_attention_layernorm)
//
// with qkv = conv_silu([conv_state; in_proj_qkv(rms_norm(x, input_layernorm))]), q and k
// L2-normalised, g = exp(-exp(A_log)·softplus(a + dt_bias)), beta = sigmoid(b) (mlx-lm's
// Qwen3.5 GatedDeltaNet; language_layers.py calls it where it applies, else the ops run).

#include "decode_layer.h"

#include <cmath>
#include <stdexcept>
#include <string>

#include "bind.h"
#include "linear.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/ops.h"
#include "mlx/primitives.h"
#include "pool.h"
#include "scratch.h"

namespace mx = mlx::core;

namespace cpuk {

namespace {

enum Input { kX, kConvState, kState, kInputNorm, kPostNorm, kConv, kALog, kDtBias, kGateNorm, kFirstLinear };
enum Proj { kQkv, kZ, kB, kA, kOut, kGate, kUp, kDown, kLinears };

float softplus(float x) { return std::max(x, 0.0f) + std::log1p(std::exp(-std::abs(x))); }  // MLX's logaddexp(x, 0)

class DeltaNetDecode : public mx::Primitive {
 public:
  DeltaNetDecode(mx::Stream s, const Isa* isa, DeltaNetShape shape, std::vector<LinearKind> kinds)
      : mx::Primitive(s), isa_(isa), shape_(shape), kinds_(std::move(kinds)) {}

  const char* name() const override { return "CpuDeltaNetDecodeLayer"; }
  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("[cpu_kernels] CPU only: on a GPU the layer's own ops run.");
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& in) override {
    return {in[kX].shape(), in[kConvState].shape(), in[kState].shape()};
  }
  bool is_equivalent(const mx::Primitive& other) const override {
    auto& o = static_cast<const DeltaNetDecode&>(other);
    return isa_ == o.isa_ && kinds_ == o.kinds_ && shape_ == o.shape_;
  }

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto [held, out] = bind_arrays(stream(), inputs, outputs);
    mx::cpu::get_command_encoder(stream()).dispatch(
        [isa = isa_, shape = shape_, kinds = kinds_, held = std::move(held), out = std::move(out)]() mutable {
          run(*isa, shape, kinds, held, out);
        });
  }

 private:
  static void run(const Isa& isa, const DeltaNetShape& d, const std::vector<LinearKind>& kinds,
                  const std::vector<mx::array>& in, std::vector<mx::array>& out) {
    const int H = d.hidden, Kc = d.conv_kernel, Hk = d.k_heads, Hv = d.v_heads, Dk = d.k_dim, Dv = d.v_dim;
    const int key = Hk * Dk, value = Hv * Dv, C = 2 * key + value, I = d.intermediate;
    // each projection's weights: its first input and its kind
    const mx::array* weights[kLinears];
    for (int p = 0, at = kFirstLinear; p < kLinears; at += kinds[p].bits <= 8 ? 3 : 1, ++p) weights[p] = &in[at];
    auto project = [&](int p, const float* x, int K, int N, float* y) {
      linear(isa, kinds[p].bits, kinds[p].group, weights[p], x, 1, K, N, y);
    };

    thread_local Scratch<float> scratch;
    float* normed = scratch.get(static_cast<size_t>(4 * H + 3 * C + 4 * value + 2 * Hv + 2 * I + Kc * C));
    float *qkv = normed + H, *z = qkv + C, *b = z + value, *a = b + Hv, *mixed = a + Hv, *o = mixed + C;
    float *gated = o + value, *h = gated + value, *gate = h + H, *up = gate + I, *proj = up + I, *wT = proj + H;
    float *qk = wT + Kc * C, *normed_o = qk + 2 * key;

    const float* x = in[kX].data<float>();
    isa.norm(x, in[kInputNorm].data<float>(), nullptr, d.eps, true, H, 0, 1, normed);
    project(kQkv, normed, H, C, qkv);
    project(kZ, normed, H, value, z);
    project(kB, normed, H, Hv, b);
    project(kA, normed, H, Hv, a);

    // conv + SiLU over [the state's Kc - 1 rows; qkv], the weight (C, Kc) read as (Kc, C); the
    // new state is its last Kc - 1 rows
    const float* conv_state = in[kConvState].data<float>();
    const float* conv_w = in[kConv].data<float>();
    for (int c = 0; c < C; ++c)
      for (int k = 0; k < Kc; ++k) wT[static_cast<long>(k) * C + c] = conv_w[static_cast<long>(c) * Kc + k];
    const float* rows[16];
    for (int k = 0; k < Kc - 1; ++k) rows[k] = conv_state + static_cast<long>(k) * C;
    rows[Kc - 1] = qkv;
    isa.conv_silu(rows, wT, Kc, C, mixed);
    float* new_conv = out[1].data<float>();
    for (int k = 1; k < Kc; ++k) std::copy_n(rows[k], C, new_conv + static_cast<long>(k - 1) * C);

    // q and k L2-normalised per head (an RMSNorm with eps scaled by 1 / Dk), q also by Dk^-1/2
    const float inv_scale = 1.0f / std::sqrt(static_cast<float>(Dk));
    isa.norm(mixed, nullptr, nullptr, d.qk_eps * inv_scale * inv_scale, true, Dk, 0, 2 * Hk, qk);
    for (int i = 0; i < key; ++i) qk[i] *= inv_scale * inv_scale;
    for (int i = key; i < 2 * key; ++i) qk[i] *= inv_scale;
    const float* v = mixed + 2 * key;

    const float *A_log = in[kALog].data<float>(), *dt_bias = in[kDtBias].data<float>();
    for (int i = 0; i < Hv; ++i) {
      a[i] = std::exp(-std::exp(A_log[i]) * softplus(a[i] + dt_bias[i]));  // the decay g
      b[i] = 1.0f / (1.0f + std::exp(-b[i]));                                // beta
    }
    const float* state = in[kState].data<float>();
    float* new_state = out[2].data<float>();
    const long S = static_cast<long>(Dv) * Dk;
    const int per_k_head = Hv / Hk;
    Pool::get().parallel_for(Hv, 2, [&](long h0, long h1) {
      for (long i = h0; i < h1; ++i) {
        const long kh = i / per_k_head;
        isa.delta_step(state + i * S, qk + kh * Dk, qk + key + kh * Dk, v + i * Dv, a[i], b[i], Dv, Dk,
                       new_state + i * S, o + i * Dv);
      }
    });

    isa.norm(o, in[kGateNorm].data<float>(), nullptr, d.gate_eps, true, Dv, 0, Hv, normed_o);
    isa.activation(Act::swiglu, z, normed_o, 0, value, gated);
    project(kOut, gated, value, H, proj);
    for (int i = 0; i < H; ++i) h[i] = x[i] + proj[i];

    isa.norm(h, in[kPostNorm].data<float>(), nullptr, d.eps, true, H, 0, 1, normed);
    project(kGate, normed, H, I, gate);
    project(kUp, normed, H, I, up);
    isa.activation(Act::swiglu, gate, up, 0, I, gate);
    project(kDown, gate, I, H, proj);
    float* y = out[0].data<float>();
    for (int i = 0; i < H; ++i) y[i] = h[i] + proj[i];
  }

  const Isa* isa_;
  DeltaNetShape shape_;
  std::vector<LinearKind> kinds_;
};

void check(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("[cpu_kernels] deltanet_decode: " + what);
}

}  // namespace

std::vector<mx::array> deltanet_decode(const std::vector<mx::array>& arrays, const std::vector<LinearKind>& kinds,
                                       const DeltaNetShape& d, const Isa* isa) {
  check(kinds.size() == kLinears, "8 projections: in_proj_qkv, z, b, a, out_proj, gate, up, down");
  const int H = d.hidden, key = d.k_heads * d.k_dim, value = d.v_heads * d.v_dim, C = 2 * key + value;
  check(d.conv_kernel >= 2 && d.conv_kernel <= 16 && d.k_heads > 0 && d.v_heads % d.k_heads == 0,
        "conv kernel 2-16, value heads a multiple of key heads");
  size_t expected = kFirstLinear;
  for (const LinearKind& k : kinds) {
    check(k.bits == 4 || k.bits == 8 || k.bits == 16 || k.bits == 32, "bits 4, 8, 16 or 32");
    expected += k.bits <= 8 ? 3 : 1;
  }
  check(arrays.size() == expected, "one array a weight, three a quantised one");
  for (int i = 0; i < kFirstLinear; ++i) check(arrays[i].dtype() == mx::float32, "activations, states and norms float32");
  check(arrays[kX].size() == static_cast<size_t>(H), "x is one token of one sequence");
  check(arrays[kConvState].size() == static_cast<size_t>(d.conv_kernel - 1) * C, "the conv state (1, kernel - 1, conv dim)");
  check(arrays[kState].size() == static_cast<size_t>(d.v_heads) * d.v_dim * d.k_dim, "the state (1, Hv, Dv, Dk)");
  check(arrays[kConv].size() == static_cast<size_t>(C) * d.conv_kernel, "the conv weight (conv dim, kernel, 1)");
  check(arrays[kInputNorm].size() == static_cast<size_t>(H) && arrays[kPostNorm].size() == static_cast<size_t>(H) &&
            arrays[kGateNorm].size() == static_cast<size_t>(d.v_dim) && arrays[kALog].size() == static_cast<size_t>(d.v_heads) &&
            arrays[kDtBias].size() == static_cast<size_t>(d.v_heads),
        "norm, A_log and dt_bias sizes");
  // (K, N) of each projection, and its weights' shape as stored
  const int dims[kLinears][2] = {{H, C}, {H, value}, {H, d.v_heads}, {H, d.v_heads}, {value, H},
                                 {H, d.intermediate}, {H, d.intermediate}, {d.intermediate, H}};
  size_t at = kFirstLinear;
  for (int p = 0; p < kLinears; ++p) {
    const mx::array& w = arrays[at];
    const int K = dims[p][0], N = dims[p][1], bits = kinds[p].bits;
    if (bits <= 8) {
      check(w.dtype() == mx::uint32 && w.shape() == mx::Shape{N, K * bits / 32} && K % kinds[p].group == 0 &&
                arrays[at + 1].shape() == mx::Shape{N, K / kinds[p].group} && arrays[at + 2].shape() == arrays[at + 1].shape() &&
                arrays[at + 1].dtype() == arrays[at + 2].dtype() && arrays[at + 1].dtype() != mx::uint32,
            "a quantised projection's weight, scales and biases");
      check(kinds[p].group == 32 || kinds[p].group == 64 || kinds[p].group == 128, "group size 32, 64 or 128");
    } else {
      check(w.shape() == mx::Shape{N, K} &&
                (bits == 32 ? w.dtype() == mx::float32 : (w.dtype() == mx::bfloat16 || w.dtype() == mx::float16)),
            "a projection's weight (N, K), float32 or bf16/fp16 as its kind says");
    }
    at += bits <= 8 ? 3 : 1;
  }
  auto s = mx::to_stream(mx::Device::cpu);
  std::vector<mx::array> dense;
  for (const mx::array& a : arrays)  // the weights are dense already: no node for them
    dense.push_back(a.is_available() && a.flags().row_contiguous ? a : mx::contiguous(a, false, s));
  return mx::array::make_arrays({dense[kX].shape(), dense[kConvState].shape(), dense[kState].shape()},
                                {mx::float32, mx::float32, mx::float32}, std::make_shared<DeltaNetDecode>(s, isa, d, kinds),
                                dense);
}

}  // namespace cpuk
