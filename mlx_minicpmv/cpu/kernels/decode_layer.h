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

struct AttentionShape {
  int hidden, intermediate, heads, kv_heads, head_dim, rotary, offset;  // offset: the token's position
  float eps, scale;  // the norms' (layer and q/k), and the scores' (head_dim^-1/2)
  bool operator==(const AttentionShape&) const = default;
};

// One token of one sequence through a DeltaNet decoder layer: (out, conv state, state) from
// arrays = x, conv state, state, input_layernorm, post_attention_layernorm, conv1d's taps (its
// weight (C, kernel, 1) as (kernel, C)), A_log,
// dt_bias, the gated norm's weight, then the weights of in_proj_qkv, in_proj_z, in_proj_b,
// in_proj_a, out_proj, gate_proj, up_proj and down_proj (three arrays for a quantised one).
std::vector<mlx::core::array> deltanet_decode(const std::vector<mlx::core::array>& arrays,
                                              const std::vector<LinearKind>& kinds, const DeltaNetShape& shape,
                                              const Isa* isa);

// An attention decoder layer's token in two steps around MLX's KV cache update. The front:
// (q (1, heads, 1, D), k and v (1, kv_heads, 1, D), gate (1, 1, heads·D)) from arrays = x,
// input_layernorm, q_norm, k_norm, the RoPE frequencies (rotary / 2 periods), then the weights
// of q_proj, k_proj, v_proj. The back: the layer's output from arrays = x, q, the cache's keys
// and values (1, kv_heads, S, D; read by their strides), gate, post_attention_layernorm, then
// the weights of o_proj, gate_proj, up_proj, down_proj.
std::vector<mlx::core::array> attention_decode_front(const std::vector<mlx::core::array>& arrays,
                                                     const std::vector<LinearKind>& kinds, const AttentionShape& shape,
                                                     const Isa* isa);
std::vector<mlx::core::array> attention_decode_back(const std::vector<mlx::core::array>& arrays,
                                                    const std::vector<LinearKind>& kinds, const AttentionShape& shape,
                                                    const Isa* isa);

}  // namespace cpuk
