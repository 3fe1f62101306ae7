// quant/blas: the OpenBLAS core decision (a pure function: known CPUs and cores in, the core to
// re-exec with out), the CPU feature reading and what the linked OpenBLAS reports.
#include "quant/blas.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

using namespace loftqd::quant;

namespace {

CpuFeatures sse_only() {
  CpuFeatures f;
  f.vendor = "GenuineIntel";
  f.family = 6;
  f.model = 207;
  return f;
}

CpuFeatures avx_only() {
  CpuFeatures f = sse_only();
  f.avx = true;
  return f;
}

CpuFeatures avx2_fma(const std::string& vendor = "GenuineIntel") {
  CpuFeatures f = avx_only();
  f.vendor = vendor;
  f.avx2 = f.fma = true;
  return f;
}

CpuFeatures avx512(bool bf16 = false, bool amx = false) {
  CpuFeatures f = avx2_fma();
  f.avx512f = f.avx512bw = f.avx512dq = f.avx512vl = true;
  f.avx512_bf16 = bf16;
  f.amx = amx;
  return f;
}

}  // namespace

TEST(BlasCore, PrescottOnAvx512GetsSkylakeX) {
  EXPECT_EQ(better_openblas_core("Prescott", avx512(), nullptr), "SkylakeX");
  EXPECT_EQ(better_openblas_core("Prescott", avx512(), ""), "SkylakeX");  // empty = unset
}

TEST(BlasCore, Avx512Bf16GetsCooperlakeAndAmxStaysThere) {
  // Emerald Rapids (family 6 model 207): AVX-512, BF16 and AMX; 0.3.21 has no SapphireRapids.
  EXPECT_EQ(better_openblas_core("Prescott", avx512(true), nullptr), "Cooperlake");
  EXPECT_EQ(better_openblas_core("Prescott", avx512(true, true), nullptr), "Cooperlake");
}

TEST(BlasCore, PrescottOnAvx2FmaGetsHaswellOrZen) {
  EXPECT_EQ(better_openblas_core("Prescott", avx2_fma(), nullptr), "Haswell");
  EXPECT_EQ(better_openblas_core("Nehalem", avx2_fma(), nullptr), "Haswell");
  EXPECT_EQ(better_openblas_core("Prescott", avx2_fma("AuthenticAMD"), nullptr), "Zen");
  EXPECT_EQ(better_openblas_core("Barcelona", avx2_fma("HygonGenuine"), nullptr), "Zen");
}

TEST(BlasCore, SandybridgeIsReplacedOnlyWhenAvx2IsThere) {
  EXPECT_EQ(better_openblas_core("Sandybridge", avx2_fma(), nullptr), "Haswell");
  EXPECT_EQ(better_openblas_core("Sandybridge", avx_only(), nullptr), "");
}

TEST(BlasCore, AGoodCoreIsKept) {
  for (const char* core : {"SkylakeX", "Cooperlake", "Haswell", "Zen", "Excavator"})
    EXPECT_EQ(better_openblas_core(core, avx512(true, true), nullptr), "") << core;
}

TEST(BlasCore, TheUsersCoretypeIsAlwaysRespected) {
  EXPECT_EQ(better_openblas_core("Prescott", avx512(), "Prescott"), "");
  EXPECT_EQ(better_openblas_core("Prescott", avx2_fma(), "prescott"), "");
  EXPECT_EQ(better_openblas_core("Core2", avx512(true), "Haswell"), "");
}

TEST(BlasCore, NoAvx2MeansNothingBetter) {
  for (const char* core : {"Prescott", "Core2", "Nehalem", "Unknown", "Atom"}) {
    EXPECT_EQ(better_openblas_core(core, sse_only(), nullptr), "") << core;
    EXPECT_EQ(better_openblas_core(core, avx_only(), nullptr), "") << core;
  }
  CpuFeatures avx2_no_fma = avx_only();
  avx2_no_fma.avx2 = true;
  EXPECT_EQ(better_openblas_core("Prescott", avx2_no_fma, nullptr), "");
  // AVX-512 without the BW/DQ/VL that SkylakeX's kernels use (Knights Landing): Haswell.
  CpuFeatures knl = avx2_fma();
  knl.avx512f = true;
  EXPECT_EQ(better_openblas_core("Prescott", knl, nullptr), "Haswell");
}

TEST(BlasCore, PreAvx2CoresAreNamedCaseInsensitively) {
  EXPECT_TRUE(is_pre_avx2_core("Prescott"));
  EXPECT_TRUE(is_pre_avx2_core("PRESCOTT"));
  EXPECT_TRUE(is_pre_avx2_core("Opteron_SSE3"));
  EXPECT_FALSE(is_pre_avx2_core("SkylakeX"));
  EXPECT_FALSE(is_pre_avx2_core(""));
}

TEST(BlasCore, LevelsAndSummary) {
  EXPECT_EQ(sse_only().level(), "sse");
  EXPECT_EQ(avx_only().level(), "avx");
  EXPECT_EQ(avx2_fma().level(), "avx2+fma");
  EXPECT_EQ(avx512().level(), "avx512");
  EXPECT_EQ(avx512(true, true).level(), "avx512+bf16+amx");
  EXPECT_EQ(CpuFeatures{}.level(), "unknown");
  BlasInfo b;
  b.library = "OpenBLAS 0.3.21";
  b.core = "SkylakeX";
  b.threads = 2;
  EXPECT_EQ(kernels_summary(b, avx512()),
            "OpenBLAS 0.3.21 core=SkylakeX threads=2 cpu=avx512 (GenuineIntel family 6 model 207)");
}

// The real CPU: the levels are nested (AVX-512 implies AVX2 + FMA implies AVX) and x86-64 has
// a vendor string.
TEST(BlasCore, ThisCpusFeaturesAreConsistent) {
  const CpuFeatures& f = cpu_features();
#if defined(__x86_64__)
  EXPECT_FALSE(f.vendor.empty());
  EXPECT_GT(f.family, 0);
#endif
  EXPECT_TRUE(!f.avx512() || f.avx2_fma());
  EXPECT_TRUE(!f.avx2 || f.avx);
  EXPECT_TRUE(!f.avx512_bf16 || f.avx512f);
  // What the compiler's runtime sees agrees with CPUID + XGETBV.
#if defined(__x86_64__)
  EXPECT_EQ(f.avx2, bool(__builtin_cpu_supports("avx2")));
  EXPECT_EQ(f.fma, bool(__builtin_cpu_supports("fma")));
  EXPECT_EQ(f.avx512f, bool(__builtin_cpu_supports("avx512f")));
  EXPECT_EQ(f.avx512bw, bool(__builtin_cpu_supports("avx512bw")));
#endif
}

// The linked OpenBLAS names itself and its core; OPENBLAS_CORETYPE (when the test runs under
// one, as scripts/test's second pass does) is the core it runs.
TEST(BlasCore, TheLinkedOpenBlasReportsItsCore) {
  const BlasInfo b = blas_info();
  EXPECT_EQ(b.library.rfind("OpenBLAS ", 0), 0u) << b.config;
  EXPECT_FALSE(b.core.empty());
  EXPECT_GE(b.threads, 1);
  const char* forced = std::getenv("OPENBLAS_CORETYPE");
  if (forced && std::string(forced) == "Prescott") {
    EXPECT_EQ(b.core, "Prescott");
  }
}
