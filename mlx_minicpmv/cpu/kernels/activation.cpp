// The vision MLP's tanh-GELU and the language MLP's SwiGLU on MLX's CPU backend: Isa::activation
// over parts of the array on every core. fast_math.py's versions are MLX compiled kernels, which
// run on one thread (a 1024-patch slice's GELU over 1024 x 4304 floats took 24-47 ms a layer).

#include "activation.h"

#include <stdexcept>

#include "mlx/backend/cpu/encoder.h"
#include "mlx/ops.h"
#include "mlx/primitives.h"
#include "bind.h"
#include "pool.h"

namespace mx = mlx::core;

namespace cpuk {

namespace {

constexpr long kGrain = 1 << 14;  // elements a part at least: a part's cost well above the pool's wake-up

class Activation : public mx::UnaryPrimitive {
 public:
  Activation(mx::Stream s, const Isa* isa, Act act) : mx::UnaryPrimitive(s), isa_(isa), act_(act) {}

  const char* name() const override {
    switch (act_) {
      case Act::gelu_tanh: return "CpuGeluTanh";
      case Act::swiglu: return "CpuSwiGLU";
      case Act::silu: return "CpuSiLU";
      default: return "CpuSigmoid";
    }
  }
  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("[cpu_kernels] CPU only: on a GPU MLX's own activations run.");
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& in) override { return {in[0].shape()}; }
  bool is_equivalent(const mx::Primitive& other) const override {
    auto& o = static_cast<const Activation&>(other);
    return isa_ == o.isa_ && act_ == o.act_;
  }

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    auto [held, outs] = bind_arrays(stream(), inputs, out);
    mx::cpu::get_command_encoder(stream()).dispatch([isa = isa_, act = act_, held = std::move(held), y = outs[0]]() mutable {
      const float* a = held[0].data<float>();
      const float* b = held.size() > 1 ? held[1].data<float>() : nullptr;
      float* yp = y.data<float>();
      Pool::get().parallel_for(static_cast<long>(y.size()), kGrain,
                               [&](long i0, long i1) { isa->activation(act, a, b, i0, i1, yp); });
    });
  }

 private:
  const Isa* isa_;
  Act act_;
};

mx::array call(std::vector<mx::array> inputs, const Isa* isa, Act act) {
  auto s = mx::to_stream(mx::Device::cpu);
  for (auto& a : inputs) {
    if (a.dtype() != mx::float32 || a.shape() != inputs[0].shape())
      throw std::invalid_argument("[cpu_kernels] activations take float32 arrays of one shape");
    a = mx::contiguous(a, false, s);
  }
  auto shape = inputs[0].shape();
  return mx::array(shape, mx::float32, std::make_shared<Activation>(s, isa, act), std::move(inputs));
}

}  // namespace

mx::array activation(const mx::array& x, const Isa* isa, Act act) {
  if (act == Act::swiglu) throw std::invalid_argument("[cpu_kernels] SwiGLU takes two arrays");
  return call({x}, isa, act);
}

mx::array swiglu(const mx::array& gate, const mx::array& x, const Isa* isa) { return call({gate, x}, isa, Act::swiglu); }

}  // namespace cpuk
