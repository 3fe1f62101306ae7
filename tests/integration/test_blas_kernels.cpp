// The start-up BLAS kernel check (daemon/blas_kernels.h) through loftqd-test: its
// LOFTQD_TEST_BLAS_CORE failpoint makes the check see a fallback core (as OpenBLAS 0.3.21 reports
// on a CPU model it does not know), so the re-exec with OPENBLAS_CORETYPE runs on any machine
// with AVX2 + FMA. Asserts on the log and on the output files.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "quant/blas.h"
#include "support/test_util.h"

#ifndef LOFTQD_TEST_BINARY
#error "LOFTQD_TEST_BINARY must name the loftqd-test executable"
#endif

namespace fs = std::filesystem;
namespace q = loftqd::quant;
using loftqd::testing::Child;
using loftqd::testing::count_of;
using loftqd::testing::run_loftqd;
using loftqd::testing::slurp;
using loftqd::testing::TempDir;
using ::testing::HasSubstr;
using ::testing::Not;

namespace {

// glibc's putenv removes a variable given without '=': the child never inherits the test's own
// OPENBLAS_CORETYPE (scripts/test runs some suites under one).
const std::string kNoCoretype = "OPENBLAS_CORETYPE";

class BlasKernels : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    const auto r = run_loftqd({"synth", "--arch", "llama", "--layers", "2", "--hidden", "128",
                               "--intermediate", "256", "--heads", "4", "--vocab", "256", "--seed",
                               "5", (*dir_ / "model").string()});
    ASSERT_EQ(r.exit_code, 0) << r.out;
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  void SetUp() override {
    better_ = q::better_openblas_core("Prescott", q::cpu_features(), nullptr);
    if (better_.empty()) GTEST_SKIP() << "this CPU has no AVX2 + FMA: no better core to re-exec to";
  }

  // loftqd-test quantize into OUT with `env`; the exit code and the log.
  std::pair<int, std::string> quantize(const std::string& out, std::vector<std::string> env) {
    const fs::path log = *dir_ / (out + ".log");
    Child c({"quantize", (*dir_ / "model").string(), (*dir_ / out).string(), "--rank", "8",
             "--iters", "2", "--threads", "1"},
            log, env, LOFTQD_TEST_BINARY);
    const auto code = c.wait(std::chrono::seconds(120));
    return {code.value_or(-1), slurp(log)};
  }

  static void expect_same_weights(const std::string& a, const std::string& b) {
    for (const char* f : {"model.safetensors", "loftq_init/adapter_model.safetensors",
                          "loftq_init/adapter_config.json", "config.json"}) {
      ASSERT_TRUE(fs::exists(*dir_ / a / f)) << f;
      EXPECT_TRUE(slurp(*dir_ / a / f) == slurp(*dir_ / b / f)) << f << " differs";
    }
    const auto ja = nlohmann::json::parse(slurp(*dir_ / a / "loftq.json"));
    const auto jb = nlohmann::json::parse(slurp(*dir_ / b / "loftq.json"));
    ASSERT_EQ(ja["layers"].size(), jb["layers"].size());
    for (size_t i = 0; i < ja["layers"].size(); ++i)
      EXPECT_EQ(ja["layers"][i]["loftq_error"], jb["layers"][i]["loftq_error"]) << i;
  }

  static inline TempDir* dir_ = nullptr;
  std::string better_;
};

}  // namespace

TEST_F(BlasKernels, AFallbackCoreIsReplacedByOneReexecWithTheSameOutput) {
  const auto [plain_code, plain] = quantize("plain", {kNoCoretype});
  ASSERT_EQ(plain_code, 0) << plain;
  EXPECT_THAT(plain, HasSubstr("quantize: blas: OpenBLAS "));
  EXPECT_THAT(plain, Not(HasSubstr("re-exec")));

  const auto [code, log] = quantize("reexec", {kNoCoretype, "LOFTQD_TEST_BLAS_CORE=Prescott"});
  ASSERT_EQ(code, 0) << log;
  EXPECT_THAT(log, HasSubstr("core=" + better_ + " threads=1"));
  EXPECT_THAT(log, HasSubstr("core set by loftqd (re-exec from Prescott with OPENBLAS_CORETYPE=" +
                             better_ + ")"));
  EXPECT_EQ(count_of(log, "quantize: blas:"), 1u) << log;  // one process logged: no loop
  EXPECT_THAT(log, Not(HasSubstr("slower than this CPU allows")));
  expect_same_weights("plain", "reexec");
}

TEST_F(BlasKernels, TheUsersCoretypeIsKeptAndTheSlowKernelsAreNamed) {
  const auto [code, log] =
      quantize("user", {"OPENBLAS_CORETYPE=Prescott", "LOFTQD_TEST_BLAS_CORE=Prescott"});
  ASSERT_EQ(code, 0) << log;
  EXPECT_THAT(log, HasSubstr("core=Prescott threads=1"));
  EXPECT_THAT(log, HasSubstr("OPENBLAS_CORETYPE=Prescott from the environment"));
  EXPECT_THAT(log, Not(HasSubstr("re-exec")));
  EXPECT_THAT(log, HasSubstr("blas: core Prescott is slower than this CPU allows"));
  EXPECT_THAT(log, HasSubstr("OPENBLAS_CORETYPE=Prescott is set in the environment and is kept"));
}

TEST_F(BlasKernels, AFailedReexecRunsOnWithAWarning) {
  const auto [code, log] =
      quantize("noexec", {kNoCoretype, "LOFTQD_TEST_BLAS_CORE=Prescott",
                          "LOFTQD_TEST_BLAS_EXE=" + (*dir_ / "no-such-binary").string()});
  ASSERT_EQ(code, 0) << log;
  EXPECT_THAT(log, HasSubstr("core=Prescott threads=1"));
  EXPECT_THAT(log, HasSubstr("the re-exec with OPENBLAS_CORETYPE=" + better_ + " failed ("));
  EXPECT_THAT(log, HasSubstr("No such file or directory"));
  EXPECT_THAT(log, HasSubstr("start loftqd with OPENBLAS_CORETYPE=" + better_));
  EXPECT_TRUE(fs::exists(*dir_ / "noexec" / "loftq.json"));
}

TEST_F(BlasKernels, VersionNamesTheKernels) {
  const auto r = run_loftqd({"--version"});
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("blas: OpenBLAS "));
  EXPECT_THAT(r.out, HasSubstr(" core="));
}
