// LayerNorm and RMSNorm as an MLX primitive (norm.cpp), bound in matmul.cpp.

#pragma once

#include <optional>

#include "kernels.h"
#include "mlx/array.h"

namespace cpuk {

// LayerNorm (rms false) or RMSNorm (rms true) of float32 x (..., D) along its last axis, with
// an optional float32 weight and bias (D,), on the CPU stream.
mlx::core::array norm(const mlx::core::array& x, const std::optional<mlx::core::array>& weight,
                      const std::optional<mlx::core::array>& bias, float eps, bool rms, const Isa* isa);

}  // namespace cpuk
