// The MLPs' activations as MLX primitives (activation.cpp), bound in matmul.cpp.

#pragma once

#include "kernels.h"
#include "mlx/array.h"

namespace cpuk {

// act (tanh-GELU, SiLU or sigmoid) of float32 x, and SwiGLU silu(gate)·x of float32 arrays of
// one shape, on the CPU stream.
mlx::core::array activation(const mlx::core::array& x, const Isa* isa, Act act);
mlx::core::array swiglu(const mlx::core::array& gate, const mlx::core::array& x, const Isa* isa);

}  // namespace cpuk
