// loftqd-test: the loftqd command line plus the crash tests' failpoints. Built for the tests
// only; the real loftqd never reads LOFTQD_FAILPOINT.
//
// LOFTQD_FAILPOINT="name:ms[,name:ms...]" makes the pipeline log "failpoint=name" and sleep ms
// milliseconds at that point (PipelineOptions::failpoint names them), so a test can signal or
// kill -9 the daemon exactly there.
//
// LOFTQD_TEST_BLAS_CORE=NAME makes the start-up kernel check (daemon/blas_kernels.h) see the
// OpenBLAS core NAME, as OpenBLAS's own detection would report it on a CPU it does not know,
// while OPENBLAS_CORETYPE is unset (once it is set, the library's real core counts).
// LOFTQD_TEST_BLAS_EXE=PATH makes the re-exec run PATH instead of /proc/self/exe (a path that
// does not exist tests the failed exec).
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>

#include "daemon/blas_kernels.h"
#include "daemon/cli.h"

namespace {

void failpoint(const std::string& spec, const std::string& name) {
  size_t pos = 0;
  while (pos < spec.size()) {
    size_t end = spec.find(',', pos);
    if (end == std::string::npos) end = spec.size();
    const std::string item = spec.substr(pos, end - pos);
    const size_t colon = item.find(':');
    if (colon != std::string::npos && item.substr(0, colon) == name) {
      spdlog::info("failpoint={}", name);
      std::this_thread::sleep_for(std::chrono::milliseconds(std::atoll(item.c_str() + colon + 1)));
    }
    pos = end + 1;
  }
}

}  // namespace

int main(int argc, char** argv) {
  loftqd::daemon::KernelCheckOptions kernels;
  const char* coretype = std::getenv("OPENBLAS_CORETYPE");
  if (const char* core = std::getenv("LOFTQD_TEST_BLAS_CORE"); core && !(coretype && *coretype))
    kernels.assumed_core = core;
  if (const char* exe = std::getenv("LOFTQD_TEST_BLAS_EXE")) kernels.exe = exe;
  loftqd::daemon::ensure_blas_kernels(argv, kernels);
  loftqd::daemon::CliHooks hooks;
  if (const char* fp = std::getenv("LOFTQD_FAILPOINT"))
    hooks.failpoint = [spec = std::string(fp)](const std::string& name) { failpoint(spec, name); };
  return loftqd::daemon::run_cli(argc, argv, hooks);
}
