// One decoded token through a decoder layer in one primitive (two around an attention layer's
// KV cache), on MLX's CPU backend.
//
// MLX's CPU backend hands each op of a graph to its stream's thread as a task of its own, ~6 us
// an op on this machine however small the op (2.3 us a view), and a decoded token's layer is
// ~90 ops after compilation: its norms, gates, conv, RoPE and reshapes cost more than its
// matmuls at 4 bits. Here a layer's math is the code the separate primitives run (the kernels
// of kernels_impl.h and vnni.cpp, linear.h's matmuls), called in order from one task. mlx-lm's
// Qwen3.5 layers, with n = rms_norm(x, input_layernorm):
//
//   DeltaNet   qkv = conv_silu([conv_state; in_proj_qkv(n)]), q and k L2-normalised,
//              g = exp(-exp(A_log)·softplus(in_proj_a(n) + dt_bias)), beta = sigmoid(in_proj_b(n)),
//              o, state = delta_step(q, k, v, g, beta, state), h = x + out_proj(rms_norm(o)·silu(in_proj_z(n)))
//   attention  front: q, gate = q_proj(n) per head, k = k_proj(n), v = v_proj(n), q and k
//              RMS-normed and turned by RoPE; (MLX's KV cache update between the two); back:
//              o = softmax(q·K/√D)·V, h = x + o_proj(o·sigmoid(gate))
//   both       out = h + down(silu(gate_proj(m))·up_proj(m)), m = rms_norm(h, post_attention_layernorm)
//
// language_layers.py calls them where they apply (a plain layer of stored weights, one
// sequence), else the layers' ops run.

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

void check(bool ok, const char* step, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string("[cpu_kernels] ") + step + ": " + what);
}

// The projections' weights among a primitive's inputs, from `first` on: three arrays for a
// quantised one (w, scales, biases), one otherwise.
class Projections {
 public:
  Projections(const Isa& isa, const std::vector<LinearKind>& kinds, const std::vector<mx::array>& in, size_t first)
      : isa_(isa), kinds_(kinds) {
    for (const LinearKind& k : kinds) {
      weights_.push_back(&in[first]);
      first += k.bits <= 8 ? 3 : 1;
    }
  }
  // y (N) = x (K) @ W_p.T
  void operator()(int p, const float* x, int K, int N, float* y) const {
    linear(isa_, kinds_[p].bits, kinds_[p].group, weights_[p], x, 1, K, N, y);
  }

  // The arrays' checks where the primitive is made; dims[p] = (K, N) of projection p.
  static void check_inputs(const char* step, const std::vector<mx::array>& arrays, size_t first,
                           const std::vector<LinearKind>& kinds, const std::vector<std::pair<int, int>>& dims) {
    check(kinds.size() == dims.size(), step, std::to_string(dims.size()) + " projections");
    size_t at = first;
    for (const LinearKind& k : kinds) at += k.bits <= 8 ? 3 : 1;
    check(arrays.size() == at, step, "one array a weight, three a quantised one");
    at = first;
    for (size_t p = 0; p < kinds.size(); ++p) {
      const auto [K, N] = dims[p];
      const std::string problem = weights_problem(kinds[p].bits, kinds[p].group, &arrays[at], K, N);
      check(problem.empty(), step, "projection " + std::to_string(p) + ": " + problem);
      at += kinds[p].bits <= 8 ? 3 : 1;
    }
  }

 private:
  const Isa& isa_;
  const std::vector<LinearKind>& kinds_;
  std::vector<const mx::array*> weights_;
};

// y = h + down(silu(gate(m))·up(m)), m = rms_norm(h, w): every layer's second half. scratch: 2H + 2I.
void mlp_residual(const Isa& isa, const Projections& project, int gate, const float* h, const float* w, float eps, int H,
                  int I, float* scratch, float* y) {
  float *m = scratch, *g = m + H, *u = g + I, *down = u + I;
  isa.norm(h, w, nullptr, eps, true, H, 0, 1, m);
  project(gate, m, H, I, g);
  project(gate + 1, m, H, I, u);
  isa.activation(Act::swiglu, g, u, 0, I, g);
  project(gate + 2, g, I, H, down);
  for (int i = 0; i < H; ++i) y[i] = h[i] + down[i];
}

float softplus(float x) { return std::max(x, 0.0f) + std::log1p(std::exp(-std::abs(x))); }  // MLX's logaddexp(x, 0)

// A layer's step as a primitive: Run(isa, shape, kinds, inputs, outputs) in one task.
template <class Shape>
using RunStep = void (*)(const Isa&, const Shape&, const std::vector<LinearKind>&, const std::vector<mx::array>&,
                         std::vector<mx::array>&);

template <class Shape, RunStep<Shape> Run>
class LayerStep : public mx::Primitive {
 public:
  LayerStep(mx::Stream s, const Isa* isa, const char* name, Shape shape, std::vector<LinearKind> kinds,
            std::vector<mx::Shape> out_shapes)
      : mx::Primitive(s), isa_(isa), name_(name), shape_(shape), kinds_(std::move(kinds)), out_shapes_(std::move(out_shapes)) {}

  const char* name() const override { return name_; }
  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("[cpu_kernels] CPU only: on a GPU the layer's own ops run.");
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>&) override { return out_shapes_; }
  bool is_equivalent(const mx::Primitive& other) const override {
    auto& o = static_cast<const LayerStep&>(other);
    return isa_ == o.isa_ && shape_ == o.shape_ && kinds_ == o.kinds_;
  }

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto [held, out] = bind_arrays(stream(), inputs, outputs);
    mx::cpu::get_command_encoder(stream()).dispatch(
        [isa = isa_, shape = shape_, kinds = kinds_, held = std::move(held), out = std::move(out)]() mutable {
          Run(*isa, shape, kinds, held, out);
        });
  }

 private:
  const Isa* isa_;
  const char* name_;
  Shape shape_;
  std::vector<LinearKind> kinds_;
  std::vector<mx::Shape> out_shapes_;
};

// The outputs (float32, of out_shapes) of LayerStep<Shape, Run> over `arrays`. Weights are
// dense already and take no node; what is not (x, states) is made so, except `strided` inputs,
// which the step reads by their strides.
template <class Shape, RunStep<Shape> Run>
std::vector<mx::array> make_step(const char* name, const std::vector<mx::array>& arrays, const std::vector<LinearKind>& kinds,
                                 const Shape& shape, const Isa* isa, std::vector<mx::Shape> out_shapes,
                                 std::vector<size_t> strided = {}) {
  auto s = mx::to_stream(mx::Device::cpu);
  std::vector<mx::array> inputs;
  for (size_t i = 0; i < arrays.size(); ++i) {
    const mx::array& a = arrays[i];
    const bool as_is = (a.is_available() && a.flags().row_contiguous) ||
                       std::find(strided.begin(), strided.end(), i) != strided.end();
    inputs.push_back(as_is ? a : mx::contiguous(a, false, s));
  }
  std::vector<mx::Dtype> dtypes(out_shapes.size(), mx::float32);
  return mx::array::make_arrays(out_shapes, dtypes, std::make_shared<LayerStep<Shape, Run>>(s, isa, name, shape, kinds, out_shapes),
                                inputs);
}

// -- the DeltaNet layer ---------------------------------------------------------------------

enum DeltaInput { kX, kConvState, kState, kInputNorm, kPostNorm, kConv, kALog, kDtBias, kGateNorm, kDeltaFirst };
enum DeltaProj { kQkv, kZ, kB, kA, kOut, kMlpGate };

void run_deltanet(const Isa& isa, const DeltaNetShape& d, const std::vector<LinearKind>& kinds,
                  const std::vector<mx::array>& in, std::vector<mx::array>& out) {
  const int H = d.hidden, Kc = d.conv_kernel, Hk = d.k_heads, Hv = d.v_heads, Dk = d.k_dim, Dv = d.v_dim;
  const int key = Hk * Dk, value = Hv * Dv, C = 2 * key + value, I = d.intermediate;
  const Projections project(isa, kinds, in, kDeltaFirst);

  thread_local Scratch<float> scratch;
  float* normed = scratch.get(static_cast<size_t>(2 * H + 2 * C + 4 * value + 2 * Hv + 3 * H + 2 * I));
  float *qkv = normed + H, *z = qkv + C, *b = z + value, *a = b + Hv, *mixed = a + Hv, *o = mixed + C;
  float *gated = o + value, *h = gated + value, *mlp = h + H;

  const float* x = in[kX].data<float>();
  isa.norm(x, in[kInputNorm].data<float>(), nullptr, d.eps, true, H, 0, 1, normed);
  project(kQkv, normed, H, C, qkv);
  project(kZ, normed, H, value, z);
  project(kB, normed, H, Hv, b);
  project(kA, normed, H, Hv, a);

  // conv + SiLU over [the state's Kc - 1 rows; qkv] (the weight's taps as (Kc, C)); the new
  // state is the last Kc - 1 of those rows
  const float* conv_state = in[kConvState].data<float>();
  const float* rows[16];
  for (int k = 0; k < Kc - 1; ++k) rows[k] = conv_state + static_cast<long>(k) * C;
  rows[Kc - 1] = qkv;
  isa.conv_silu(rows, in[kConv].data<float>(), Kc, C, mixed);
  float* new_conv = out[1].data<float>();
  for (int k = 1; k < Kc; ++k) std::copy_n(rows[k], C, new_conv + static_cast<long>(k - 1) * C);

  // q and k L2-normalised per head (an RMSNorm with eps scaled by 1 / Dk), q also by Dk^-1/2,
  // in place: mixed = [q | k | v]
  const float inv_scale = 1.0f / std::sqrt(static_cast<float>(Dk));
  isa.norm(mixed, nullptr, nullptr, d.qk_eps * inv_scale * inv_scale, true, Dk, 0, 2 * Hk, mixed);
  for (int i = 0; i < key; ++i) mixed[i] *= inv_scale * inv_scale;
  for (int i = key; i < 2 * key; ++i) mixed[i] *= inv_scale;
  const float *q = mixed, *k = mixed + key, *v = mixed + 2 * key;

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
      isa.delta_step(state + i * S, q + kh * Dk, k + kh * Dk, v + i * Dv, a[i], b[i], Dv, Dk, new_state + i * S, o + i * Dv);
    }
  });

  isa.norm(o, in[kGateNorm].data<float>(), nullptr, d.gate_eps, true, Dv, 0, Hv, o);
  isa.activation(Act::swiglu, z, o, 0, value, gated);
  project(kOut, gated, value, H, h);
  for (int i = 0; i < H; ++i) h[i] += x[i];
  mlp_residual(isa, project, kMlpGate, h, in[kPostNorm].data<float>(), d.eps, H, I, mlp, out[0].data<float>());
}

// -- the attention layer --------------------------------------------------------------------

enum FrontInput { kFrontX, kFrontNorm, kQNorm, kKNorm, kFreqs, kFrontFirst };
enum FrontProj { kQ, kK, kV };

void run_attention_front(const Isa& isa, const AttentionShape& d, const std::vector<LinearKind>& kinds,
                         const std::vector<mx::array>& in, std::vector<mx::array>& out) {
  const int H = d.hidden, nh = d.heads, nkv = d.kv_heads, D = d.head_dim, half = d.rotary / 2;
  const Projections project(isa, kinds, in, kFrontFirst);
  thread_local Scratch<float> scratch;
  float* normed = scratch.get(static_cast<size_t>(H + 2 * nh * D));
  float* qg = normed + H;
  float *q = out[0].data<float>(), *k = out[1].data<float>(), *v = out[2].data<float>(), *gate = out[3].data<float>();

  isa.norm(in[kFrontX].data<float>(), in[kFrontNorm].data<float>(), nullptr, d.eps, true, H, 0, 1, normed);
  project(kQ, normed, H, 2 * nh * D, qg);  // per head [query | gate]
  project(kK, normed, H, nkv * D, k);
  project(kV, normed, H, nkv * D, v);
  for (int h = 0; h < nh; ++h) {
    std::copy_n(qg + 2L * h * D, D, q + static_cast<long>(h) * D);
    std::copy_n(qg + 2L * h * D + D, D, gate + static_cast<long>(h) * D);
  }
  isa.norm(q, in[kQNorm].data<float>(), nullptr, d.eps, true, D, 0, nh, q);
  isa.norm(k, in[kKNorm].data<float>(), nullptr, d.eps, true, D, 0, nkv, k);
  // rotate-half RoPE of the first `rotary` dims at position offset, as MLX's fast.rope composes
  // it on the CPU: theta = offset·(1 / freq), x1·cos - x2·sin and x1·sin + x2·cos
  const float* freqs = in[kFreqs].data<float>();
  for (int i = 0; i < half; ++i) {
    const float theta = static_cast<float>(d.offset) * (1.0f / freqs[i]);
    const float c = std::cos(theta), s = std::sin(theta);
    for (float* row : {q, k}) {
      for (int r = 0; r < (row == q ? nh : nkv); ++r) {
        float* p = row + static_cast<long>(r) * D;
        const float x1 = p[i], x2 = p[i + half];
        p[i] = x1 * c - x2 * s;
        p[i + half] = x1 * s + x2 * c;
      }
    }
  }
}

enum BackInput { kBackX, kBackQ, kKeys, kValues, kGate, kBackNorm, kBackFirst };
enum BackProj { kO, kBackMlpGate };

void run_attention_back(const Isa& isa, const AttentionShape& d, const std::vector<LinearKind>& kinds,
                        const std::vector<mx::array>& in, std::vector<mx::array>& out) {
  const int H = d.hidden, nh = d.heads, nkv = d.kv_heads, D = d.head_dim, I = d.intermediate;
  const Projections project(isa, kinds, in, kBackFirst);
  const mx::array &keys = in[kKeys], &values = in[kValues];  // (1, nkv, S, D) views of the cache: by their strides
  const int S = keys.shape(2);
  thread_local Scratch<float> scratch;
  float* o = scratch.get(static_cast<size_t>(2 * nh * D + nh * S + 3 * H + 2 * I));
  float *sig = o + nh * D, *probs = sig + nh * D, *h = probs + nh * S, *mlp = h + H;

  const float *q = in[kBackQ].data<float>(), *kp = keys.data<float>(), *vp = values.data<float>();
  const auto ks = keys.strides(), vs = values.strides();
  const int per_kv = nh / nkv;
  // A cache's views hold each position's D values side by side; other strides are gathered so.
  const bool rows = ks[3] == 1 && vs[3] == 1;
  Pool::get().parallel_for(nh, 1, [&](long h0, long h1) {
    thread_local Scratch<float> gathered;
    for (long hd = h0; hd < h1; ++hd) {
      const long kv = hd / per_kv;
      const float *kh = kp + kv * ks[1], *vh = vp + kv * vs[1];
      long key_stride = ks[2], value_stride = vs[2];
      if (!rows) {
        float* kg = gathered.get(2 * static_cast<size_t>(S) * D);
        float* vg = kg + static_cast<long>(S) * D;
        for (long s = 0; s < S; ++s) {
          for (int i = 0; i < D; ++i) {
            kg[s * D + i] = kh[s * ks[2] + i * ks[3]];
            vg[s * D + i] = vh[s * vs[2] + i * vs[3]];
          }
        }
        kh = kg;
        vh = vg;
        key_stride = value_stride = D;
      }
      isa.attend(q + hd * D, kh, key_stride, vh, value_stride, S, D, d.scale, probs + hd * S, o + hd * D);
    }
  });

  const float* gate = in[kGate].data<float>();
  isa.activation(Act::sigmoid, gate, nullptr, 0, nh * D, sig);
  for (int i = 0; i < nh * D; ++i) o[i] *= sig[i];
  project(kO, o, nh * D, H, h);
  const float* x = in[kBackX].data<float>();
  for (int i = 0; i < H; ++i) h[i] += x[i];
  mlp_residual(isa, project, kBackMlpGate, h, in[kBackNorm].data<float>(), d.eps, H, I, mlp, out[0].data<float>());
}

bool is_f32(const mx::array& a) { return a.dtype() == mx::float32; }

}  // namespace

std::vector<mx::array> deltanet_decode(const std::vector<mx::array>& arrays, const std::vector<LinearKind>& kinds,
                                       const DeltaNetShape& d, const Isa* isa) {
  const char* step = "deltanet_decode";
  const int H = d.hidden, key = d.k_heads * d.k_dim, value = d.v_heads * d.v_dim, C = 2 * key + value;
  check(d.conv_kernel >= 2 && d.conv_kernel <= 16 && d.k_heads > 0 && d.v_heads % d.k_heads == 0, step,
        "conv kernel 2-16, value heads a multiple of key heads");
  check(arrays.size() > kDeltaFirst, step, "x, the two states, norms, conv, A_log, dt_bias, then the projections");
  for (int i = 0; i < kDeltaFirst; ++i) check(is_f32(arrays[i]), step, "activations, states and norms float32");
  check(arrays[kX].size() == static_cast<size_t>(H), step, "x is one token of one sequence");
  check(arrays[kConvState].size() == static_cast<size_t>(d.conv_kernel - 1) * C, step, "the conv state (1, kernel - 1, conv dim)");
  check(arrays[kState].size() == static_cast<size_t>(d.v_heads) * d.v_dim * d.k_dim, step, "the state (1, Hv, Dv, Dk)");
  check(arrays[kConv].shape() == mx::Shape{d.conv_kernel, C}, step, "the conv weight's taps (kernel, conv dim)");
  check(arrays[kInputNorm].size() == static_cast<size_t>(H) && arrays[kPostNorm].size() == static_cast<size_t>(H) &&
            arrays[kGateNorm].size() == static_cast<size_t>(d.v_dim) && arrays[kALog].size() == static_cast<size_t>(d.v_heads) &&
            arrays[kDtBias].size() == static_cast<size_t>(d.v_heads),
        step, "norm, A_log and dt_bias sizes");
  Projections::check_inputs(step, arrays, kDeltaFirst, kinds,
                            {{H, C}, {H, value}, {H, d.v_heads}, {H, d.v_heads}, {value, H},
                             {H, d.intermediate}, {H, d.intermediate}, {d.intermediate, H}});
  return make_step<DeltaNetShape, run_deltanet>("CpuDeltaNetDecodeLayer", arrays, kinds, d, isa,
                                                {arrays[kX].shape(), arrays[kConvState].shape(), arrays[kState].shape()});
}

std::vector<mx::array> attention_decode_front(const std::vector<mx::array>& arrays, const std::vector<LinearKind>& kinds,
                                              const AttentionShape& d, const Isa* isa) {
  const char* step = "attention_decode_front";
  const int H = d.hidden, nh = d.heads, nkv = d.kv_heads, D = d.head_dim;
  check(nkv > 0 && nh % nkv == 0 && d.rotary % 2 == 0 && d.rotary <= D && d.offset >= 0, step,
        "query heads a multiple of kv heads, an even rotary size within the head, a position");
  check(arrays.size() > kFrontFirst, step, "x, the norms, the RoPE frequencies, then the projections");
  for (int i = 0; i < kFrontFirst; ++i) check(is_f32(arrays[i]), step, "x, norms and frequencies float32");
  check(arrays[kFrontX].size() == static_cast<size_t>(H) && arrays[kFrontNorm].size() == static_cast<size_t>(H) &&
            arrays[kQNorm].size() == static_cast<size_t>(D) && arrays[kKNorm].size() == static_cast<size_t>(D) &&
            arrays[kFreqs].size() == static_cast<size_t>(d.rotary / 2),
        step, "x one token of one sequence; norm and frequency sizes");
  Projections::check_inputs(step, arrays, kFrontFirst, kinds, {{H, 2 * nh * D}, {H, nkv * D}, {H, nkv * D}});
  return make_step<AttentionShape, run_attention_front>("CpuAttentionDecodeFront", arrays, kinds, d, isa,
                                                        {{1, nh, 1, D}, {1, nkv, 1, D}, {1, nkv, 1, D}, {1, 1, nh * D}});
}

std::vector<mx::array> attention_decode_back(const std::vector<mx::array>& arrays, const std::vector<LinearKind>& kinds,
                                             const AttentionShape& d, const Isa* isa) {
  const char* step = "attention_decode_back";
  const int H = d.hidden, nh = d.heads, nkv = d.kv_heads, D = d.head_dim;
  check(nkv > 0 && nh % nkv == 0, step, "query heads a multiple of kv heads");
  check(arrays.size() > kBackFirst, step, "x, q, the cache's keys and values, the gate, the norm, then the projections");
  for (int i = 0; i < kBackFirst; ++i) check(is_f32(arrays[i]), step, "x, q, keys, values, gate and norm float32");
  const mx::array &keys = arrays[kKeys], &values = arrays[kValues];
  check(arrays[kBackX].size() == static_cast<size_t>(H) && arrays[kBackQ].size() == static_cast<size_t>(nh) * D &&
            arrays[kGate].size() == static_cast<size_t>(nh) * D && arrays[kBackNorm].size() == static_cast<size_t>(H),
        step, "x, q and the gate one token of one sequence");
  check(keys.ndim() == 4 && keys.shape(0) == 1 && keys.shape(1) == nkv && keys.shape(3) == D && values.shape() == keys.shape(),
        step, "keys and values (1, kv heads, S, head dim)");
  Projections::check_inputs(step, arrays, kBackFirst, kinds, {{nh * D, H}, {H, d.intermediate}, {H, d.intermediate}, {d.intermediate, H}});
  return make_step<AttentionShape, run_attention_back>("CpuAttentionDecodeBack", arrays, kinds, d, isa,
                                                       {arrays[kBackX].shape()}, {kKeys, kValues});
}

}  // namespace cpuk
