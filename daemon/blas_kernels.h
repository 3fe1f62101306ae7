// The right BLAS kernels, said out loud (issue 14; quant/blas.h has the why). main() calls
// ensure_blas_kernels() first: when OpenBLAS fell back to a pre-AVX2 core on a CPU with AVX2 or
// AVX-512 and the user set no OPENBLAS_CORETYPE, it sets OPENBLAS_CORETYPE to the better core
// and re-execs the binary once (OpenBLAS reads it only when it loads). Commands that run LoftQ
// (quantize, run, sync, demo) log the outcome with log_blas_kernels().
#pragma once

#include <string>

namespace loftqd::daemon {

// Set in the re-exec'd process's environment (the core it came from); read and removed there,
// so the re-exec happens at most once.
inline constexpr const char* kBlasReexecVar = "LOFTQD_BLAS_REEXEC";

struct KernelCheckOptions {
  // The core to assume instead of openblas_get_corename() (loftqd-test's LOFTQD_TEST_BLAS_CORE
  // failpoint); "" for the real one.
  std::string assumed_core;
  // What to exec (loftqd-test's LOFTQD_TEST_BLAS_EXE failpoint can make it fail).
  std::string exe = "/proc/self/exe";
};

// Decides, and re-execs with the same argv when the decision says so (then it does not
// return). If the exec fails it restores the environment and returns; the warning is logged
// later. Call before any thread or log starts.
void ensure_blas_kernels(char** argv, const KernelCheckOptions& opt = {});

// "blas: OpenBLAS 0.3.21 core=SkylakeX threads=2 cpu=avx512 (...)" plus how the core was set
// (", set by loftqd: re-exec from Prescott" / ", OPENBLAS_CORETYPE=... from the environment").
std::string blas_kernels_line();
// The warning when the kernels are slower than this CPU allows and were not fixed; "" if none.
std::string blas_kernels_warning();

// Logs the line (info) and the warning (warn), prefixed with the command ("quantize: blas: ...").
void log_blas_kernels(const std::string& command);

}  // namespace loftqd::daemon
