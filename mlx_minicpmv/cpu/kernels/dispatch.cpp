// Which kernels run: the best instruction set that the CPU and the OS support (libgcc's
// __builtin_cpu_supports checks both: CPUID bits and the XSAVE state the OS enables), or the
// one named by MLX_MINICPMV_KERNEL_ISA (scalar, avx2, avx512, avx512vnni, amx) for tests and
// comparisons.

#include <cstring>
#include <initializer_list>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "kernels.h"

namespace cpuk {

namespace {
#if defined(__x86_64__) || defined(__i386__)
// AMX needs the CPU's tile unit with bf16 (CPUID 7.0 EDX bits 22 and 24, AVX512-BF16 in 7.1 EAX
// bit 5 for the packing) and the kernel's leave to use its 8 KB of tile state, asked once per
// process (Linux's ARCH_REQ_XCOMP_PERM; refused where the OS or a VM does not save it).
bool amx_runs() {
  static const bool ok = [] {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 22)) || !(d & (1u << 24))) return false;
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d) || !(a & (1u << 5))) return false;
#ifdef SYS_arch_prctl
    constexpr int kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
#else
    return false;
#endif
  }();
  return ok;
}
#endif

bool runs(const char* name) {
  if (std::strcmp(name, "scalar") == 0) return true;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (std::strcmp(name, "avx2") == 0)
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  if (std::strcmp(name, "avx512") == 0)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#ifdef CPUK_HAVE_VNNI
  if (std::strcmp(name, "avx512vnni") == 0)
    return runs("avx512") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni");
#endif
#ifdef CPUK_HAVE_AMX
  if (std::strcmp(name, "amx") == 0) return runs("avx512vnni") && amx_runs();
#endif
#endif
  return false;
}

}  // namespace

const Isa* isa_named(const char* name) {
  if (!runs(name)) return nullptr;
#if defined(__x86_64__) || defined(__i386__)
#ifdef CPUK_HAVE_AMX
  if (std::strcmp(name, "amx") == 0) return &amx_isa();
#endif
#ifdef CPUK_HAVE_VNNI
  if (std::strcmp(name, "avx512vnni") == 0) return &avx512vnni_isa();
#endif
  if (std::strcmp(name, "avx512") == 0) return &avx512_isa();
  if (std::strcmp(name, "avx2") == 0) return &avx2_isa();
#endif
  return std::strcmp(name, "scalar") == 0 ? &scalar_isa() : nullptr;
}

std::vector<const char*> runnable_isas() {
  std::vector<const char*> names;
  for (const char* name : {"amx", "avx512vnni", "avx512", "avx2", "scalar"}) {
    if (isa_named(name)) names.push_back(name);
  }
  return names;
}

const Isa* best_isa() {
  static const Isa* best = isa_named(runnable_isas().front());
  return best;
}

}  // namespace cpuk
