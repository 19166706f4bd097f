#include "backend/cpu/cpu_features.h"

#include <cstdlib>
#include <string>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#if defined(__x86_64__) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#if defined(__aarch64__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

namespace m2 {

namespace {
CpuFeatures detect() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  // F16C from CPUID leaf 1 (ECX bit 29): clang's __builtin_cpu_supports does not name it.
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C);
  f.avx2_fma_f16c = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
  f.avx512 = f.avx2_fma_f16c && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  if (const char* a = std::getenv("M2_CPU_NO_AVX512"); a && std::string(a) == "1") f.avx512 = false;
  f.avx512_vnni_vbmi = f.avx512 && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vbmi");
  // M2_CPU_NO_VNNI=1 keeps the AVX-512 path but runs its FP4 × Q8 products on the AVX2 kernel.
  if (const char* v = std::getenv("M2_CPU_NO_VNNI"); v && std::string(v) == "1") f.avx512_vnni_vbmi = false;
  f.avx512_bf16 = f.avx512 && __builtin_cpu_supports("avx512bf16");
  // M2_CPU_NO_BF16=1 runs BF16 weights on the exact fp32 kernels whatever the activations.
  if (const char* b = std::getenv("M2_CPU_NO_BF16"); b && std::string(b) == "1") f.avx512_bf16 = false;
#if defined(__x86_64__) && defined(__linux__)
  // AMX: CPUID leaf 7 EDX bits 22 (AMX-BF16) and 24 (AMX-TILE); Linux then grants the tile data state
  // to a process that asks for it (arch_prctl ARCH_REQ_XCOMP_PERM = 0x1023, XTILEDATA = 18; 5.16+).
  // M2_CPU_NO_AMX=1 runs BF16 weights on the AVX-512 fp32 kernels instead.
  unsigned a7 = 0, b7 = 0, c7 = 0, d7 = 0;
  const bool amx_cpu = __get_cpuid_count(7, 0, &a7, &b7, &c7, &d7) && (d7 & (1u << 22)) && (d7 & (1u << 24));
  const char* no_amx = std::getenv("M2_CPU_NO_AMX");
  if (f.avx512_bf16 && amx_cpu && !(no_amx && std::string(no_amx) == "1"))
    f.amx_bf16 = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
#endif
#endif
#if defined(__aarch64__)
  f.neon = true;
  f.dotprod = (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
  if (const char* d = std::getenv("M2_CPU_NO_DOTPROD"); d && std::string(d) == "1") f.dotprod = false;
  f.neon_bf16 = (getauxval(AT_HWCAP2) & HWCAP2_BF16) != 0;
  if (const char* b = std::getenv("M2_CPU_NO_BF16"); b && std::string(b) == "1") f.neon_bf16 = false;
#endif
  // M2_CPU_GENERIC=1 forces the portable kernels (for tests and for comparing paths).
  if (const char* g = std::getenv("M2_CPU_GENERIC"); g && std::string(g) == "1")
    f.avx2_fma_f16c = f.avx512 = f.avx512_vnni_vbmi = f.avx512_bf16 = f.amx_bf16 = f.neon = f.dotprod = f.neon_bf16 = false;
  return f;
}
}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

std::string CpuFeatures::describe() const {
  if (avx2_fma_f16c) {
    if (!avx512) return "avx2+fma+f16c";
    std::string extra = avx512_vnni_vbmi ? "vnni/vbmi" : "";
    if (avx512_bf16) extra += extra.empty() ? "bf16" : "/bf16";
    if (amx_bf16) extra += "/amx";
    return "avx512" + (extra.empty() ? std::string() : " (+" + extra + ")") + " gemv + avx2/fma/f16c";
  }
  if (neon) return std::string("neon") + (dotprod ? "+dotprod" : "") + (neon_bf16 ? "+bf16" : "");
  return "generic";
}

}  // namespace m2
