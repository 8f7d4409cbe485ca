// The DeltaNet layers' depthwise causal conv and its SiLU as one MLX primitive (conv.cpp), bound
// in matmul.cpp.

#pragma once

#include "kernels.h"
#include "mlx/array.h"

namespace cpuk {

// silu(Σ_k w[k]·in[t + k]) over the rows in = [state; x] for each sequence: state (B, K - 1, C),
// x (B, S, C), w (K, C) (the conv weight transposed), all float32 -> (B, S, C), on the CPU stream.
mlx::core::array causal_conv_silu(const mlx::core::array& state, const mlx::core::array& x, const mlx::core::array& w,
                                  const Isa* isa);

}  // namespace cpuk
