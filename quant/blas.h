// Which BLAS kernels LoftQ runs on, what the CPU could run, and the choice between them
// (issue 14). OpenBLAS (DYNAMIC_ARCH) picks its kernel set ("core") once, when the library is
// loaded, from CPUID; on a CPU model it does not know (OpenBLAS 0.3.21 on Emerald Rapids,
// family 6 model 207) it falls back to Prescott (SSE3) kernels, about 5x slower in sgemm.
// OPENBLAS_CORETYPE in the environment at exec overrides the choice; loftqd's main re-execs
// itself with it (daemon/blas_kernels.h). See docs/performance.md, "BLAS kernels".
#pragma once

#include <string>

namespace loftqd::quant {

// What the CPU offers and the OS enables (CPUID + XGETBV): an instruction set counts only when
// the OS saves its registers. All false off x86-64.
struct CpuFeatures {
  std::string vendor;  // "GenuineIntel", "AuthenticAMD", "HygonGenuine", ... ("" off x86-64)
  int family = 0, model = 0;
  bool avx = false, avx2 = false, fma = false;
  bool avx512f = false, avx512bw = false, avx512dq = false, avx512vl = false;
  bool avx512_bf16 = false;
  bool amx = false;  // AMX-TILE with its state enabled

  // The AVX-512 subset OpenBLAS's SkylakeX kernels need (F, BW, DQ, VL).
  bool avx512() const { return avx512f && avx512bw && avx512dq && avx512vl; }
  bool avx2_fma() const { return avx2 && fma; }
  // The best level, for logs: "avx512+bf16+amx", "avx512+bf16", "avx512", "avx2+fma", "avx",
  // "sse" (or "unknown" off x86-64).
  std::string level() const;
};

// This machine's CPU (read once, cached).
const CpuFeatures& cpu_features();

// The BLAS loftqd is linked with, as it runs now.
struct BlasInfo {
  std::string library;  // "OpenBLAS 0.3.21" (the start of openblas_get_config())
  std::string core;     // openblas_get_corename(): "SkylakeX", "Prescott", ...
  std::string config;   // openblas_get_config() in full
  int threads = 0;      // openblas_get_num_threads()
};
BlasInfo blas_info();

// True for the OpenBLAS x86-64 cores without AVX2 kernels (Prescott, Core2, Nehalem,
// Sandybridge, Bulldozer, ..., and "Unknown"); case-insensitive.
bool is_pre_avx2_core(const std::string& core);

// The OpenBLAS core this CPU should run instead of `core`, or "" when there is none. Pure.
// Only a pre-AVX2 core is replaced, and only when the CPU has AVX2 + FMA or more:
//   AVX-512 F/BW/DQ/VL with AVX512_BF16 -> "Cooperlake", AVX-512 -> "SkylakeX",
//   AVX2 + FMA on AMD/Hygon -> "Zen", AVX2 + FMA otherwise -> "Haswell".
// AMX would call for "SapphireRapids", a name OpenBLAS 0.3.21 does not have (its core table
// ends at Cooperlake), so AMX CPUs get Cooperlake. A user's own OPENBLAS_CORETYPE
// (`user_coretype`, nullptr or "" when unset) is always respected: then the answer is "".
std::string better_openblas_core(const std::string& core, const CpuFeatures& cpu,
                                 const char* user_coretype);

// "OpenBLAS 0.3.21 core=SkylakeX threads=2 cpu=avx512 (GenuineIntel family 6 model 106)".
std::string kernels_summary(const BlasInfo& blas, const CpuFeatures& cpu);

}  // namespace loftqd::quant
