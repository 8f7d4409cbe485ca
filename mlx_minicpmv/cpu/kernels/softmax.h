// Softmax over the last axis as an MLX primitive (softmax.cpp), bound in matmul.cpp.

#pragma once

#include "kernels.h"
#include "mlx/array.h"

namespace cpuk {

// softmax(x) along the last axis for float32 x (..., S), on the CPU stream.
mlx::core::array softmax(const mlx::core::array& x, const Isa* isa);

// log Σ e^x along the last axis for float32 x (..., S), kept as (..., 1), on the CPU stream.
mlx::core::array logsumexp(const mlx::core::array& x, const Isa* isa);

}  // namespace cpuk
