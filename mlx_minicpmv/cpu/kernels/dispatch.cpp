// Which kernels run: the best instruction set that the CPU and the OS support (libgcc's
// __builtin_cpu_supports checks both: CPUID bits and the XSAVE state the OS enables), or the
// one named by MLX_MINICPMV_KERNEL_ISA (scalar, avx2, avx512, avx512vnni, avx512vnni4, amx) for tests and
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
  if (std::strcmp(name, "avx512vnni") == 0 || std::strcmp(name, "avx512vnni4") == 0)
    return runs("avx512") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni");
#endif
#ifdef CPUK_HAVE_AMX
  if (std::strcmp(name, "amx") == 0) return runs("avx512vnni") && amx_runs();
#endif
#endif
  return false;
}

// AMD's Zen 4 (family 19h; its Zen 3 parts have no AVX-512) runs each 512-bit op as two 256-bit
// halves, and there 8-bit weights stream faster through the float GEMV than through the VNNI one
// (vnni.cpp); Intel's cores and later AMD ones are not known to, so they keep VNNI at 8 bits.
bool halves_512_bit_ops() {
#if defined(__x86_64__) || defined(__i386__)
  unsigned a, b, c, d;
  if (!__get_cpuid(0, &a, &b, &c, &d) || b != 0x68747541u) return false;  // "Auth" of AuthenticAMD
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  const unsigned base = (a >> 8) & 0xf;  // the family: base, plus the extended one where base is 0xf
  return base + (base == 0xf ? (a >> 20) & 0xff : 0) == 0x19;
#else
  return false;
#endif
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
  if (std::strcmp(name, "avx512vnni4") == 0) return &avx512vnni4_isa();
#endif
  if (std::strcmp(name, "avx512") == 0) return &avx512_isa();
  if (std::strcmp(name, "avx2") == 0) return &avx2_isa();
#endif
  return std::strcmp(name, "scalar") == 0 ? &scalar_isa() : nullptr;
}

std::vector<const char*> runnable_isas() {
  const bool zen4 = halves_512_bit_ops();
  std::vector<const char*> names;
  for (const char* name : {"amx", zen4 ? "avx512vnni4" : "avx512vnni", zen4 ? "avx512vnni" : "avx512vnni4", "avx512",
                           "avx2", "scalar"}) {
    if (isa_named(name)) names.push_back(name);
  }
  return names;
}

const Isa* best_isa() {
  static const Isa* best = isa_named(runnable_isas().front());
  return best;
}

}  // namespace cpuk
