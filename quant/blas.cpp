#include "quant/blas.h"

#include <strings.h>

#include <array>
#include <cstdint>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace loftqd::quant {

namespace {

#if defined(__x86_64__) || defined(__i386__)
uint64_t xgetbv0() {
  uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t(hi) << 32) | lo;
}

CpuFeatures read_cpu() {
  CpuFeatures f;
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return f;
  const unsigned max_leaf = a;
  char vendor[13] = {};
  for (int i = 0; i < 4; ++i) {
    vendor[i] = char(b >> (8 * i));
    vendor[4 + i] = char(d >> (8 * i));
    vendor[8 + i] = char(c >> (8 * i));
  }
  f.vendor = vendor;
  __get_cpuid(1, &a, &b, &c, &d);
  const unsigned base_family = (a >> 8) & 0xf, base_model = (a >> 4) & 0xf;
  f.family = int(base_family == 0xf ? base_family + ((a >> 20) & 0xff) : base_family);
  f.model = int(base_family == 0x6 || base_family == 0xf ? base_model | (((a >> 16) & 0xf) << 4)
                                                         : base_model);
  const bool osxsave = (c >> 27) & 1;
  const uint64_t xcr0 = osxsave ? xgetbv0() : 0;
  const bool ymm = (xcr0 & 0x6) == 0x6;            // SSE + AVX state
  const bool zmm = ymm && (xcr0 & 0xe0) == 0xe0;   // opmask, ZMM_Hi256, Hi16_ZMM
  const bool tiles = (xcr0 & 0x60000) == 0x60000;  // XTILECFG + XTILEDATA
  f.avx = ymm && ((c >> 28) & 1);
  f.fma = f.avx && ((c >> 12) & 1);
  if (max_leaf < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  f.avx2 = f.avx && ((b >> 5) & 1);
  f.avx512f = zmm && ((b >> 16) & 1);
  f.avx512dq = zmm && ((b >> 17) & 1);
  f.avx512bw = zmm && ((b >> 30) & 1);
  f.avx512vl = zmm && ((b >> 31) & 1);
  f.amx = tiles && ((d >> 24) & 1);
  const unsigned max_sub = a;
  if (max_sub >= 1) {
    __cpuid_count(7, 1, a, b, c, d);
    f.avx512_bf16 = f.avx512f && ((a >> 5) & 1);
  }
  return f;
}
#else
CpuFeatures read_cpu() {
  return {};
}
#endif

// OpenBLAS's x86-64 cores (driver/others/dynamic.c, 0.3.21) whose kernels stop before AVX2.
constexpr std::array<const char*, 21> kPreAvx2 = {
    "Unknown",   "Katmai", "Coppermine",  "Northwood", "Prescott",  "Banias",     "Atom",
    "Core2",     "Penryn", "Dunnington",  "Nehalem",   "Athlon",    "Opteron",    "Opteron_SSE3",
    "Barcelona", "Nano",   "Sandybridge", "Bobcat",    "Bulldozer", "Piledriver", "Steamroller"};

}  // namespace

std::string CpuFeatures::level() const {
  if (vendor.empty()) return "unknown";
  if (avx512()) {
    std::string s = "avx512";
    if (avx512_bf16) s += "+bf16";
    if (amx) s += "+amx";
    return s;
  }
  if (avx2_fma()) return "avx2+fma";
  if (avx) return "avx";
  return "sse";
}

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = read_cpu();
  return f;
}

bool is_pre_avx2_core(const std::string& core) {
  for (const char* c : kPreAvx2)
    if (strcasecmp(core.c_str(), c) == 0) return true;
  return false;
}

std::string better_openblas_core(const std::string& core, const CpuFeatures& cpu,
                                 const char* user_coretype) {
  if (user_coretype && *user_coretype) return "";  // the user's choice stands
  if (!is_pre_avx2_core(core) || !cpu.avx2_fma()) return "";
  if (cpu.avx512()) return cpu.avx512_bf16 ? "Cooperlake" : "SkylakeX";
  if (cpu.vendor == "AuthenticAMD" || cpu.vendor == "HygonGenuine") return "Zen";
  return "Haswell";
}

std::string kernels_summary(const BlasInfo& blas, const CpuFeatures& cpu) {
  std::string s = blas.library + " core=" + blas.core + " threads=" + std::to_string(blas.threads) +
                  " cpu=" + cpu.level();
  if (!cpu.vendor.empty())
    s += " (" + cpu.vendor + " family " + std::to_string(cpu.family) + " model " +
         std::to_string(cpu.model) + ")";
  return s;
}

}  // namespace loftqd::quant
