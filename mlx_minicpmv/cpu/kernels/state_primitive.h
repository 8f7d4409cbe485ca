// What the two primitives over DeltaNet states share (delta.cpp's decode step, scan.cpp's prompt):
// CPU only, outputs shaped as their inputs v (2) and state (5), equal on the same instruction set,
// and the call that makes their outputs from the six float32 inputs (each checks its own shapes
// first); they bind their arrays for the task with bind.h's bind_arrays, as every primitive here.

#pragma once

#include <initializer_list>
#include <memory>
#include <stdexcept>
#include <typeinfo>
#include <vector>

#include "bind.h"
#include "kernels.h"
#include "mlx/ops.h"
#include "mlx/primitives.h"

namespace cpuk {

class StatePrimitive : public mlx::core::Primitive {
 public:
  StatePrimitive(mlx::core::Stream s, const Isa* isa) : mlx::core::Primitive(s), isa_(isa) {}

  void eval_gpu(const std::vector<mlx::core::array>&, std::vector<mlx::core::array>&) override {
    throw std::runtime_error("[cpu_kernels] CPU only: on a GPU mlx-lm's Metal kernel runs.");
  }
  std::vector<mlx::core::Shape> output_shapes(const std::vector<mlx::core::array>& in) override {
    return {in[2].shape(), in[5].shape()};
  }
  bool is_equivalent(const mlx::core::Primitive& other) const override {
    return typeid(*this) == typeid(other) && isa_ == static_cast<const StatePrimitive&>(other).isa_;
  }

 protected:
  const Isa* isa_;
};

// q, k, v, g, beta, state: all float32, or an error naming the rule's inputs.
inline void check_float32(std::initializer_list<const mlx::core::array*> inputs) {
  for (const mlx::core::array* a : inputs)
    if (a->dtype() != mlx::core::float32)
      throw std::invalid_argument("[cpu_kernels] the delta rule's inputs must be float32");
}

// (y shaped as v, the new state) from primitive P over q, k, v, g, beta, state, made contiguous
// on the CPU stream (the kernels read them as dense rows).
template <class P>
std::vector<mlx::core::array> call(std::initializer_list<const mlx::core::array*> inputs, const Isa* isa) {
  auto s = mlx::core::to_stream(mlx::core::Device::cpu);
  std::vector<mlx::core::array> dense;
  for (const mlx::core::array* a : inputs) dense.push_back(mlx::core::contiguous(*a, false, s));
  return mlx::core::array::make_arrays({dense[2].shape(), dense[5].shape()}, {mlx::core::float32, mlx::core::float32},
                                       std::make_shared<P>(s, isa), dense);
}

}  // namespace cpuk
