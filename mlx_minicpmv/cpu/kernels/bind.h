// What every primitive of the kernels does before its task: allocate its outputs, register them
// and its inputs with the CPU encoder (which orders the task after their producers and keeps
// them alive), and copy them weakly for the task to hold. The task runs later on the stream's
// thread, maybe after the primitive is gone, so it captures these values only.

#pragma once

#include <utility>
#include <vector>

#include "mlx/backend/cpu/encoder.h"
#include "mlx/primitives.h"

namespace cpuk {

struct Bound {
  std::vector<mlx::core::array> in, out;
};

inline Bound bind_arrays(mlx::core::Stream s, const std::vector<mlx::core::array>& inputs,
                  std::vector<mlx::core::array>& outputs) {
  auto& encoder = mlx::core::cpu::get_command_encoder(s);
  Bound b;
  for (auto& a : inputs) {
    encoder.set_input_array(a);
    b.in.push_back(mlx::core::array::unsafe_weak_copy(a));
  }
  for (auto& o : outputs) {
    o.set_data(mlx::core::allocator::malloc(o.nbytes()));
    encoder.set_output_array(o);
    b.out.push_back(mlx::core::array::unsafe_weak_copy(o));
  }
  return b;
}

// The same for a primitive of one output.
inline Bound bind_arrays(mlx::core::Stream s, const std::vector<mlx::core::array>& inputs, mlx::core::array& out) {
  std::vector<mlx::core::array> outputs = {out};  // a handle: the allocation is out's
  return bind_arrays(s, inputs, outputs);
}

}  // namespace cpuk
