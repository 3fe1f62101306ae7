// quant/device: --device parsing, the backend it picks (with the reason in `chosen`), and the
// CPU fallback for layers that run out of device memory. Runs everywhere (with or without CUDA
// built or a device present).
#include "quant/device.h"

#include <gtest/gtest.h>

#include "support/test_util.h"

#include <cmath>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "quant/cuda_backend.h"
#include "quant/loftq.h"
#include "support/matrices.h"

using namespace loftqd::quant;
using loftqd::testing::nf_options;
using loftqd::testing::structured_matrix;

namespace {

using loftqd::testing::error_of;

// A backend whose every allocation fails as a device out of memory would.
class OutOfMemoryBackend final : public Backend {
 public:
  std::string name() const override { return "oom"; }
  std::unique_ptr<Buffer> alloc(size_t n) override {
    throw DeviceOutOfMemory("cannot allocate " + std::to_string(n) + " floats");
  }
  void upload(Buffer&, const float*, size_t) override {}
  void download(float*, const Buffer&, size_t) override {}
  void copy(const Buffer&, Buffer&, size_t) override {}
  void gemm(bool, bool, int, int, int, float, const Buffer&, const Buffer&, float,
            Buffer&) override {}
  void sub(const Buffer&, const Buffer&, Buffer&, size_t) override {}
  double sq_dist(const Buffer&, const Buffer&, size_t) override { return 0; }
  double sq_norm(const Buffer&, size_t) override { return 0; }
  void quant_dequant(const QuantSpec&, const Buffer&, Buffer&, size_t) override {}
  void orthonormalize(Buffer&, int, int) override {}
  void svd(Buffer&, int, int, Buffer&, std::vector<float>&, Buffer&) override {}
  void make_factors(const Buffer&, int, int, const std::vector<float>&, const Buffer&, int, int,
                    Buffer&, Buffer&) override {}
};

}  // namespace

TEST(Device, ParsesTheDeviceStrings) {
  EXPECT_EQ(parse_device("auto").kind, DeviceChoice::Kind::Auto);
  EXPECT_EQ(parse_device("cpu").kind, DeviceChoice::Kind::Cpu);
  EXPECT_EQ(parse_device("cuda").kind, DeviceChoice::Kind::Cuda);
  EXPECT_EQ(parse_device("cuda").index, 0);
  EXPECT_EQ(parse_device("cuda:0").index, 0);
  EXPECT_EQ(parse_device("cuda:7").index, 7);
  EXPECT_EQ(parse_device("cuda:12").kind, DeviceChoice::Kind::Cuda);
  for (const char* bad : {"", "gpu", "CPU", "cuda:", "cuda:-1", "cuda:+1", "cuda:x", "cuda:1x",
                          "cuda:0 ", "cuda0", "cuda:99999999999", "cpu:0"}) {
    const std::string msg = error_of([&] { parse_device(bad); });
    EXPECT_NE(msg.find("unknown device '" + std::string(bad) + "'"), std::string::npos)
        << bad << ": " << msg;
    EXPECT_NE(msg.find("auto, cpu, cuda or cuda:N"), std::string::npos) << msg;
  }
  EXPECT_THROW(make_backend("gpu", 1), std::invalid_argument);
}

TEST(Device, CpuIsTheCpuBackend) {
  std::string chosen;
  auto be = make_backend("cpu", 1, &chosen);
  ASSERT_TRUE(be);
  EXPECT_EQ(be->name(), "cpu");
  EXPECT_EQ(chosen, "cpu (1 thread)");
  make_backend("cpu", 3, &chosen);
  EXPECT_EQ(chosen, "cpu (3 threads)");
}

TEST(Device, AutoPicksCudaOnlyWithADevice) {
  std::string why, chosen;
  const int count = cuda_device_count(&why);
  auto be = make_backend("auto", 1, &chosen);
  ASSERT_TRUE(be);
  if (count == 0) {
    EXPECT_FALSE(why.empty());
    EXPECT_EQ(be->name(), "cpu");
    EXPECT_EQ(chosen, "cpu (1 thread) (auto: " + why + ")");
  } else {
    EXPECT_TRUE(cuda_built());
    EXPECT_EQ(be->name(), "cuda:0");
    EXPECT_EQ(chosen.rfind("cuda:0 (", 0), 0u) << chosen;
  }
}

TEST(Device, CudaWithoutADeviceIsAClearError) {
  std::string why;
  if (cuda_device_count(&why) > 0) GTEST_SKIP() << "a CUDA device is present";
  EXPECT_FALSE(cuda_available());
  const std::string msg = error_of([] { make_backend("cuda", 1); });
  if (!cuda_built()) {
    EXPECT_EQ(msg, "--device cuda: loftqd was built without CUDA");
    EXPECT_EQ(error_of([] { make_backend("cuda:1", 1); }),
              "--device cuda:1: loftqd was built without CUDA");
  } else {
    EXPECT_EQ(msg, "--device cuda: no CUDA device (" + why + ")");
    EXPECT_EQ(error_of([] { make_cuda_backend(0); }),
              "--device cuda: no CUDA device (" + why + ")");
  }
  EXPECT_THROW(make_backend("cuda:0", 1), std::invalid_argument);
  EXPECT_EQ(cuda_device_description(0), "");
}

TEST(Device, NoSuchCudaDevice) {
  EXPECT_THROW(make_backend("cuda:999", 1), std::invalid_argument);
  EXPECT_THROW(make_cuda_backend(-1), std::invalid_argument);
}

TEST(Device, OutOfMemoryFallsBackToTheCpuForThatLayer) {
  const int m = 64, n = 128;
  const auto w = structured_matrix(m, n, 11);
  const auto o = nf_options(4, 2, SvdMode::Randomized, 8);
  auto cpu = make_cpu_backend(1);
  OutOfMemoryBackend oom;
  std::vector<std::string> warnings;
  const auto got =
      loftq_with_fallback(oom, cpu.get(), w.data(), m, n, o, "model.layers.0.mlp.up_proj.weight",
                          [&](const std::string& s) { warnings.push_back(s); });
  const auto ref = loftq(*cpu, w.data(), m, n, o);
  EXPECT_EQ(got.q, ref.q);
  EXPECT_EQ(got.a, ref.a);
  EXPECT_EQ(got.b, ref.b);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(
      warnings[0].find("out of memory on oom for 'model.layers.0.mlp.up_proj.weight' (64x128)"),
      std::string::npos)
      << warnings[0];
  EXPECT_NE(warnings[0].find("running it on cpu"), std::string::npos) << warnings[0];
  // Without a fallback the error propagates; other errors are never swallowed.
  EXPECT_THROW(loftq_with_fallback(oom, nullptr, w.data(), m, n, o), DeviceOutOfMemory);
  EXPECT_THROW(
      loftq_with_fallback(*cpu, cpu.get(), w.data(), m, n, nf_options(4, 0, SvdMode::Exact, 8)),
      std::invalid_argument);
  // A healthy primary is used as is, without a warning.
  warnings.clear();
  const auto direct = loftq_with_fallback(*cpu, &oom, w.data(), m, n, o, "t",
                                          [&](const std::string& s) { warnings.push_back(s); });
  EXPECT_EQ(direct.q, ref.q);
  EXPECT_TRUE(warnings.empty());
}

TEST(Device, MakeBackendsAddsACpuFallbackOnlyOffTheCpu) {
  std::string chosen;
  const auto cpu = make_backends("cpu", 1, &chosen);
  EXPECT_EQ(cpu.primary->name(), "cpu");
  EXPECT_EQ(cpu.fallback(), nullptr);
  EXPECT_EQ(chosen, "cpu (1 thread)");
  std::string why;
  const auto any = make_backends("auto", 1, &chosen);
  if (cuda_device_count(&why) == 0) {
    EXPECT_EQ(any.primary->name(), "cpu");
    EXPECT_EQ(any.fallback(), nullptr);
    EXPECT_NE(chosen.find("(auto: " + why + ")"), std::string::npos) << chosen;
  } else {
    ASSERT_NE(any.fallback(), nullptr);
    EXPECT_EQ(any.fallback()->name(), "cpu");
  }
}

namespace loftqd::quant {
namespace {

// How many matrices at once: the request (0 = one per core), bounded by memory, at least one.
TEST(CpuJobs, RequestCoresAndMemoryBound) {
  const unsigned hc = std::thread::hardware_concurrency();
  const int cores = hc == 0 ? 1 : static_cast<int>(hc);
  EXPECT_EQ(cpu_jobs(0, 0, 0), cores);
  EXPECT_EQ(cpu_jobs(4, 0, 0), 4);             // no working-set estimate: the request
  EXPECT_EQ(cpu_jobs(4, 100, 250), 2);         // memory holds two
  EXPECT_EQ(cpu_jobs(3, 100, 50), 1);          // not even one: still one
  EXPECT_EQ(cpu_jobs(2, 100, 1000), 2);        // the request when memory allows more
  EXPECT_EQ(cpu_jobs(0, 100, 100000), cores);  // one per core
}

TEST(CpuJobs, WorkersAreSeparateCpuBackends) {
  CpuWorkers w(3);
  const auto b = w.backends();
  ASSERT_EQ(b.size(), 3u);
  EXPECT_NE(b[0], b[1]);
  EXPECT_NE(b[1], b[2]);
  for (auto* be : b) EXPECT_EQ(be->name(), "cpu");
  EXPECT_EQ(CpuWorkers(0).backends().size(), 1u);
}

}  // namespace
}  // namespace loftqd::quant

namespace loftqd::quant {
namespace {

// The CPU backend hands freed arrays out again; a reused array carries no state into the next
// computation (LoftQ twice on one backend gives the same result as on a fresh one), and a
// buffer may outlive its backend.
TEST(CpuBuffers, ReusedArraysChangeNoResultAndMayOutliveTheBackend) {
  const int m = 96, n = 64;
  std::vector<float> w(size_t(m) * n);
  for (size_t i = 0; i < w.size(); ++i) w[i] = std::sin(0.37f * float(i)) + 0.01f * float(i % 7);
  LoftqOptions o;
  o.rank = 8;
  o.iters = 3;
  auto be = make_cpu_backend(1);
  const LoftqResult first = loftq(*be, w.data(), m, n, o);
  const LoftqResult again = loftq(*be, w.data(), m, n, o);  // on reused arrays
  const LoftqResult fresh = loftq(*make_cpu_backend(1), w.data(), m, n, o);
  EXPECT_EQ(again.q, first.q);
  EXPECT_EQ(again.a, first.a);
  EXPECT_EQ(fresh.b, first.b);
  EXPECT_EQ(again.iter_errors, first.iter_errors);
  auto buf = be->alloc(1000);
  be.reset();
  buf.reset();  // no use of the destroyed backend (ASan would say)
}

}  // namespace
}  // namespace loftqd::quant
