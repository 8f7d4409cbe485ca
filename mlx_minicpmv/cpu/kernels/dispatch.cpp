// Which kernels run: the best instruction set that the CPU and the OS support (libgcc's
// __builtin_cpu_supports checks both: CPUID bits and the XSAVE state the OS enables), or the
// one named by MLX_MINICPMV_KERNEL_ISA (scalar, avx2, avx512) for tests and comparisons.

#include <cstring>
#include <initializer_list>

#include "kernels.h"

namespace cpuk {

namespace {
bool runs(const char* name) {
  if (std::strcmp(name, "scalar") == 0) return true;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (std::strcmp(name, "avx2") == 0)
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  if (std::strcmp(name, "avx512") == 0)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#endif
  return false;
}
}  // namespace

const Isa* isa_named(const char* name) {
  if (!runs(name)) return nullptr;
#if defined(__x86_64__) || defined(__i386__)
  if (std::strcmp(name, "avx512") == 0) return &avx512_isa();
  if (std::strcmp(name, "avx2") == 0) return &avx2_isa();
#endif
  return std::strcmp(name, "scalar") == 0 ? &scalar_isa() : nullptr;
}

const Isa* best_isa() {
  for (const char* name : {"avx512", "avx2"}) {
    if (const Isa* isa = isa_named(name)) return isa;
  }
  return &scalar_isa();
}

}  // namespace cpuk
