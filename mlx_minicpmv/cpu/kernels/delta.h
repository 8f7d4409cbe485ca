// The decode step of the gated delta rule as an MLX primitive (delta.cpp), bound in matmul.cpp.

#pragma once

#include <vector>

#include "kernels.h"
#include "mlx/array.h"

namespace cpuk {

// (y (B, H, Dv), new state (B, H, Dv, Dk)) for q, k (B, H, Dk), v (B, H, Dv), g and beta (B, H)
// and the state (B, H, Dv, Dk), all float32, on the CPU stream.
std::vector<mlx::core::array> gated_delta_step(const mlx::core::array& q, const mlx::core::array& k,
                                               const mlx::core::array& v, const mlx::core::array& g,
                                               const mlx::core::array& beta, const mlx::core::array& state,
                                               const Isa* isa);

}  // namespace cpuk
