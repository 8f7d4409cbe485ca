// x @ W.T on MLX's CPU backend for W as stored: MLX's affine quantisation (4 or 8 bits, groups
// of 32, 64 or 128) or bf16/fp16, x and the result in float32. Two MLX primitives over the
// kernels of kernels.h, and the Python module.
//
// Up to kGemvRows rows of x each run as a GEMV over all cores (Pool): the weights are widened
// in registers as they stream by, so a decoded token reads each weight byte once. More rows
// (prefill, the vision tower) run as a GEMM: a tile of the weights is widened into a cache-
// sized fp32 buffer and multiplied by OpenBLAS's sgemm (with the symbol of the BLAS loaded
// globally before mlx.core, mlx_minicpmv/blas.py), so no more than one tile of fp32 weights
// ever exists and the GEMM runs at fp32 BLAS speed. Where the CPU has AMX, bf16 and quantised
// weights go to its tile unit instead (amx.cpp: 1.6-2.7x sgemm's rate at the model's shapes);
// where it has VNNI and no AMX, quantised weights go to its integer dot products (vnni_gemm.cpp),
// and where it has AVX-512, half weights are widened straight into an FMA GEMM's panels
// (half_gemm.cpp).

#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/vector.h>
#include <nanobind/stl/optional.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "activation.h"
#include "bind.h"
#include "conv.h"
#include "decode_layer.h"
#include "delta.h"
#include "norm.h"
#include "kernels.h"
#include "linear.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/ops.h"
#include "mlx/primitives.h"
#include "pool.h"
#include "scan.h"
#include "scratch.h"
#include "softmax.h"

namespace mx = mlx::core;
namespace nb = nanobind;
using cpuk::Float;
using cpuk::Isa;

extern "C" {
enum CBLAS_ORDER { CblasRowMajor = 101 };
enum CBLAS_TRANSPOSE { CblasNoTrans = 111, CblasTrans = 112 };
void cblas_sgemm(CBLAS_ORDER order, CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, float alpha,
                 const float* a, int lda, const float* b, int ldb, float beta, float* c, int ldc);
}

namespace {

constexpr int kGemvRows = 4;         // below this many rows of x, GEMVs; from it on, the tiled GEMM
constexpr long kTileFloats = 1 << 20;  // 4 MB of widened weights per sgemm call
constexpr int kSharedWidenRows = 64;   // below this many rows the pool widens the tiles

Float float_of(mx::Dtype d) {
  if (d == mx::bfloat16) return Float::bf16;
  if (d == mx::float16) return Float::f16;
  if (d == mx::float32) return Float::f32;
  throw std::invalid_argument("[cpu_kernels] scales and half weights must be float32, bfloat16 or float16");
}

// x in the kernels' nibble order: each block of `block` values, evens first, then odds (kernels.h).
void permute_nibble_order(const float* x, long n, int block, float* out) {
  const int half = block / 2;
  for (long b = 0; b < n; b += block) {
    for (int i = 0; i < half; ++i) {
      out[b + i] = x[b + 2 * i];
      out[b + half + i] = x[b + 2 * i + 1];
    }
  }
}

// The rows of x that run as GEMVs: widen in registers, split the output over the pool.
template <class Gemv>
void gemv_rows(const float* x, int M, int K, int N, float* y, Gemv gemv) {
  for (int m = 0; m < M; ++m) {
    const float* xm = x + static_cast<long>(m) * K;
    float* ym = y + static_cast<long>(m) * N;
    cpuk::Pool::get().parallel_for(N, 16, [&](long b, long e) { gemv(xm, static_cast<int>(b), static_cast<int>(e), ym + b); });
  }
}

// The GEMM: tiles of widened weight rows, each multiplied by sgemm. With many rows the
// widening is a few percent of the sgemm and runs on this thread alone, so that it does not
// contend with OpenBLAS's threads (which spin between calls); with few, the pool shares it.
template <class Widen>
void gemm_tiles(const float* x, int M, int K, int N, float* y, Widen widen) {
  // Scratch that lives with the thread (MLX's stream thread): a fresh 4 MB tile per call would
  // be a fresh mmap, zeroed page by page, every time.
  thread_local cpuk::Scratch<float> buffer;
  const int rows = static_cast<int>(std::max<long>(16, std::min<long>(N, kTileFloats / K)));
  float* tile = buffer.get(static_cast<size_t>(rows) * K);
  for (int n0 = 0; n0 < N; n0 += rows) {
    const int nb = std::min(rows, N - n0);
    auto part = [&](long b, long e) { widen(n0 + static_cast<int>(b), n0 + static_cast<int>(e), tile + b * K); };
    if (M < kSharedWidenRows) {
      cpuk::Pool::get().parallel_for(nb, 8, part);
    } else {
      part(0, nb);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, nb, K, 1.0f, x, K, tile, K, 0.0f, y + n0, N);
  }
}

// The rows of x as GEMVs in integer dot products (vnni.cpp): each row's digits and group sums
// made once, then its output split over the pool.
void gemv_digits(const Isa& isa, const cpuk::Quantized& q, const float* x, int M, int N, float* y) {
  const int K = q.K, G = K / q.group;
  thread_local cpuk::Scratch<int8_t> digits;
  thread_local cpuk::Scratch<float> sums;
  int8_t* d = digits.get(static_cast<size_t>(cpuk::digit_bytes(K, q.bits)));
  float* xscale = sums.get(2 * static_cast<size_t>(G));
  float* xsum = xscale + G;
  for (int m = 0; m < M; ++m) {
    const float* xm = x + static_cast<long>(m) * K;
    isa.x_digits(xm, K, q.group, q.bits, d, xscale, xsum);
    float* ym = y + static_cast<long>(m) * N;
    cpuk::Pool::get().parallel_for(N, 16, [&](long b, long e) {
      isa.qgemv_digits(q, d, xscale, xsum, static_cast<int>(b), static_cast<int>(e), ym + b);
    });
  }
}

// y = x @ W.T for quantised W: in = w, scales, biases.
void run_quantized(const Isa& isa, int group, int bits, const mx::array* in, const float* x, int M, int K, int N,
                   float* y) {
  const cpuk::Quantized q{in[0].data<uint32_t>(), in[1].data<void>(), in[2].data<void>(), float_of(in[1].dtype()),
                          K, group, bits};
  if (M >= kGemvRows && isa.quantized_gemm != nullptr) return isa.quantized_gemm(q, x, M, N, y);
  if (M < kGemvRows && isa.qgemv_digits != nullptr)
    return gemv_digits(isa, q, x, M, N, y);
  thread_local cpuk::Scratch<float> permuted;
  if (bits == 4) {  // the nibble order, once for all rows
    float* xp = permuted.get(static_cast<size_t>(M) * K);
    permute_nibble_order(x, static_cast<long>(M) * K, isa.nibble_block, xp);
    x = xp;
  }
  if (M >= kGemvRows) {
    return gemm_tiles(x, M, K, N, y, [&](int n0, int n1, float* tile) { isa.qdequant(q, n0, n1, tile); });
  }
  const int G = K / group;
  thread_local cpuk::Scratch<float> sums_buffer;
  float* xsum = sums_buffer.get(static_cast<size_t>(M) * G);
  std::fill(xsum, xsum + static_cast<long>(M) * G, 0.0f);
  for (long i = 0; i < static_cast<long>(M) * K; ++i) xsum[i / group] += x[i];
  for (int m = 0; m < M; ++m) {
    const float* sums = xsum + static_cast<long>(m) * G;
    gemv_rows(x + static_cast<long>(m) * K, 1, K, N, y + static_cast<long>(m) * N,
              [&](const float* xm, int n0, int n1, float* ym) { isa.qgemv(q, xm, sums, n0, n1, ym); });
  }
}

// y = x @ W.T for bf16 or fp16 W: in = w.
void run_half(const Isa& isa, const mx::array* in, const float* x, int M, int K, int N, float* y) {
  const uint16_t* w = in[0].data<uint16_t>();
  const Float dtype = float_of(in[0].dtype());
  if (M >= kGemvRows) {
    if (isa.bf16_gemm != nullptr && dtype == Float::bf16) return isa.bf16_gemm(w, K, x, M, N, y);
    if (isa.half_gemm != nullptr) return isa.half_gemm(w, dtype, K, x, M, N, y);
    return gemm_tiles(x, M, K, N, y, [&](int n0, int n1, float* tile) { isa.hwiden(w, dtype, K, n0, n1, tile); });
  }
  gemv_rows(x, M, K, N, y, [&](const float* xm, int n0, int n1, float* ym) { isa.hgemv(w, dtype, K, xm, n0, n1, ym); });
}

// y = x @ W.T for fp32 W (in = w) and a few rows of x: the rows together over the pool,
// each weight read once. MLX's own matmul is a GEMM that packs the weights first, which for
// 2-8 rows costs about what it does for 500 (a batch's decode step paid it in every layer).
void run_float(const Isa& isa, const mx::array* in, const float* x, int M, int K, int N, float* y) {
  const float* w = in[0].data<float>();
  for (int m0 = 0; m0 < M; m0 += cpuk::kMaxRows) {
    const int rows = std::min(cpuk::kMaxRows, M - m0);
    const float* xm = x + static_cast<long>(m0) * K;
    float* ym = y + static_cast<long>(m0) * N;
    cpuk::Pool::get().parallel_for(N, 16, [&](long b, long e) {
      isa.fgemv(w, K, xm, rows, static_cast<int>(b), static_cast<int>(e), ym + b, N);
    });
  }
}

}  // namespace

std::string cpuk::weights_problem(int bits, int group, const mx::array* weights, int K, int N) {
  const mx::array& w = weights[0];
  if (bits == 32) return w.dtype() == mx::float32 && w.shape() == mx::Shape{N, K} ? "" : "w must be (N, K) float32";
  if (bits == 16) {
    const bool half = w.dtype() == mx::bfloat16 || w.dtype() == mx::float16;
    return half && w.shape() == mx::Shape{N, K} ? "" : "w must be (N, K) bfloat16 or float16";
  }
  if (bits != 4 && bits != 8) return "bits must be 4 or 8";
  if (group != 32 && group != 64 && group != 128) return "group_size must be 32, 64 or 128";
  if (w.dtype() != mx::uint32 || w.shape() != mx::Shape{N, K * bits / 32}) return "w must be (N, K·bits/32) uint32";
  const mx::array &scales = weights[1], &biases = weights[2];
  if (K % group != 0 || scales.shape() != mx::Shape{N, K / group} || biases.shape() != scales.shape() ||
      biases.dtype() != scales.dtype())
    return "scales and biases must be (N, K / group_size), of one dtype";
  if (scales.dtype() != mx::float32 && scales.dtype() != mx::bfloat16 && scales.dtype() != mx::float16)
    return "scales and half weights must be float32, bfloat16 or float16";
  return "";
}

void cpuk::linear(const Isa& isa, int bits, int group, const mx::array* weights, const float* x, int M, int K, int N,
                  float* y) {
  if (bits == 32) return run_float(isa, weights, x, M, K, N, y);
  if (bits == 16) return run_half(isa, weights, x, M, K, N, y);
  run_quantized(isa, group, bits, weights, x, M, K, N, y);
}

namespace {

// One primitive for all: bits 4 or 8 with four inputs (quantised), 16 with two (half), 32 with
// two (fp32, few rows).
class CpuMatmul : public mx::UnaryPrimitive {
 public:
  CpuMatmul(mx::Stream s, const Isa* isa, int group, int bits) : mx::UnaryPrimitive(s), isa_(isa), group_(group), bits_(bits) {}

  const char* name() const override {
    return bits_ == 32 ? "CpuRowsMatmul" : bits_ == 16 ? "CpuHalfMatmul" : "CpuQuantizedMatmul";
  }
  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("[cpu_kernels] CPU only: on a GPU MLX's own quantised and half matmuls run.");
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    auto shape = inputs[0].shape();
    shape.back() = inputs[1].shape(0);
    return {shape};
  }
  bool is_equivalent(const mx::Primitive& other) const override {
    auto& o = static_cast<const CpuMatmul&>(other);
    return isa_ == o.isa_ && group_ == o.group_ && bits_ == o.bits_;
  }

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    auto [held, outs] = cpuk::bind_arrays(stream(), inputs, out);
    mx::cpu::get_command_encoder(stream()).dispatch([isa = isa_, group = group_, bits = bits_, held = std::move(held),
                                                     out = outs[0]]() mutable {
      const int K = held[0].shape(-1), N = out.shape(-1);
      const int M = static_cast<int>(held[0].size() / K);
      cpuk::linear(*isa, bits, group, &held[1], held[0].data<float>(), M, K, N, out.data<float>());
    });
  }

 private:
  const Isa* isa_;
  int group_, bits_;
};

const Isa* isa_or_best(const std::string& name) {
  if (name.empty()) return cpuk::best_isa();
  if (const Isa* isa = cpuk::isa_named(name.c_str())) return isa;
  throw std::invalid_argument("[cpu_kernels] the kernels '" + name + "' do not run on this CPU (scalar always does)");
}

mx::Shape out_shape(const mx::array& x, const mx::array& w) {
  auto shape = x.shape();
  shape.back() = w.shape(0);
  return shape;
}

// weights (w first) as an (N, K) matrix of `bits` that x (..., K) multiplies, N and K read off w;
// or an error naming what is wrong.
void check_matmul(const mx::array& x, int bits, int group, const std::vector<mx::array>& weights) {
  const mx::array& w = weights[0];
  const int N = w.ndim() == 2 ? w.shape(0) : -1;
  const int K = w.ndim() != 2 ? -1 : bits == 4 || bits == 8 ? w.shape(1) * 32 / bits : w.shape(1);
  if (const std::string problem = cpuk::weights_problem(bits, group, weights.data(), K, N); !problem.empty())
    throw std::invalid_argument("[cpu_kernels] " + problem);
  if (x.dtype() != mx::float32) throw std::invalid_argument("[cpu_kernels] x must be float32");
  if (x.ndim() < 1 || x.shape(-1) != K) throw std::invalid_argument("[cpu_kernels] x (..., K) must match the weights' K");
}

mx::array quantized_matmul(const mx::array& x, const mx::array& w, const mx::array& scales, const mx::array& biases,
                           int group_size, int bits, const std::string& isa) {
  check_matmul(x, bits, group_size, {w, scales, biases});
  auto s = mx::to_stream(mx::Device::cpu);
  std::vector<mx::array> inputs = {mx::contiguous(x, false, s), mx::contiguous(w, false, s),
                                   mx::contiguous(scales, false, s), mx::contiguous(biases, false, s)};
  return mx::array(out_shape(x, w), mx::float32, std::make_shared<CpuMatmul>(s, isa_or_best(isa), group_size, bits),
                   std::move(inputs));
}

mx::array half_matmul(const mx::array& x, const mx::array& w, const std::string& isa) {
  check_matmul(x, 16, 0, {w});
  auto s = mx::to_stream(mx::Device::cpu);
  std::vector<mx::array> inputs = {mx::contiguous(x, false, s), mx::contiguous(w, false, s)};
  return mx::array(out_shape(x, w), mx::float32, std::make_shared<CpuMatmul>(s, isa_or_best(isa), 0, 16), std::move(inputs));
}

mx::array rows_matmul(const mx::array& x, const mx::array& w, const std::string& isa) {
  check_matmul(x, 32, 0, {w});
  auto s = mx::to_stream(mx::Device::cpu);
  std::vector<mx::array> inputs = {mx::contiguous(x, false, s), mx::contiguous(w, false, s)};
  return mx::array(out_shape(x, w), mx::float32, std::make_shared<CpuMatmul>(s, isa_or_best(isa), 0, 32), std::move(inputs));
}

std::vector<cpuk::LinearKind> linear_kinds(const std::vector<std::pair<int, int>>& kinds) {
  std::vector<cpuk::LinearKind> out;
  for (auto [bits, group] : kinds) out.push_back({bits, group});
  return out;
}

std::vector<std::string> runnable_isas() {
  const auto names = cpuk::runnable_isas();
  return {names.begin(), names.end()};
}

}  // namespace

NB_MODULE(_cpu_kernels, m) {
  m.def("quantized_matmul", &quantized_matmul, nb::arg("x"), nb::arg("w"), nb::arg("scales"), nb::arg("biases"),
        nb::arg("group_size"), nb::arg("bits"), nb::arg("isa") = "",
        "x @ dequantize(w, scales, biases).T for MLX's affine quantisation, x float32, on the CPU stream.");
  m.def("half_matmul", &half_matmul, nb::arg("x"), nb::arg("w"), nb::arg("isa") = "",
        "x @ w.T for bfloat16 or float16 w, x and the result float32, on the CPU stream.");
  m.def("rows_matmul", &rows_matmul, nb::arg("x"), nb::arg("w"), nb::arg("isa") = "",
        "x @ w.T for float32 w (N, K) and a few rows of x, each weight read once for all rows, on the CPU stream.");
  m.def("gated_delta_step",
        [](const mx::array& q, const mx::array& k, const mx::array& v, const mx::array& g, const mx::array& beta,
           const mx::array& state, const std::string& isa) {
          auto out = cpuk::gated_delta_step(q, k, v, g, beta, state, isa_or_best(isa));
          return std::make_pair(out[0], out[1]);
        },
        nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("g"), nb::arg("beta"), nb::arg("state"), nb::arg("isa") = "",
        "One decoded token of the gated delta rule: (y (B, H, Dv), state) for float32 q, k (B, H, Dk), v, g, beta "
        "(B, H) and state (B, H, Dv, Dk), on the CPU stream.");
  m.def("gated_delta_scan",
        [](const mx::array& q, const mx::array& k, const mx::array& v, const mx::array& g, const mx::array& beta,
           const mx::array& state, const std::string& isa) {
          auto out = cpuk::gated_delta_scan(q, k, v, g, beta, state, isa_or_best(isa));
          return std::make_pair(out[0], out[1]);
        },
        nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("g"), nb::arg("beta"), nb::arg("state"), nb::arg("isa") = "",
        "The gated delta rule over T tokens: (y (B, T, Hv, Dv), state) for float32 q, k (B, T, Hk, Dk), v, g, beta "
        "(B, T, Hv) and state (B, Hv, Dv, Dk), on the CPU stream.");
  m.def("softmax", [](const mx::array& x, const std::string& isa) { return cpuk::softmax(x, isa_or_best(isa)); },
        nb::arg("x"), nb::arg("isa") = "", "softmax along the last axis of float32 x, on the CPU stream.");
  m.def("logsumexp", [](const mx::array& x, const std::string& isa) { return cpuk::logsumexp(x, isa_or_best(isa)); },
        nb::arg("x"), nb::arg("isa") = "", "log of the sum of exp along the last axis of float32 x, kept as a last axis "
        "of 1, on the CPU stream.");
  m.def("activation",
        [](const mx::array& x, const std::string& name, const std::string& isa) {
          const cpuk::Act act = name == "gelu_tanh" ? cpuk::Act::gelu_tanh
                                : name == "silu"    ? cpuk::Act::silu
                                : name == "sigmoid" ? cpuk::Act::sigmoid
                                                    : throw std::invalid_argument("[cpu_kernels] no activation " + name);
          return cpuk::activation(x, isa_or_best(isa), act);
        },
        nb::arg("x"), nb::arg("name"), nb::arg("isa") = "", "gelu_tanh, silu or sigmoid of float32 x, on the CPU stream.");
  m.def("swiglu",
        [](const mx::array& gate, const mx::array& x, const std::string& isa) { return cpuk::swiglu(gate, x, isa_or_best(isa)); },
        nb::arg("gate"), nb::arg("x"), nb::arg("isa") = "", "silu(gate) * x for float32 arrays of one shape, on the CPU stream.");
  m.def("causal_conv_silu",
        [](const mx::array& state, const mx::array& x, const mx::array& w, const std::string& isa) {
          return cpuk::causal_conv_silu(state, x, w, isa_or_best(isa));
        },
        nb::arg("state"), nb::arg("x"), nb::arg("w"), nb::arg("isa") = "",
        "silu of the depthwise causal conv of [state; x] (B, K - 1 + S, C) with w (K, C): (B, S, C).");
  m.def("norm",
        [](const mx::array& x, const std::optional<mx::array>& weight, const std::optional<mx::array>& bias, float eps,
           bool rms, const std::string& isa) { return cpuk::norm(x, weight, bias, eps, rms, isa_or_best(isa)); },
        nb::arg("x"), nb::arg("weight").none(), nb::arg("bias").none(), nb::arg("eps"), nb::arg("rms"), nb::arg("isa") = "",
        "LayerNorm (rms=False) or RMSNorm (rms=True) of float32 x along its last axis, on the CPU stream.");
  m.def("deltanet_decode",
        [](const std::vector<mx::array>& arrays, const std::vector<std::pair<int, int>>& kinds, const std::vector<int>& dims,
           const std::vector<float>& eps, const std::string& isa) {
          if (dims.size() != 7 || eps.size() != 3)
            throw std::invalid_argument("[cpu_kernels] deltanet_decode: 7 dims and 3 eps");
          const cpuk::DeltaNetShape shape{dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], dims[6], eps[0], eps[1], eps[2]};
          auto out = cpuk::deltanet_decode(arrays, linear_kinds(kinds), shape, isa_or_best(isa));
          return nb::make_tuple(out[0], out[1], out[2]);
        },
        nb::arg("arrays"), nb::arg("kinds"), nb::arg("dims"), nb::arg("eps"), nb::arg("isa") = "",
        "One token through a DeltaNet decoder layer: (out, conv state, state); decode_layer.h names the arrays, "
        "kinds the projections' (bits, group), dims (hidden, intermediate, k_heads, v_heads, k_dim, v_dim, "
        "conv_kernel), eps (norms, gated norm, q/k L2 norm).");
  m.def("attention_decode",
        [](const std::vector<mx::array>& arrays, const std::vector<std::pair<int, int>>& kinds, const std::vector<int>& dims,
           const std::vector<float>& floats, bool front, const std::string& isa) {
          if (dims.size() != 7 || floats.size() != 2)
            throw std::invalid_argument("[cpu_kernels] attention_decode: 7 dims and 2 floats");
          const cpuk::AttentionShape shape{dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], dims[6], floats[0], floats[1]};
          if (!front) return nb::object(nb::cast(cpuk::attention_decode_back(arrays, linear_kinds(kinds), shape, isa_or_best(isa))[0]));
          auto out = cpuk::attention_decode_front(arrays, linear_kinds(kinds), shape, isa_or_best(isa));
          return nb::object(nb::make_tuple(out[0], out[1], out[2], out[3]));
        },
        nb::arg("arrays"), nb::arg("kinds"), nb::arg("dims"), nb::arg("floats"), nb::arg("front"), nb::arg("isa") = "",
        "One token through an attention decoder layer's front (q, k, v, gate) or back (the output); decode_layer.h "
        "names the arrays, kinds the projections' (bits, group), dims (hidden, intermediate, heads, kv_heads, "
        "head_dim, rotary, offset), floats (eps, scale).");
  m.def("runnable_isas", &runnable_isas, "The kernel sets this CPU runs, best first.");
  m.def("threads", [] { return cpuk::Pool::get().threads(); }, "Threads the GEMV uses.");
}
