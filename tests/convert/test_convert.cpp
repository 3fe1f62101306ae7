// convert/convert: the layout writer. Expectations come from the published format (DESIGN §3.2)
// and PEFT's loading rules, computed here with plain loops, not by calling the writer's helpers.
#include "convert/convert.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "model/dtype.h"
#include "model/safetensors.h"
#include "model/synth.h"
#include "support/test_util.h"

namespace loftqd::convert {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using loftqd::testing::slurp;
using loftqd::testing::spit;
using loftqd::testing::TempDir;
using ::testing::HasSubstr;

const std::set<std::string> kLlamaTargets = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                             "gate_proj", "up_proj", "down_proj"};

class ConvertTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model::SynthOptions so = small_llama(4);
    so.dtype = model::DType::F32;  // exact effective-weight checks
    model::synth_checkpoint(so, model_);
    backend_ = quant::make_cpu_backend(1);
  }

  static model::SynthOptions small_llama(int layers) {
    model::SynthOptions so;
    so.arch = "llama";
    so.layers = layers;
    so.hidden = 64;
    so.intermediate = 128;
    so.heads = 4;
    so.vocab = 64;
    return so;
  }

  QuantizeOptions options() const {
    QuantizeOptions o;
    o.settings.rank = 8;
    o.settings.iters = 2;
    o.repo_id = "org/tiny-loftq";
    return o;
  }

  // ||W - (Q + s B A)||_F / ||W||_F for one target weight, from the files.
  double effective_error(const fs::path& out, const std::string& weight, double scale) {
    auto w = model::SafetensorsFile::open(model_ / "model.safetensors");
    auto q = model::SafetensorsFile::open(out / "model.safetensors");
    auto ad = model::SafetensorsFile::open(out / "loftq_init" / "adapter_model.safetensors");
    const std::string mod = weight.substr(0, weight.size() - std::string(".weight").size());
    const auto* ta = ad->find("base_model.model." + mod + ".lora_A.weight");
    const auto* tb = ad->find("base_model.model." + mod + ".lora_B.weight");
    EXPECT_TRUE(ta && tb) << weight;
    if (!ta || !tb) return 1e9;
    const auto* tw = w->find(weight);
    const int64_t m = tw->shape[0], n = tw->shape[1], r = ta->shape[0];
    const auto W = w->read_f32(*tw), Q = q->read_f32(*q->find(weight));
    const auto A = ad->read_f32(*ta), B = ad->read_f32(*tb);
    double err = 0, norm = 0;
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double ba = 0;
        for (int64_t k = 0; k < r; ++k) ba += double(B[i * r + k]) * A[k * n + j];
        const double d = W[i * n + j] - (Q[i * n + j] + scale * ba);
        err += d * d;
        norm += double(W[i * n + j]) * W[i * n + j];
      }
    return std::sqrt(err / norm);
  }

  TempDir tmp_;
  fs::path model_ = tmp_ / "model";
  std::unique_ptr<quant::Backend> backend_;
};

TEST_F(ConvertTest, WritesThePublishedLayout) {
  const fs::path out = tmp_ / "out";
  const auto rep = quantize_model(model_, out, options(), *backend_);
  EXPECT_EQ(rep.model_type, "llama");
  EXPECT_EQ(rep.layers.size(), 4u * 7u);
  for (const char* f : {"config.json", "model.safetensors", "loftq.json", "README.md",
                        "loftq_init/adapter_config.json", "loftq_init/adapter_model.safetensors"})
    EXPECT_TRUE(fs::is_regular_file(out / f)) << f;
  // Nothing of the staging directory is left beside OUT_DIR.
  for (const auto& e : fs::directory_iterator(tmp_.path()))
    EXPECT_FALSE(e.path().filename().string().starts_with(".")) << e.path();

  // Adapter keys, shapes and dtypes as PEFT's LoRA layers name and build them.
  auto in = model::SafetensorsFile::open(model_ / "model.safetensors");
  auto ad = model::SafetensorsFile::open(out / "loftq_init" / "adapter_model.safetensors");
  auto bb = model::SafetensorsFile::open(out / "model.safetensors");
  size_t targets = 0;
  for (const auto& t : in->tensors()) {
    const std::string mod = t.name.substr(0, t.name.rfind('.'));
    const std::string leaf = mod.substr(mod.rfind('.') + 1);
    const bool target = t.name.ends_with(".weight") && kLlamaTargets.count(leaf);
    const auto* ot = bb->find(t.name);
    ASSERT_TRUE(ot) << t.name;
    const auto a = in->bytes(t), b = bb->bytes(*ot);
    const bool same = std::equal(a.begin(), a.end(), b.begin(), b.end());
    if (!target) {
      EXPECT_TRUE(same) << t.name << " is not a target and must be byte-identical";
      continue;
    }
    ++targets;
    EXPECT_FALSE(same) << t.name << " is a target and must be replaced by Q";
    const auto* la = ad->find("base_model.model." + mod + ".lora_A.weight");
    const auto* lb = ad->find("base_model.model." + mod + ".lora_B.weight");
    ASSERT_TRUE(la && lb) << mod;
    EXPECT_EQ(la->shape, (std::vector<int64_t>{8, t.shape[1]}));
    EXPECT_EQ(lb->shape, (std::vector<int64_t>{t.shape[0], 8}));
    EXPECT_EQ(la->dtype, t.dtype);
  }
  EXPECT_EQ(targets, 28u);
  EXPECT_EQ(ad->tensors().size(), 2 * targets);

  const json acfg = json::parse(slurp(out / "loftq_init" / "adapter_config.json"));
  EXPECT_EQ(acfg["peft_type"], "LORA");
  EXPECT_EQ(acfg["task_type"], "CAUSAL_LM");
  EXPECT_EQ(acfg["r"], 8);
  EXPECT_EQ(acfg["lora_alpha"], 8);
  EXPECT_EQ(acfg["init_lora_weights"], true);
  EXPECT_EQ(acfg["base_model_name_or_path"], "org/tiny-loftq");
  EXPECT_EQ(std::set<std::string>(acfg["target_modules"].begin(), acfg["target_modules"].end()),
            kLlamaTargets);
  EXPECT_EQ(slurp(out / "config.json"), slurp(model_ / "config.json"));
}

TEST_F(ConvertTest, EffectiveWeightMatchesTheRecordWithAlphaScaling) {
  QuantizeOptions o = options();
  o.settings.lora_alpha = 32;  // PEFT applies (alpha / r) = 4 times B A
  const fs::path out = tmp_ / "out";
  const auto rep = quantize_model(model_, out, o, *backend_);
  for (const auto& l : rep.layers) {
    const double e = effective_error(out, l.tensor, 32.0 / 8.0);
    EXPECT_NEAR(e, l.loftq_error, 1e-5) << l.tensor;
    EXPECT_LT(l.loftq_error, l.qlora_error) << l.tensor;
  }
  const json lj = json::parse(slurp(out / "loftq.json"));
  EXPECT_EQ(lj["lora_alpha"], 32);
  EXPECT_EQ(lj["rank"], 8);
  EXPECT_EQ(lj["layers"].size(), rep.layers.size());
}

TEST_F(ConvertTest, AveragePlanIsResolvedAgainstTheModelWithOverrides) {
  QuantizeOptions o = options();
  o.settings.plan = quant::BitPlan::average(3);  // 4 layers: floor(4 * 1 / 2) = 2 at 4 bits
  o.settings.plan.add(quant::PlanRule{-1, -1, {"down_proj"}, 4});
  const auto rep = quantize_model(model_, tmp_ / "out", o, *backend_);
  for (const auto& l : rep.layers) {
    const int want = l.module == "down_proj" || *l.layer < 2 ? 4 : 2;
    EXPECT_EQ(l.bits, want) << l.tensor;
    EXPECT_EQ(l.quant, want == 4 ? "nf4" : "nf2") << l.tensor;
  }
  const json lj = json::parse(slurp(tmp_ / "out" / "loftq.json"));
  EXPECT_EQ(lj["num_layers"], 4);
  EXPECT_EQ(lj["bit_plan_spec"], "0-1:4,2-:2,down_proj@*:4");
}

TEST_F(ConvertTest, RefusesBeforeWritingAnything) {
  QuantizeOptions bad = options();
  bad.settings.rank = 0;
  try {
    quantize_model(model_, tmp_ / "out", bad, *backend_);
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_THAT(e.what(), HasSubstr("--rank: must be >= 1"));
  }
  EXPECT_FALSE(fs::exists(tmp_ / "out"));
  EXPECT_THROW(quantize_model(model_, model_, options(), *backend_), std::invalid_argument);

  // A non-empty OUT_DIR is kept unless force.
  fs::create_directories(tmp_ / "busy");
  spit(tmp_ / "busy" / "keep.txt", "mine");
  EXPECT_THROW(quantize_model(model_, tmp_ / "busy", options(), *backend_), OutputExistsError);
  EXPECT_EQ(slurp(tmp_ / "busy" / "keep.txt"), "mine");
  QuantizeOptions force = options();
  force.force = true;
  quantize_model(model_, tmp_ / "busy", force, *backend_);
  EXPECT_FALSE(fs::exists(tmp_ / "busy" / "keep.txt"));
  EXPECT_TRUE(fs::exists(tmp_ / "busy" / "loftq.json"));
}

TEST_F(ConvertTest, InterruptedRunLeavesOutputAsItWas) {
  QuantizeOptions o = options();
  int polls = 0;
  o.should_stop = [&] { return ++polls > 3; };
  EXPECT_THROW(quantize_model(model_, tmp_ / "out", o, *backend_), Interrupted);
  EXPECT_FALSE(fs::exists(tmp_ / "out"));
  for (const auto& e : fs::directory_iterator(tmp_.path()))
    EXPECT_FALSE(e.path().filename().string().starts_with(".")) << e.path();
}

// The daemon quantizes the first shards while the rest download: a run planned from the
// pending shards' header blocks, each waited for before it is read, writes the same bytes as a
// run over the complete checkpoint; a wait that throws, or a shard that arrives with another
// header, leaves OUT_DIR as it was.
TEST_F(ConvertTest, PendingShardsAreWaitedForAndGiveTheSameLayout) {
  model::SynthOptions so = small_llama(3);
  so.shards = 3;
  const fs::path dir = tmp_ / "sharded", away = tmp_ / "away";
  model::synth_checkpoint(so, dir);
  std::vector<std::string> shards;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().starts_with("model-")) shards.push_back(e.path().filename());
  std::sort(shards.begin(), shards.end());
  ASSERT_EQ(shards.size(), 3u);
  quantize_model(dir, tmp_ / "whole", options(), *backend_);

  // Shards 2 and 3 are "downloading": away, known by their header blocks (read by hand).
  fs::create_directories(away);
  std::map<std::string, std::string> pending;
  for (size_t i = 1; i < 3; ++i) {
    pending[shards[i]] = loftqd::testing::safetensors_header_block(dir / shards[i]);
    fs::rename(dir / shards[i], away / shards[i]);
  }
  QuantizeOptions o = options();
  o.pending_shards = pending;
  std::vector<std::string> waited;
  size_t targets_before_wait = 0, done = 0;
  o.on_tensor_done = [&](const std::string&) { ++done; };
  o.wait_for_shard = [&](const std::string& s) {
    if (waited.empty()) targets_before_wait = done;
    waited.push_back(s);
    fs::rename(away / s, dir / s);
  };
  quantize_model(dir, tmp_ / "overlapped", o, *backend_);
  EXPECT_EQ(waited, (std::vector<std::string>{shards[1], shards[2]}));
  EXPECT_GT(targets_before_wait, 0u);  // shard 1 was quantized before shard 2 was there
  for (const std::string& f :
       {shards[0], shards[1], shards[2], std::string("model.safetensors.index.json"),
        std::string("loftq_init/adapter_model.safetensors"),
        std::string("loftq_init/adapter_config.json")})
    EXPECT_EQ(slurp(tmp_ / "overlapped" / f), slurp(tmp_ / "whole" / f)) << f;

  // Unplanned without a way to wait.
  QuantizeOptions no_wait = options();
  no_wait.pending_shards = pending;
  EXPECT_THROW(quantize_model(dir, tmp_ / "x", no_wait, *backend_), std::invalid_argument);

  // The wait gives up: what it throws comes out, and nothing is left behind.
  fs::rename(dir / shards[2], away / shards[2]);
  struct Gone {};
  o.wait_for_shard = [&](const std::string& s) {
    if (s == shards[2]) throw Gone{};
  };
  EXPECT_THROW(quantize_model(dir, tmp_ / "failed", o, *backend_), Gone);
  EXPECT_FALSE(fs::exists(tmp_ / "failed"));
  // The shard arrives changed (one byte of its header): refused, naming it.
  std::string changed = slurp(away / shards[2]);
  const size_t at = changed.find("\"pt\"");  // __metadata__ {"format": "pt"}
  ASSERT_NE(at, std::string::npos);
  changed[at + 2] = 'u';  // a valid header of the same length, not the one planned from
  o.wait_for_shard = [&](const std::string& s) {
    if (s == shards[2]) spit(dir / s, changed);
  };
  try {
    quantize_model(dir, tmp_ / "changed", o, *backend_);
    ADD_FAILURE() << "a changed shard was accepted";
  } catch (const model::FormatError& e) {
    EXPECT_THAT(e.what(), HasSubstr(shards[2]));
    EXPECT_THAT(e.what(), HasSubstr("not the one fetched ahead"));
  }
  EXPECT_FALSE(fs::exists(tmp_ / "changed"));
  for (const auto& e : fs::directory_iterator(tmp_.path()))
    EXPECT_FALSE(e.path().filename().string().starts_with(".")) << e.path();
}

// Each backbone shard is handed over as soon as it is complete, then the adapter: in file
// order, with its final bytes already there (what the daemon uploads early is what the layout
// publishes), the first before the tensors of the last shard are computed. What the callee
// throws abandons the run.
TEST_F(ConvertTest, EachWeightsFileIsHandedOverCompleteAsItIsWritten) {
  model::SynthOptions so = small_llama(3);
  so.shards = 3;
  const fs::path dir = tmp_ / "sharded";
  model::synth_checkpoint(so, dir);
  QuantizeOptions o = options();
  std::vector<std::string> names;
  std::map<std::string, std::string> bytes;
  std::vector<size_t> done_at;
  size_t done = 0;
  o.on_tensor_done = [&](const std::string&) { ++done; };
  o.on_weights_file = [&](const std::string& name, const fs::path& file) {
    names.push_back(name);
    bytes[name] = slurp(file);
    done_at.push_back(done);
  };
  const QuantizeReport r = quantize_model(dir, tmp_ / "out", o, *backend_);
  std::vector<std::string> want;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().starts_with("model-")) want.push_back(e.path().filename());
  std::sort(want.begin(), want.end());
  ASSERT_EQ(want.size(), 3u);
  want.push_back("loftq_init/adapter_model.safetensors");  // the adapter, once LoftQ is done
  EXPECT_EQ(names, want);
  for (const auto& n : want) EXPECT_EQ(bytes[n], slurp(tmp_ / "out" / n)) << n;
  ASSERT_EQ(done_at.size(), 4u);
  EXPECT_LT(done_at[0], r.layers.size());  // shard 1 came before LoftQ was done
  EXPECT_EQ(done_at[2], r.layers.size());

  struct Refused {};
  o.on_weights_file = [](const std::string&, const fs::path&) { throw Refused{}; };
  EXPECT_THROW(quantize_model(dir, tmp_ / "refused", o, *backend_), Refused);
  EXPECT_FALSE(fs::exists(tmp_ / "refused"));
}

}  // namespace
}  // namespace loftqd::convert
