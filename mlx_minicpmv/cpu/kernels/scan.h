// The gated delta rule over a prompt as one MLX primitive (scan.cpp), bound in matmul.cpp.

#pragma once

#include <vector>

#include "kernels.h"
#include "mlx/array.h"

namespace cpuk {

// (y (B, T, Hv, Dv), final state (B, Hv, Dv, Dk)) for q, k (B, T, Hk, Dk), v (B, T, Hv, Dv),
// g and beta (B, T, Hv) and the state (B, Hv, Dv, Dk), all float32, Hv a multiple of Hk (value
// head h reads key head h / (Hv / Hk), as mlx-lm's repeat), on the CPU stream.
std::vector<mlx::core::array> gated_delta_scan(const mlx::core::array& q, const mlx::core::array& k,
                                               const mlx::core::array& v, const mlx::core::array& g,
                                               const mlx::core::array& beta, const mlx::core::array& state,
                                               const Isa* isa);

}  // namespace cpuk
