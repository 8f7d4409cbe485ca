// Softmax along the last axis of a float32 array on MLX's CPU backend: Isa::softmax over rows,
// the rows split over the pool. A vision layer's scores (16 heads of 1024 x 1024) took ~300 ms
// through MLX's ops (its max, the exp of fast_math.py, sum and divide are single-threaded
// passes over 64 MB each); here each row stays in L1 through its three passes.

#include "softmax.h"

#include <stdexcept>

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

}  // namespace

mx::array softmax(const mx::array& x, const Isa* isa) {
  if (x.dtype() != mx::float32 || x.ndim() < 1) throw std::invalid_argument("[cpu_kernels] softmax takes float32 (..., S)");
  auto s = mx::to_stream(mx::Device::cpu);
  return mx::array(x.shape(), mx::float32, std::make_shared<Softmax>(s, isa), {mx::contiguous(x, false, s)});
}

}  // namespace cpuk
