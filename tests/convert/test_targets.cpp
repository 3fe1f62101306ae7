// What quantize_model targets, refuses, numbers and records: one test per defect of issue 10
// (each failed before the architecture registry).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <functional>
#include <set>

#include "convert/layouts.h"
#include "convert/verify.h"

namespace loftqd::convert {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using loftqd::testing::error_of;
using loftqd::testing::quick_options;
using loftqd::testing::read_json;
using loftqd::testing::slurp;
using loftqd::testing::spit;
using loftqd::testing::TempDir;
using loftqd::testing::tiny_synth;
using ::testing::HasSubstr;
using ::testing::Not;

class TargetsTest : public ::testing::Test {
 protected:
  fs::path synth(const std::string& arch, std::function<void(model::SynthOptions&)> edit = {}) {
    auto so = tiny_synth(arch);
    if (edit) edit(so);
    const fs::path dir = tmp_ / ("model-" + arch + "-" + std::to_string(++n_));
    model::synth_checkpoint(so, dir);
    return dir;
  }
  QuantizeReport quantize(const fs::path& model, QuantizeOptions o = quick_options()) {
    return quantize_model(model, out(), o, *be_);
  }
  fs::path out() const { return tmp_ / "out"; }
  json loftq() const { return read_json(out() / "loftq.json"); }
  std::multiset<std::string> modules() const {
    std::multiset<std::string> m;
    const json lj = loftq();
    for (const auto& l : lj["layers"]) m.insert(l["module"].get<std::string>());
    return m;
  }

  TempDir tmp_;
  int n_ = 0;
  std::unique_ptr<quant::Backend> be_ = quant::make_cpu_backend(1);
};

// Phi-3: the fused qkv_proj and gate_up_proj (most of each block) were not targeted.
TEST_F(TargetsTest, Phi3FusedModulesAreTargets) {
  quantize(synth("phi3"));
  const auto m = modules();
  EXPECT_EQ(m.count("qkv_proj"), 2u);
  EXPECT_EQ(m.count("gate_up_proj"), 2u);
  EXPECT_EQ(m.count("o_proj"), 2u);
  EXPECT_EQ(m.count("down_proj"), 2u);
  EXPECT_TRUE(loftq()["left_out"].empty());
}

// Mixtral: every expert (block_sparse_moe.experts.N.w1/w2/w3) was skipped.
TEST_F(TargetsTest, MixtralExpertsAreTargetsAndTheRouterIsLeftOut) {
  const auto rep = quantize(synth("mixtral", [](auto& o) { o.experts = 3; }));
  const auto m = modules();
  for (const char* w : {"w1", "w2", "w3"}) EXPECT_EQ(m.count(w), 2u * 3u) << w;
  EXPECT_EQ(rep.layers.size(), 2u * (4u + 9u));
  const json lj = loftq();
  ASSERT_EQ(lj["left_out"].size(), 2u);
  EXPECT_EQ(lj["left_out"][0]["module"], "model.layers.0.block_sparse_moe.gate");
  EXPECT_THAT(lj["left_out"][0]["reason"].get<std::string>(), HasSubstr("router"));
  EXPECT_EQ(lj["llm_int8_skip_modules"], json({"lm_head", "gate"}));
  // Warned about, and in the card's loading snippet.
  ASSERT_FALSE(rep.warnings.empty());
  EXPECT_THAT(rep.warnings[0], HasSubstr("'gate'"));
  EXPECT_THAT(rep.warnings[0], HasSubstr("inside the blocks"));
  EXPECT_THAT(slurp(out() / "README.md"),
              HasSubstr("llm_int8_skip_modules=[\"lm_head\", \"gate\"]"));
}

// Phi-2 (model_type phi) had no default targets.
TEST_F(TargetsTest, PhiHasTheAuthorsTargets) {
  quantize(synth("phi"));
  const json acfg = read_json(out() / "loftq_init" / "adapter_config.json");
  EXPECT_EQ(acfg["target_modules"], json({"q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"}));
  EXPECT_EQ(modules().size(), 12u);
}

// GPT-2's Conv1D weights are (in, out): the adapter has PEFT's orientation, fan_in_fan_out is
// true, and the error is that of PEFT's effective weight Q + s (B A)^T.
TEST_F(TargetsTest, Conv1DAdaptersHavePeftsOrientation) {
  const fs::path model = synth("gpt2");
  const auto rep = quantize(model);
  const json acfg = read_json(out() / "loftq_init" / "adapter_config.json");
  EXPECT_EQ(acfg["fan_in_fan_out"], true);
  auto ad = model::SafetensorsFile::open(out() / "loftq_init" / "adapter_model.safetensors");
  const auto* a = ad->find("base_model.model.transformer.h.0.attn.c_attn.lora_A.weight");
  const auto* b = ad->find("base_model.model.transformer.h.0.attn.c_attn.lora_B.weight");
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{4, 64}));   // (r, in)
  EXPECT_EQ(b->shape, (std::vector<int64_t>{192, 4}));  // (out, r)
  // The square attn.c_proj: PEFT's orientation gives the recorded error, the other one does not.
  const std::string w = "transformer.h.1.attn.c_proj.weight";
  const auto W = loftqd::testing::tensor_f32(model, w), Q = loftqd::testing::tensor_f32(out(), w);
  const auto A =
      ad->read_f32(*ad->find("base_model.model.transformer.h.1.attn.c_proj.lora_A.weight"));
  const auto B =
      ad->read_f32(*ad->find("base_model.model.transformer.h.1.attn.c_proj.lora_B.weight"));
  const double peft = loftqd::testing::peft_effective_error(W, Q, A, B, 64, 64, 4, 1.0, true);
  const double other = loftqd::testing::peft_effective_error(W, Q, A, B, 64, 64, 4, 1.0, false);
  double recorded = -1;
  for (const auto& l : rep.layers)
    if (l.tensor == w) recorded = l.loftq_error;
  EXPECT_NEAR(peft, recorded, 1e-5);
  EXPECT_GT(other, peft * 1.2);
  const json lj = loftq();
  for (const auto& l : lj["layers"]) EXPECT_EQ(l["conv1d"], true) << l["tensor"];
}

// A base-class save (LlamaModel, keys without "model."): PEFT on LlamaForCausalLM expects
// base_model.model.model.layers..., not base_model.model.layers...
TEST_F(TargetsTest, BaseClassSaveKeysGetThePrefix) {
  quantize(synth("llama", [](auto& o) { o.base_class = true; }));
  auto ad = model::SafetensorsFile::open(out() / "loftq_init" / "adapter_model.safetensors");
  EXPECT_TRUE(ad->find("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"));
  EXPECT_FALSE(ad->find("base_model.model.layers.0.self_attn.q_proj.lora_A.weight"));
  // The backbone keeps the checkpoint's own names: transformers adds the prefix on loading.
  const auto ck = model::Checkpoint::open(out());
  EXPECT_TRUE(ck.shard(0).find("layers.0.self_attn.q_proj.weight"));
  EXPECT_THAT(slurp(out() / "README.md"), HasSubstr("base-class save"));
}

// --target-modules embed_tokens was accepted; the embedding ended up quantized uncorrected.
TEST_F(TargetsTest, NonLinearTargetsAreRefusedNamingTheModule) {
  const fs::path model = synth("llama");
  auto with = [&](std::vector<std::string> t) {
    QuantizeOptions o = quick_options();
    o.settings.target_modules = std::move(t);
    return error_of([&] { quantize(model, o); });
  };
  std::string e = with({"q_proj", "embed_tokens"});
  EXPECT_THAT(e, HasSubstr("'embed_tokens' matches 'model.embed_tokens'"));
  EXPECT_THAT(e, HasSubstr("nn.Embedding"));
  e = with({"input_layernorm"});
  EXPECT_THAT(e, HasSubstr("model.layers.0.input_layernorm"));
  EXPECT_THAT(e, HasSubstr("1-D"));
  e = with({"lm_head"});
  EXPECT_THAT(e, HasSubstr("output head"));
  e = with({"self_attn"});
  EXPECT_THAT(e, HasSubstr("'model.layers.0.self_attn'"));
  EXPECT_THAT(e, HasSubstr("container"));
  e = with({"q_proj", "nonexistent"});
  EXPECT_THAT(e, HasSubstr("'nonexistent' matches no weight"));
  EXPECT_FALSE(fs::exists(out()));
}

// Targets chosen by the user leave the rest of the blocks out: warned, recorded, skipped.
TEST_F(TargetsTest, UntargetedLinearsAreRecordedAndSkipped) {
  QuantizeOptions o = quick_options();
  o.settings.target_modules = {"o_proj", "down_proj"};
  const fs::path model = synth("phi3");
  const auto rep = quantize(model, o);
  const json lj = loftq();
  EXPECT_EQ(lj["left_out"].size(), 4u);
  EXPECT_EQ(lj["llm_int8_skip_modules"], json({"lm_head", "qkv_proj", "gate_up_proj"}));
  ASSERT_EQ(rep.warnings.size(), 2u);
  EXPECT_THAT(rep.warnings[0], HasSubstr("qkv_proj"));
  const std::string card = slurp(out() / "README.md");
  EXPECT_THAT(card, HasSubstr("## Left out"));
  EXPECT_THAT(card, HasSubstr("`model.layers.1.mlp.gate_up_proj.weight`"));
  EXPECT_TRUE(verify_layout(out(), model, *be_).ok());
}

// --avg-bits 3 on a distilBART-shaped model (4 encoder, 2 decoder layers) averaged 3.40 bits:
// one index space shared by both stacks, L = highest index + 1.
TEST_F(TargetsTest, AverageBitsAreParameterWeightedOverUnequalStacks) {
  QuantizeOptions o = quick_options();
  o.settings.plan = quant::BitPlan::average(3);
  const fs::path model = synth("bart", [](auto& so) {
    so.layers = 4;
    so.decoder_layers = 2;
  });
  quantize(model, o);
  const json lj = loftq();
  EXPECT_EQ(lj["num_layers"], 6);
  double bits = 0, params = 0;
  std::set<int> decoder_layers;
  for (const auto& l : lj["layers"]) {
    const double n = l["shape"][0].get<double>() * l["shape"][1].get<double>();
    bits += l["bits"].get<double>() * n;
    params += n;
    const std::string t = l["tensor"];
    if (t.starts_with("model.decoder.")) {
      decoder_layers.insert(l["layer"].get<int>());
      EXPECT_EQ(l["stack"], "decoder");
      EXPECT_EQ(l["layer"].get<int>(), 4 + l["stack_layer"].get<int>()) << t;
    }
  }
  EXPECT_NEAR(bits / params, 3.0, 0.05);
  EXPECT_NEAR(lj["avg_bits"]["achieved"].get<double>(), bits / params, 1e-9);
  EXPECT_EQ(decoder_layers, (std::set<int>{4, 5}));  // encoder layers are 0-3
  EXPECT_EQ(lj["stacks"][1]["first"], 4);
  EXPECT_EQ(lj["stacks"][1]["config_field"], "decoder_layers");
  EXPECT_TRUE(verify_layout(out(), model, *be_).ok());
}

TEST_F(TargetsTest, LayerCountsComeFromConfigAndMustMatchTheTensors) {
  const fs::path model = synth("bart");
  json cfg = read_json(model / "config.json");
  cfg["decoder_layers"] = 3;
  spit(model / "config.json", cfg.dump());
  const std::string e = error_of([&] { quantize(model); });
  EXPECT_THAT(e, HasSubstr("decoder_layers is 3"));
  EXPECT_THAT(e, HasSubstr("'model.decoder.layers' hold 2 layer(s)"));
  // A plan covering 0-3 is complete for 2 + 2 layers: the decoder's are 2 and 3.
  cfg["decoder_layers"] = 2;
  spit(model / "config.json", cfg.dump());
  QuantizeOptions o = quick_options();
  o.settings.plan = quant::BitPlan::parse("0-1:4,2-3:2");
  quantize(model, o);
  const json lj = loftq();
  for (const auto& l : lj["layers"])
    EXPECT_EQ(l["bits"], l["stack"] == "encoder" ? 4 : 2) << l["tensor"];
}

// A shard on disk but missing from model.safetensors.index.json was silently dropped.
TEST_F(TargetsTest, ShardsMissingFromTheIndexAreAnError) {
  const fs::path model = synth("llama", [](auto& o) { o.shards = 3; });
  json idx = read_json(model / "model.safetensors.index.json");
  json kept = json::object();
  for (auto& [k, v] : idx["weight_map"].items())
    if (v != "model-00003-of-00003.safetensors") kept[k] = v;
  idx["weight_map"] = kept;
  spit(model / "model.safetensors.index.json", idx.dump());
  try {
    quantize(model);
    FAIL() << "no error";
  } catch (const model::FormatError& e) {
    EXPECT_THAT(e.what(), HasSubstr("model-00003-of-00003.safetensors"));
    EXPECT_THAT(e.what(), HasSubstr("not in weight_map"));
  }
  // An unrelated .safetensors file (Mistral's consolidated.safetensors) is ignored.
  const fs::path ok = synth("mistral", [](auto& o) { o.shards = 2; });
  fs::copy_file(ok / "model-00001-of-00002.safetensors", ok / "consolidated.safetensors");
  quantize(ok);
  EXPECT_FALSE(fs::exists(out() / "consolidated.safetensors"));
  EXPECT_TRUE(verify_layout(out(), ok, *be_).ok());
}

// base_model_name_or_path defaulted to the output folder's name.
TEST_F(TargetsTest, BaseModelNameIsARepoIdOrNullNeverAFolder) {
  auto base_model = [&](const fs::path& model, const std::string& repo_id) {
    QuantizeOptions o = quick_options();
    o.repo_id = repo_id;
    o.force = true;
    const auto rep = quantize(model, o);
    return std::make_pair(
        read_json(out() / "loftq_init" / "adapter_config.json")["base_model_name_or_path"],
        rep.warnings);
  };
  const fs::path plain = synth("llama");
  auto [b, w] = base_model(plain, "");
  EXPECT_TRUE(b.is_null()) << b;
  ASSERT_EQ(w.size(), 1u);
  EXPECT_THAT(w[0], HasSubstr("--repo-id"));
  EXPECT_THAT(slurp(out() / "README.md"), HasSubstr("has no `base_model_name_or_path`"));
  std::tie(b, w) = base_model(plain, "org/published");
  EXPECT_EQ(b, "org/published");
  EXPECT_TRUE(w.empty());

  const fs::path named =
      synth("llama", [](auto& o) { o.name_or_path = "meta-llama/Llama-2-7b-hf"; });
  std::tie(b, w) = base_model(named, "");
  EXPECT_EQ(b, "meta-llama/Llama-2-7b-hf");
  ASSERT_EQ(w.size(), 1u);
  EXPECT_THAT(w[0], HasSubstr("original weights"));
  const std::string card = slurp(out() / "README.md");
  EXPECT_THAT(card,
              HasSubstr("base_model: meta-llama/Llama-2-7b-hf\nbase_model_relation: quantized"));
  EXPECT_THAT(card, HasSubstr("Set it to the repo id"));

  // A local path, or the folder's own name, is not a repo id.
  for (const std::string& p :
       std::vector<std::string>{"/data/ckpt/llama", "out", named.filename().string()}) {
    json cfg = read_json(named / "config.json");
    cfg["_name_or_path"] = p;
    spit(named / "config.json", cfg.dump());
    EXPECT_TRUE(base_model(named, "").first.is_null()) << p;
  }
}

// A derivative keeps its upstream's terms: the licence the Hub reports when the snapshot has no
// README.md (the daemon's default patterns leave it out), and for a gated or private upstream a
// note that its access conditions apply.
TEST_F(TargetsTest, ModelCardKeepsTheUpstreamLicenceAndAccessConditions) {
  const fs::path llama = synth("llama");
  QuantizeOptions o = quick_options();
  o.source.repo = "meta-llama/Llama-2-7b-hf";
  o.source.license = "llama2";
  o.source.gated = true;
  quantize(llama, o);
  std::string card = slurp(out() / "README.md");
  EXPECT_THAT(card, HasSubstr("\nlicense: llama2\n"));
  EXPECT_THAT(card, HasSubstr("License: `llama2`, the license of `meta-llama/Llama-2-7b-hf`"));
  EXPECT_THAT(card, HasSubstr("**Access:** `meta-llama/Llama-2-7b-hf` is gated on the Hugging "
                              "Face Hub"));
  // The upstream's own README wins over what the Hub reported; a private upstream is said so.
  spit(llama / "README.md", "---\nlicense: other\n---\n# tiny\n");
  o.source.gated = false;
  o.source.is_private = true;
  o.force = true;
  quantize(llama, o);
  card = slurp(out() / "README.md");
  EXPECT_THAT(card, HasSubstr("\nlicense: other\n"));
  EXPECT_THAT(card, Not(HasSubstr("llama2")));
  EXPECT_THAT(card, HasSubstr("is a private repository"));
  EXPECT_THAT(card, Not(HasSubstr("is gated")));
  // A public upstream without a licence: no note at all.
  fs::remove(llama / "README.md");
  QuantizeOptions plain = quick_options();
  plain.force = true;
  quantize(llama, plain);
  card = slurp(out() / "README.md");
  EXPECT_THAT(card, Not(HasSubstr("**Access:**")));
  EXPECT_THAT(card, Not(HasSubstr("License: `")));
}

// The card loads the task's class and says what a user of the Hub needs.
TEST_F(TargetsTest, ModelCardLoadsTheTaskClassWithFrontMatterAndCitation) {
  const fs::path bart = synth("bart");
  spit(bart / "README.md", "---\nlicense: apache-2.0\nlanguage: en\n---\n# BART\n");
  quantize(bart);
  std::string card = slurp(out() / "README.md");
  EXPECT_THAT(card,
              HasSubstr("from transformers import AutoModelForSeq2SeqLM, BitsAndBytesConfig"));
  EXPECT_THAT(card, HasSubstr("AutoModelForSeq2SeqLM.from_pretrained("));
  EXPECT_THAT(card, Not(HasSubstr("AutoModelForCausalLM")));
  EXPECT_THAT(card, HasSubstr("BartForConditionalGeneration"));
  EXPECT_THAT(card, HasSubstr("license: apache-2.0\n"));
  EXPECT_THAT(card, HasSubstr("library_name: peft\n"));
  EXPECT_THAT(card, HasSubstr("pipeline_tag: text2text-generation\n"));
  EXPECT_THAT(card, HasSubstr("- loftq\n"));
  EXPECT_THAT(card, HasSubstr("arXiv:2310.08659"));
  EXPECT_THAT(card, HasSubstr("repo = \"org/tiny-loftq\""));
  EXPECT_THAT(card, HasSubstr("encoder layers 0-1, decoder layers 2-3"));
  EXPECT_THAT(card, Not(HasSubstr("llm_int8_skip_modules=")));

  QuantizeOptions o = quick_options();
  o.force = true;
  quantize(synth("deberta-v2"), o);
  card = slurp(out() / "README.md");
  EXPECT_THAT(card, HasSubstr("AutoModelForSequenceClassification.from_pretrained("));
  EXPECT_THAT(card, HasSubstr("pipeline_tag: text-classification"));
  EXPECT_THAT(card, HasSubstr("llm_int8_skip_modules=[\"classifier\", \"pooler\"]"));
}

// An unknown model_type exits 2 listing the candidates, and works with --target-modules.
TEST_F(TargetsTest, UnknownModelTypeListsCandidatesAndNeverGuesses) {
  const fs::path model = synth("llama");
  json cfg = read_json(model / "config.json");
  cfg["model_type"] = "mystery";
  cfg["architectures"] = {"MysteryForCausalLM"};
  spit(model / "config.json", cfg.dump());
  try {
    quantize(model);
    FAIL() << "no error";
  } catch (const std::invalid_argument& e) {
    const std::string m = e.what();
    EXPECT_THAT(m, HasSubstr("model_type 'mystery' is not in loftqd's architecture registry"));
    EXPECT_THAT(m, HasSubstr("--target-modules"));
    EXPECT_THAT(m, HasSubstr("q_proj (2 x [64, 64])"));
    EXPECT_THAT(m, HasSubstr("down_proj (2 x [64, 128])"));
    EXPECT_THAT(m, Not(HasSubstr("input_layernorm")));
  }
  EXPECT_FALSE(fs::exists(out()));
  QuantizeOptions o = quick_options();
  o.settings.target_modules = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                               "gate_proj", "up_proj", "down_proj"};
  const auto rep = quantize(model, o);
  EXPECT_EQ(rep.layers.size(), 14u);
  EXPECT_EQ(loftq()["architecture"]["registered"], false);
  EXPECT_EQ(loftq()["num_layers"], 2);
  EXPECT_TRUE(verify_layout(out(), model, *be_).ok());
}

}  // namespace
}  // namespace loftqd::convert
