// Softmax (and logsumexp) along the last axis of a float32 array on MLX's CPU backend: Isa::softmax over rows,
// the rows split over the pool. A vision layer's scores (16 heads of 1024 x 1024) took ~300 ms
// through MLX's ops (its max, the exp of fast_math.py, sum and divide are single-threaded
// passes over 64 MB each); here each row stays in L1 through its three passes.

#include "softmax.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <stdexcept>
#include <vector>

#include "mlx/backend/cpu/encoder.h"
#include "mlx/ops.h"
#include "mlx/primitives.h"
#include "bind.h"
#include "pool.h"

namespace mx = mlx::core;

namespace cpuk {

namespace {

class Softmax : public mx::UnaryPrimitive {
 public:
  Softmax(mx::Stream s, const Isa* isa) : mx::UnaryPrimitive(s), isa_(isa) {}

  const char* name() const override { return "CpuSoftmax"; }
  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("[cpu_kernels] CPU only: on a GPU MLX's own softmax runs.");
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& in) override { return {in[0].shape()}; }
  bool is_equivalent(const mx::Primitive& other) const override {
    return isa_ == static_cast<const Softmax&>(other).isa_;
  }

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    auto [in, outs] = bind_arrays(stream(), inputs, out);
    mx::cpu::get_command_encoder(stream()).dispatch([isa = isa_, x = in[0], y = outs[0]]() mutable {
      const int S = x.shape(-1);
      const long rows = S == 0 ? 0 : static_cast<long>(x.size() / S);
      const float* xp = x.data<float>();
      float* yp = y.data<float>();
      Pool::get().parallel_for(rows, 8, [&](long b, long e) { isa->softmax(xp, S, b, e, yp); });
    });
  }

 private:
  const Isa* isa_;
};

constexpr long kLogSumExpPart = 1 << 14;  // floats a part of a row at least

// A row's logsumexp from its parts' (max, Σ e^(x - max)): MLX's -inf, +inf and NaN where the row
// has them.
float combine(const float* tops, const float* sums, const bool* nans, long parts) {
  float top = -__builtin_huge_valf();
  for (long p = 0; p < parts; ++p) {
    if (nans[p] || tops[p] != tops[p]) return __builtin_nanf("");
    top = std::max(top, tops[p]);
  }
  if (top == -__builtin_huge_valf() || top == __builtin_huge_valf()) return top;
  float total = 0.0f;
  for (long p = 0; p < parts; ++p) total += sums[p] * std::exp(tops[p] - top);
  return top + std::log(total);
}

// log Σ e^x along the last axis: a generation step's 248k logits took 3 ms through MLX's exp, 1
// through fast_math's MLX kernels (one thread each); here the rows, or parts of a row, on the pool.
class LogSumExp : public mx::UnaryPrimitive {
 public:
  LogSumExp(mx::Stream s, const Isa* isa) : mx::UnaryPrimitive(s), isa_(isa) {}

  const char* name() const override { return "CpuLogSumExp"; }
  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("[cpu_kernels] CPU only: on a GPU MLX's own logsumexp runs.");
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& in) override {
    auto shape = in[0].shape();
    shape.back() = 1;
    return {shape};
  }
  bool is_equivalent(const mx::Primitive& other) const override {
    return isa_ == static_cast<const LogSumExp&>(other).isa_;
  }

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    auto [in, outs] = bind_arrays(stream(), inputs, out);
    mx::cpu::get_command_encoder(stream()).dispatch([isa = isa_, x = in[0], y = outs[0]]() mutable {
      const long S = x.shape(-1), rows = static_cast<long>(y.size());
      const long threads = Pool::get().threads();
      const long parts = rows >= threads ? 1 : std::max(1L, std::min(threads, S / kLogSumExpPart));
      std::vector<float> tops(rows * parts), sums(rows * parts);
      std::unique_ptr<bool[]> nans(new bool[rows * parts]);
      const float* xp = x.data<float>();
      Pool::get().parallel_for(rows * parts, 1, [&](long b, long e) {
        for (long i = b; i < e; ++i) {
          const long row = i / parts, p = i % parts, begin = S * p / parts, end = S * (p + 1) / parts;
          isa->max_sum_exp(xp + row * S + begin, end - begin, &tops[i], &sums[i], &nans[i]);
        }
      });
      float* yp = y.data<float>();
      for (long r = 0; r < rows; ++r) yp[r] = combine(&tops[r * parts], &sums[r * parts], &nans[r * parts], parts);
    });
  }

 private:
  const Isa* isa_;
};

}  // namespace

mx::array logsumexp(const mx::array& x, const Isa* isa) {
  if (x.dtype() != mx::float32 || x.ndim() < 1 || x.shape(-1) == 0)
    throw std::invalid_argument("[cpu_kernels] logsumexp takes float32 (..., S), S > 0");
  auto s = mx::to_stream(mx::Device::cpu);
  auto shape = x.shape();
  shape.back() = 1;
  return mx::array(shape, mx::float32, std::make_shared<LogSumExp>(s, isa), {mx::contiguous(x, false, s)});
}

mx::array softmax(const mx::array& x, const Isa* isa) {
  if (x.dtype() != mx::float32 || x.ndim() < 1) throw std::invalid_argument("[cpu_kernels] softmax takes float32 (..., S)");
  auto s = mx::to_stream(mx::Device::cpu);
  return mx::array(x.shape(), mx::float32, std::make_shared<Softmax>(s, isa), {mx::contiguous(x, false, s)});
}

}  // namespace cpuk
