#include "daemon/blas_kernels.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "quant/blas.h"

namespace loftqd::daemon {

namespace {

// What ensure_blas_kernels() saw and did, for the log lines of the command that runs.
struct KernelState {
  std::string assumed_core;   // the failpoint's core, when no re-exec replaced it
  std::string reexec_from;    // the core before the re-exec ("" when there was none)
  std::string wanted;         // the core the re-exec asked for
  std::string exec_error;     // why the re-exec failed
  std::string user_coretype;  // OPENBLAS_CORETYPE from the environment (not set by loftqd)
};

KernelState& state() {
  static KernelState s;
  return s;
}

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

std::string current_core(const quant::BlasInfo& b) {
  return state().assumed_core.empty() ? b.core : state().assumed_core;
}

}  // namespace

void ensure_blas_kernels(char** argv, const KernelCheckOptions& opt) {
  KernelState& st = state();
  if (const char* from = env(kBlasReexecVar)) {  // the re-exec'd process: never again
    st.reexec_from = from;
    st.wanted = env("OPENBLAS_CORETYPE") ? env("OPENBLAS_CORETYPE") : "";
    ::unsetenv(kBlasReexecVar);  // a loftqd started from here decides for itself
    return;
  }
  const char* user = env("OPENBLAS_CORETYPE");
  if (user) st.user_coretype = user;
  st.assumed_core = opt.assumed_core;
  const std::string core = current_core(quant::blas_info());
  const std::string better = quant::better_openblas_core(core, quant::cpu_features(), user);
  if (better.empty()) return;
  st.wanted = better;
  ::setenv("OPENBLAS_CORETYPE", better.c_str(), 1);
  ::setenv(kBlasReexecVar, core.c_str(), 1);
  ::execv(opt.exe.c_str(), argv);
  st.exec_error = opt.exe + ": " + std::strerror(errno);  // still here: run with what we have
  ::unsetenv("OPENBLAS_CORETYPE");
  ::unsetenv(kBlasReexecVar);
}

std::string blas_kernels_line() {
  const KernelState& st = state();
  quant::BlasInfo b = quant::blas_info();
  b.core = current_core(b);
  std::string line = "blas: " + quant::kernels_summary(b, quant::cpu_features());
  if (!st.reexec_from.empty())
    line += "; core set by loftqd (re-exec from " + st.reexec_from +
            " with OPENBLAS_CORETYPE=" + st.wanted + ")";
  else if (!st.user_coretype.empty())
    line += "; OPENBLAS_CORETYPE=" + st.user_coretype + " from the environment";
  return line;
}

std::string blas_kernels_warning() {
  const KernelState& st = state();
  const quant::CpuFeatures& cpu = quant::cpu_features();
  const std::string core = current_core(quant::blas_info());
  const std::string better = quant::better_openblas_core(core, cpu, nullptr);
  if (better.empty()) return "";
  std::string why;
  if (!st.exec_error.empty())
    why = "the re-exec with OPENBLAS_CORETYPE=" + st.wanted + " failed (" + st.exec_error + ")";
  else if (!st.reexec_from.empty())
    why = "it is still " + core + " after the re-exec with OPENBLAS_CORETYPE=" + st.wanted +
          " (this OpenBLAS does not take that core)";
  else if (!st.user_coretype.empty())
    why = "OPENBLAS_CORETYPE=" + st.user_coretype + " is set in the environment and is kept";
  else
    why = "it was not replaced";
  return "blas: core " + core + " is slower than this CPU allows (cpu=" + cpu.level() +
         " can run the " + better +
         " kernels; Prescott's sgemm is about 5x slower than SkylakeX's, "
         "docs/performance.md): " +
         why + "; start loftqd with OPENBLAS_CORETYPE=" + better;
}

void log_blas_kernels(const std::string& command) {
  spdlog::info("{}: {}", command, blas_kernels_line());
  if (const std::string w = blas_kernels_warning(); !w.empty()) spdlog::warn("{}: {}", command, w);
}

}  // namespace loftqd::daemon
