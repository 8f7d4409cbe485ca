// AVX-512F (+ F16C, FMA): 16 floats a vector. Compiled with those flags (CMakeLists.txt) and
// run only where dispatch.cpp found them; half_gemm.cpp adds the bf16/fp16 GEMM. Where the CPU
// also has VNNI, vnni.cpp and vnni_gemm.cpp replace the quantised GEMV and GEMM (and amx.cpp,
// where it has AMX, the GEMMs).
//
// AVX-512 BF16 is not used here: its dot products take bf16 activations, so x would be rounded
// to bf16's 8-bit mantissa before every product, where MLX's bf16 matmul keeps it in float.

#include <immintrin.h>

#include "kernels.h"

namespace cpuk::avx512 {

#include "avx512_vector.h"
#include "kernels_impl.h"

}  // namespace cpuk::avx512

namespace cpuk {
const Isa& avx512_isa() {
  static const Isa isa = [] {
    Isa set = avx512::make_isa<avx512::V>("avx512");
    set.half_gemm = avx512_half_gemm;
    return set;
  }();
  return isa;
}
}  // namespace cpuk
