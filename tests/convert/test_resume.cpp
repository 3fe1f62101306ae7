// quantize_model's per-tensor checkpoints: interrupting (should_stop) and resuming give the
// same bytes as an uninterrupted run; damaged or mismatched checkpoints are recomputed.
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "convert/convert.h"
#include "model/safetensors.h"
#include "model/synth.h"
#include "support/test_util.h"

namespace loftqd::convert {
using namespace loftqd::model;  // NOLINT
using namespace loftqd::quant;  // NOLINT
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using loftqd::testing::slurp;
using loftqd::testing::spit;
using loftqd::testing::TempDir;

// Two shards, so resuming crosses a shard boundary; GQA, so k/v have their own shape.
SynthOptions resume_model(uint64_t seed = 0) {
  SynthOptions o;
  o.arch = "llama";
  o.layers = 2;
  o.hidden = 64;
  o.intermediate = 128;
  o.heads = 4;
  o.kv_heads = 2;
  o.vocab = 64;
  o.shards = 2;
  o.seed = seed;
  return o;
}

constexpr size_t kTargets = 14;  // 7 projections x 2 layers

QuantizeOptions base_options() {
  QuantizeOptions o;
  o.settings.rank = 8;
  o.settings.iters = 2;      // randomized SVD (the default): seeded, so reproducible on one backend
  o.repo_id = "org/resume";  // else the README and adapter_config.json name each OUT_DIR
  return o;
}

// Path relative to dir -> contents, for every regular file below dir.
std::map<std::string, std::string> tree(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) out[fs::relative(e.path(), dir).string()] = slurp(e.path());
  return out;
}

json without_seconds(json j) {
  j.erase("seconds");
  for (auto& l : j["layers"]) l.erase("seconds");
  return j;
}

// Every file of `got` equals the one of `want`; loftq.json up to its timings.
void expect_same_output(const fs::path& want, const fs::path& got) {
  auto w = tree(want), g = tree(got);
  ASSERT_EQ(w.size(), g.size());
  for (const auto& [name, bytes] : w) {
    ASSERT_TRUE(g.count(name)) << name;
    if (name == "loftq.json") {
      EXPECT_EQ(without_seconds(json::parse(bytes)), without_seconds(json::parse(g[name])));
    } else {
      EXPECT_TRUE(bytes == g[name]) << name << " differs";
    }
  }
  EXPECT_TRUE(w.count("loftq_init/adapter_model.safetensors"));
  EXPECT_TRUE(w.count("loftq_init/adapter_config.json"));
  EXPECT_TRUE(w.count("model-00001-of-00002.safetensors"));
  EXPECT_TRUE(w.count("model-00002-of-00002.safetensors"));
}

// Checkpoint file -> the tensor it holds.
std::map<fs::path, std::string> checkpoints(const fs::path& dir) {
  std::map<fs::path, std::string> out;
  for (const auto& e : fs::directory_iterator(dir))
    out[e.path()] = SafetensorsFile::open(e.path())->metadata().at("tensor");
  return out;
}

std::vector<std::string> leftovers(const fs::path& parent, const std::string& out_name) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(parent)) {
    const std::string name = e.path().filename().string();
    if (name.starts_with("." + out_name + ".staging-")) out.push_back(name);
  }
  return out;
}

class ResumeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    synth_checkpoint(resume_model(), model_);
    backend_ = make_cpu_backend(1);  // one thread: BLAS results do not depend on scheduling
  }

  QuantizeReport run(const fs::path& out, QuantizeOptions o,
                     std::vector<std::string>* computed = nullptr) {
    if (computed) o.on_tensor_done = [computed](const std::string& t) { computed->push_back(t); };
    return quantize_model(model_, out, o, *backend_);
  }

  // A run that stops after k target tensors; returns the tensors it finished.
  std::vector<std::string> run_interrupted(const fs::path& out, QuantizeOptions o, size_t k) {
    size_t polls = 0;
    o.should_stop = [&polls, k] { return polls++ >= k; };
    std::vector<std::string> computed;
    EXPECT_THROW(run(out, o, &computed), Interrupted);
    EXPECT_EQ(polls, k + 1);
    return computed;
  }

  TempDir tmp_;
  fs::path model_ = tmp_ / "model";
  fs::path ck_ = tmp_ / "ck";
  std::unique_ptr<Backend> backend_;
};

TEST_F(ResumeTest, InterruptedThenResumedMatchesUninterruptedRun) {
  const auto clean = run(tmp_ / "clean", base_options());
  ASSERT_EQ(clean.layers.size(), kTargets);
  EXPECT_EQ(clean.resumed, 0u);

  QuantizeOptions o = base_options();
  o.checkpoint_dir = ck_;
  const size_t k = 9;  // past the first shard's targets
  const auto first = run_interrupted(tmp_ / "out", o, k);
  ASSERT_EQ(first.size(), k);
  EXPECT_EQ(checkpoints(ck_).size(), k);
  EXPECT_FALSE(fs::exists(tmp_ / "out"));

  std::vector<std::string> second;
  const auto r = run(tmp_ / "out", o, &second);
  EXPECT_EQ(r.resumed, k);
  ASSERT_EQ(r.layers.size(), kTargets);
  ASSERT_EQ(second.size(), kTargets - k);
  // Tensors are done in checkpoint order: the first k come from checkpoints, the rest are new.
  for (size_t i = 0; i < kTargets; ++i) {
    EXPECT_EQ(r.layers[i].resumed, i < k) << r.layers[i].tensor;
    EXPECT_EQ(r.layers[i].tensor, i < k ? first[i] : second[i - k]);
    EXPECT_EQ(r.layers[i].tensor, clean.layers[i].tensor);
    EXPECT_EQ(r.layers[i].qlora_error, clean.layers[i].qlora_error);
    EXPECT_EQ(r.layers[i].loftq_error, clean.layers[i].loftq_error);
    EXPECT_EQ(r.layers[i].best_iter, clean.layers[i].best_iter);
  }
  expect_same_output(tmp_ / "clean", tmp_ / "out");
  EXPECT_EQ(checkpoints(ck_).size(), kTargets);

  // A third run takes everything from the checkpoints.
  std::vector<std::string> third;
  const auto r3 = run(tmp_ / "out3", o, &third);
  EXPECT_EQ(r3.resumed, kTargets);
  EXPECT_TRUE(third.empty());
  expect_same_output(tmp_ / "clean", tmp_ / "out3");
}

TEST_F(ResumeTest, InterruptedLeavesOutputAndNoStaging) {
  QuantizeOptions o = base_options();
  o.checkpoint_dir = ck_;
  // Stopped before the first tensor: nothing written but the (empty) checkpoint directory.
  EXPECT_TRUE(run_interrupted(tmp_ / "out", o, 0).empty());
  EXPECT_FALSE(fs::exists(tmp_ / "out"));
  EXPECT_TRUE(leftovers(tmp_.path(), "out").empty());
  EXPECT_TRUE(fs::is_empty(ck_));

  // An existing OUT_DIR replaced with --force stays as it was.
  fs::create_directories(tmp_ / "old");
  spit(tmp_ / "old" / "marker", "previous output");
  o.force = true;
  EXPECT_EQ(run_interrupted(tmp_ / "old", o, 3).size(), 3u);
  EXPECT_EQ(tree(tmp_ / "old"),
            (std::map<std::string, std::string>{{"marker", "previous output"}}));
  EXPECT_TRUE(leftovers(tmp_.path(), "old").empty());
  // Only whole checkpoints: no temp files.
  for (const auto& e : fs::directory_iterator(ck_))
    EXPECT_FALSE(e.path().filename().string().starts_with(".")) << e.path();
  EXPECT_EQ(checkpoints(ck_).size(), 3u);

  // The message names the model and the tensor it stopped before.
  o.should_stop = [] { return true; };
  try {
    quantize_model(model_, tmp_ / "out", o, *backend_);
    FAIL() << "not interrupted";
  } catch (const Interrupted& e) {
    EXPECT_NE(std::string(e.what()).find(model_.string()), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("tensor '"), std::string::npos) << e.what();
  }
}

TEST_F(ResumeTest, DamagedCheckpointsAreRecomputed) {
  run(tmp_ / "clean", base_options());
  QuantizeOptions o = base_options();
  o.checkpoint_dir = ck_;
  run(tmp_ / "first", o);
  const auto files = checkpoints(ck_);
  ASSERT_EQ(files.size(), kTargets);

  // Truncated, a flipped byte in Q, in B's last value, and in the report's text.
  std::set<std::string> damaged;
  auto it = files.begin();
  auto damage = [&](auto&& how) {
    damaged.insert(it->second);
    how(it->first);
    ++it;
  };
  damage([](const fs::path& p) { fs::resize_file(p, fs::file_size(p) / 2); });
  auto flip_at = [](const fs::path& p, std::streamoff off) {
    std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(off);
    char c = 0;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x01);
    f.seekp(off);
    f.write(&c, 1);
  };
  damage([&](const fs::path& p) {
    // The data buffer ends the file; Q's bytes start at its offset into the buffer.
    auto f = SafetensorsFile::open(p);
    const auto off = fs::file_size(p) - f->tensors().back().end + f->find("q")->begin + 5;
    f.reset();
    flip_at(p, static_cast<std::streamoff>(off));
  });
  damage([&](const fs::path& p) { flip_at(p, static_cast<std::streamoff>(fs::file_size(p)) - 1); });
  damage([&](const fs::path& p) {
    const std::string s = slurp(p);
    // A digit of qlora_error in the report (a JSON string inside the header): still valid.
    const auto digit = s.find_first_of("0123456789", s.find("qlora_error"));
    ASSERT_NE(digit, std::string::npos);
    std::string t = s;
    t[digit] = t[digit] == '9' ? '8' : static_cast<char>(t[digit] + 1);
    spit(p, t);
  });
  // Not a safetensors file at all, and a temp file left by a process that is gone.
  spit(it->first, "");
  damaged.insert(it->second);
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  ASSERT_GT(child, 0);
  ::waitpid(child, nullptr, 0);
  const fs::path stale = ck_ / (".x.safetensors.tmp." + std::to_string(child) + ".7");
  spit(stale, "partial");

  std::vector<std::string> computed;
  const auto r = run(tmp_ / "second", o, &computed);
  EXPECT_EQ(r.resumed, kTargets - damaged.size());
  EXPECT_EQ(std::set<std::string>(computed.begin(), computed.end()), damaged);
  EXPECT_EQ(computed.size(), damaged.size());
  expect_same_output(tmp_ / "clean", tmp_ / "second");
  EXPECT_FALSE(fs::exists(stale));
  // The recomputed checkpoints were rewritten and are taken next time.
  EXPECT_EQ(run(tmp_ / "third", o).resumed, kTargets);
}

TEST_F(ResumeTest, MismatchedCheckpointsAreRecomputed) {
  QuantizeOptions o = base_options();
  o.checkpoint_dir = ck_;
  run(tmp_ / "r8", o);

  // Another rank into the same directory: nothing matches, everything is recomputed.
  QuantizeOptions o4 = o;
  o4.settings.rank = 4;
  std::vector<std::string> computed;
  const auto r4 = run(tmp_ / "r4", o4, &computed);
  EXPECT_EQ(r4.resumed, 0u);
  EXPECT_EQ(computed.size(), kTargets);
  QuantizeOptions clean4 = base_options();
  clean4.settings.rank = 4;
  run(tmp_ / "clean4", clean4);
  expect_same_output(tmp_ / "clean4", tmp_ / "r4");

  // The rank-4 checkpoints overwrote the rank-8 ones; back at rank 8 all is recomputed again.
  computed.clear();
  EXPECT_EQ(run(tmp_ / "r8b", o, &computed).resumed, 0u);
  EXPECT_EQ(computed.size(), kTargets);
  expect_same_output(tmp_ / "r8", tmp_ / "r8b");

  // Other options in the fingerprint: alpha, iters, svd mode, bits.
  for (int variant = 0; variant < 4; ++variant) {
    QuantizeOptions v = o;
    if (variant == 0) v.settings.lora_alpha = 16.0;
    if (variant == 1) v.settings.iters = 1;
    if (variant == 2) v.settings.svd = SvdMode::Exact;
    if (variant == 3) v.settings.plan = BitPlan::uniform(2);
    const fs::path out = tmp_ / ("v" + std::to_string(variant));
    EXPECT_EQ(run(out, v).resumed, 0u) << variant;
    EXPECT_EQ(run(tmp_ / ("w" + std::to_string(variant)), v).resumed, kTargets) << variant;
    run(out.string() + "-clean", [&] {
      QuantizeOptions c = v;
      c.checkpoint_dir.clear();
      return c;
    }());
    expect_same_output(out.string() + "-clean", out);
  }

  // Same names and shapes, other weights: the input checksum does not match.
  const fs::path other = tmp_ / "other-model";
  synth_checkpoint(resume_model(1), other);
  o.settings.lora_alpha.reset();
  const auto ro = quantize_model(other, tmp_ / "other-out", o, *backend_);
  EXPECT_EQ(ro.resumed, 0u);
}

// Several tensors at once (tensor_jobs): the same bytes as one at a time on a one-thread
// backend, across both shards, and more jobs than a shard has targets are fine.
TEST_F(ResumeTest, TensorsComputedAtOnceGiveTheSameBytes) {
  const auto one = run(tmp_ / "one", base_options());
  EXPECT_EQ(one.tensor_jobs, 1);
  for (int jobs : {2, 3, 16}) {
    QuantizeOptions o = base_options();
    o.tensor_jobs = jobs;
    std::vector<std::string> computed;
    const fs::path out = tmp_ / ("jobs" + std::to_string(jobs));
    const auto r = run(out, o, &computed);
    EXPECT_EQ(r.tensor_jobs, jobs);
    ASSERT_EQ(r.layers.size(), kTargets);
    for (size_t i = 0; i < kTargets; ++i) {  // reported and announced in file order
      EXPECT_EQ(r.layers[i].tensor, one.layers[i].tensor);
      EXPECT_EQ(computed.at(i), one.layers[i].tensor);
      EXPECT_EQ(r.layers[i].loftq_error, one.layers[i].loftq_error);
    }
    expect_same_output(tmp_ / "one", out);
  }
  // 0 = one per core; on a backend that is not "cpu"-named it would stay 1.
  QuantizeOptions o = base_options();
  o.tensor_jobs = 0;
  const auto r = run(tmp_ / "auto", o);
  EXPECT_GE(r.tensor_jobs, 1);
  expect_same_output(tmp_ / "one", tmp_ / "auto");
}

// Stopped while the workers are ahead of the writer: what they finished is checkpointed, only
// written tensors are announced, and the resumed run gives the uninterrupted bytes.
TEST_F(ResumeTest, InterruptedWhileComputingAheadResumes) {
  run(tmp_ / "clean", base_options());
  QuantizeOptions o = base_options();
  o.checkpoint_dir = ck_;
  o.tensor_jobs = 2;
  const size_t k = 4;
  const auto first = run_interrupted(tmp_ / "out", o, k);
  EXPECT_EQ(first.size(), k);
  const size_t saved = checkpoints(ck_).size();
  EXPECT_GE(saved, k);
  EXPECT_LE(saved, k + 4);  // at most the window (2 per worker) ahead
  EXPECT_FALSE(fs::exists(tmp_ / "out"));
  std::vector<std::string> second;
  const auto r = run(tmp_ / "out", o, &second);
  EXPECT_EQ(r.resumed, saved);
  EXPECT_EQ(second.size(), kTargets - saved);
  expect_same_output(tmp_ / "clean", tmp_ / "out");
}

}  // namespace
}  // namespace loftqd::convert
