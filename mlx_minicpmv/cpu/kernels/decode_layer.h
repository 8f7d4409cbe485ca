#pragma once

#include <vector>

#include "kernels.h"
#include "mlx/array.h"

namespace cpuk {

struct LinearKind {  // a projection's weights as stored: linear.h's bits (and group, for 4 and 8)
  int bits, group;
  bool operator==(const LinearKind&) const = default;
};

struct DeltaNetShape {
  int hidden, intermediate, k_heads, v_heads, k_dim, v_dim, conv_kernel;
  float eps, gate_eps, qk_eps;  // the layer norms', the gated norm's, and q/k's L2 norm's
  bool operator==(const DeltaNetShape&) const = default;
};

// One token of one sequence through a DeltaNet decoder layer: (out, conv state, state) from
// arrays = x, conv state, state, input_layernorm, post_attention_layernorm, conv1d weight, A_log,
// dt_bias, the gated norm's weight, then the weights of in_proj_qkv, in_proj_z, in_proj_b,
// in_proj_a, out_proj, gate_proj, up_proj and down_proj (three arrays for a quantised one).
std::vector<mlx::core::array> deltanet_decode(const std::vector<mlx::core::array>& arrays,
                                              const std::vector<LinearKind>& kinds, const DeltaNetShape& shape,
                                              const Isa* isa);

}  // namespace cpuk
