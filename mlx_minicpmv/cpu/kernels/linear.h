// A linear layer's product with its weights as stored, for the kernels' own primitives: matmul.cpp
// (one layer a primitive) and decode_layer.cpp (a whole decoder layer in one).

#pragma once

#include <string>

#include "kernels.h"
#include "mlx/array.h"

namespace cpuk {

// y (M, N) = x (M, K) @ W.T on the pool. bits 4 or 8: weights = w (N, K·bits/32) uint32, scales,
// biases (MLX's affine quantisation, groups of `group`); 16: w (N, K) bf16 or fp16; 32: w (N, K)
// float32 (few rows only: its GEMV reads the weights once for up to kMaxRows rows).
void linear(const Isa& isa, int bits, int group, const mlx::core::array* weights, const float* x, int M, int K, int N,
            float* y);

// What keeps linear from reading `weights` (its bits, group and arrays) as an (N, K) matrix, or ""
// where nothing does: the primitives' checks where they are made.
std::string weights_problem(int bits, int group, const mlx::core::array* weights, int K, int N);

}  // namespace cpuk
