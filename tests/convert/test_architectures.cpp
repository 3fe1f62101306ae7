// Every registry architecture through quantize_model with its default targets: the adapter
// keys, shapes and effective weights are what PEFT's loading rules give (written out here per
// architecture, not taken from the registry), what the loader would quantize is corrected or
// left out, and verify accepts the result.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>

#include "convert/layouts.h"
#include "convert/verify.h"
#include "model/registry.h"

namespace loftqd::convert {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using loftqd::testing::peft_effective_error;
using loftqd::testing::quick_options;
using loftqd::testing::read_json;
using loftqd::testing::slurp;
using loftqd::testing::TempDir;
using loftqd::testing::tensor_f32;
using loftqd::testing::tiny_synth;
using ::testing::HasSubstr;

// What PEFT does with the default targets of one architecture (2 layers per stack, 2 experts).
struct Expect {
  std::string arch;
  std::set<std::string> targets;  // adapter_config.json target_modules
  int wrapped;                    // modules PEFT wraps
  std::set<std::string> conv1d;   // leaves whose weight is stored (in, out)
  std::vector<std::string> skip;  // llm_int8_skip_modules ([] = the loader's default)
  int left_out;
  std::string task_type;
  std::string prefix;  // the task class's prefix a base-class save gets
};

const std::set<std::string> kLlama = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                      "gate_proj", "up_proj", "down_proj"};
const std::set<std::string> kBart = {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"};

const std::vector<Expect>& expectations() {
  static const std::vector<Expect> e = {
      {"llama", kLlama, 14, {}, {}, 0, "CAUSAL_LM", "model"},
      {"mistral", kLlama, 14, {}, {}, 0, "CAUSAL_LM", "model"},
      {"qwen2", kLlama, 14, {}, {}, 0, "CAUSAL_LM", "model"},
      {"qwen3", kLlama, 14, {}, {}, 0, "CAUSAL_LM", "model"},
      {"gemma", kLlama, 14, {}, {}, 0, "CAUSAL_LM", "model"},
      {"gemma2", kLlama, 14, {}, {}, 0, "CAUSAL_LM", "model"},
      // 4 attention + 2 experts x 3 per layer; the routers are left out.
      {"mixtral",
       {"q_proj", "k_proj", "v_proj", "o_proj", "w1", "w2", "w3"},
       20,
       {},
       {"lm_head", "gate"},
       2,
       "CAUSAL_LM",
       "model"},
      // 4 attention + 2 experts x 3 + the shared expert's 3 per layer.
      {"qwen2_moe",
       kLlama,
       26,
       {},
       {"lm_head", "gate", "shared_expert_gate"},
       4,
       "CAUSAL_LM",
       "model"},
      {"phi",
       {"q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"},
       12,
       {},
       {},
       0,
       "CAUSAL_LM",
       "model"},
      {"phi3",
       {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"},
       8,
       {},
       {},
       0,
       "CAUSAL_LM",
       "model"},
      {"starcoder2",
       {"q_proj", "k_proj", "v_proj", "o_proj", "c_fc", "c_proj"},
       12,
       {},
       {},
       0,
       "CAUSAL_LM",
       "model"},
      {"falcon",
       {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"},
       8,
       {},
       {},
       0,
       "CAUSAL_LM",
       "transformer"},
      {"gpt_neox",
       {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"},
       8,
       {},
       {},
       0,
       "CAUSAL_LM",
       "gpt_neox"},
      {"gpt2",
       {"c_attn", "c_proj", "c_fc"},
       8,
       {"c_attn", "c_proj", "c_fc"},
       {},
       0,
       "CAUSAL_LM",
       "transformer"},
      {"opt", kBart, 12, {}, {}, 0, "CAUSAL_LM", "model"},
      // encoder 4 + 3, decoder 4 + 4 + 3 per layer
      {"t5", {"q", "k", "v", "o", "wi_0", "wi_1", "wo"}, 36, {}, {}, 0, "SEQ_2_SEQ_LM", ""},
      {"mt5", {"q", "k", "v", "o", "wi_0", "wi_1", "wo"}, 36, {}, {}, 0, "SEQ_2_SEQ_LM", ""},
      // encoder 6, decoder 10 per layer
      {"bart", kBart, 32, {}, {}, 0, "SEQ_2_SEQ_LM", "model"},
      {"mbart", kBart, 32, {}, {}, 0, "SEQ_2_SEQ_LM", "model"},
      {"deberta-v2",
       {"query_proj", "key_proj", "value_proj", "intermediate.dense", "output.dense"},
       12,
       {},
       {"classifier", "pooler"},
       1,
       "SEQ_CLS",
       "deberta"},
      // ... + bert.pooler.dense, pretrained and quantized by the loader
      {"bert", {"query", "key", "value", "dense"}, 13, {}, {}, 0, "SEQ_CLS", "bert"},
      {"roberta",
       {"query", "key", "value", "intermediate.dense", "output.dense"},
       12,
       {},
       {"classifier"},
       2,
       "SEQ_CLS",
       "roberta"},
  };
  return e;
}

bool peft_match(const std::string& module, const std::set<std::string>& targets) {
  for (const auto& t : targets)
    if (module == t || module.ends_with("." + t)) return true;
  return false;
}

std::string leaf(const std::string& module) {
  return module.substr(module.rfind('.') + 1);
}

// Checks a quantized layout of `model` against PEFT's rules for `e`; `prefix` is put in front
// of the checkpoint's keys (a base-class save).
void expect_peft_layout(const fs::path& model, const fs::path& out, const Expect& e,
                        const std::string& prefix) {
  const json acfg = read_json(out / "loftq_init" / "adapter_config.json");
  EXPECT_EQ(acfg["task_type"], e.task_type);
  EXPECT_EQ(std::set<std::string>(acfg["target_modules"].begin(), acfg["target_modules"].end()),
            e.targets);
  EXPECT_EQ(acfg["fan_in_fan_out"], !e.conv1d.empty());
  const int r = acfg["r"].get<int>();
  const double s = acfg["lora_alpha"].get<double>() / r;
  auto ad = model::SafetensorsFile::open(out / "loftq_init" / "adapter_model.safetensors");
  const json lj = read_json(out / "loftq.json");
  std::map<std::string, json> rec;
  for (const auto& l : lj["layers"]) rec[l["tensor"].get<std::string>()] = l;
  int wrapped = 0;
  const auto ck = model::Checkpoint::open(model);
  for (const auto& [shard, t] : ck.all_tensors()) {
    const std::string name = prefix.empty() ? t->name : prefix + "." + t->name;
    if (!name.ends_with(".weight")) continue;
    const std::string module = name.substr(0, name.size() - 7);
    if (!peft_match(module, e.targets)) continue;
    ++wrapped;
    const bool conv = e.conv1d.count(leaf(module)) > 0;
    const int64_t out_f = conv ? t->shape[1] : t->shape[0], in_f = conv ? t->shape[0] : t->shape[1];
    const auto* a = ad->find("base_model.model." + module + ".lora_A.weight");
    const auto* b = ad->find("base_model.model." + module + ".lora_B.weight");
    ASSERT_TRUE(a && b) << e.arch << ": no adapter for " << module;
    EXPECT_EQ(a->shape, (std::vector<int64_t>{r, in_f})) << module;
    EXPECT_EQ(b->shape, (std::vector<int64_t>{out_f, r})) << module;
    const double err =
        peft_effective_error(ck.shard(shard).read_f32(*t), tensor_f32(out, t->name),
                             ad->read_f32(*a), ad->read_f32(*b), out_f, in_f, r, s, conv);
    ASSERT_TRUE(rec.count(t->name)) << t->name;
    EXPECT_NEAR(err, rec[t->name]["loftq_error"].get<double>(), 1e-5) << t->name;
    EXPECT_LT(err, rec[t->name]["qlora_error"].get<double>()) << t->name;
  }
  EXPECT_EQ(wrapped, e.wrapped) << e.arch;
  EXPECT_EQ(ad->tensors().size(), 2u * static_cast<size_t>(e.wrapped)) << e.arch;
  EXPECT_EQ(lj["layers"].size(), static_cast<size_t>(e.wrapped));
  EXPECT_EQ(lj["left_out"].size(), static_cast<size_t>(e.left_out)) << lj["left_out"].dump();
  EXPECT_EQ(lj["llm_int8_skip_modules"], json(e.skip));
}

class EveryArch : public ::testing::TestWithParam<Expect> {};

TEST_P(EveryArch, DefaultTargetsLoadAsPeftExpectsAndVerify) {
  const Expect& e = GetParam();
  TempDir tmp;
  model::synth_checkpoint(tiny_synth(e.arch), tmp / "model");
  auto be = quant::make_cpu_backend(1);
  const auto rep = quantize_model(tmp / "model", tmp / "out", quick_options(), *be);
  EXPECT_EQ(rep.model_type, e.arch);
  expect_peft_layout(tmp / "model", tmp / "out", e, "");
  const auto v = verify_layout(tmp / "out", tmp / "model", *be);
  EXPECT_TRUE(v.ok()) << ::testing::PrintToString(v.problems);
  EXPECT_EQ(v.layers.size(), static_cast<size_t>(e.wrapped));
  EXPECT_THAT(slurp(tmp / "out" / "README.md"),
              HasSubstr(model::auto_class_for(e.task_type) + ".from_pretrained("));
}

TEST_P(EveryArch, BaseClassSaveGetsTheTaskClassPrefix) {
  const Expect& e = GetParam();
  TempDir tmp;
  auto so = tiny_synth(e.arch);
  so.base_class = true;
  model::synth_checkpoint(so, tmp / "model");
  auto be = quant::make_cpu_backend(1);
  quantize_model(tmp / "model", tmp / "out", quick_options(), *be);
  const json lj = read_json(tmp / "out" / "loftq.json");
  EXPECT_EQ(lj["architecture"]["base_class_save"], !e.prefix.empty());
  Expect base = e;
  // A base-class save has no head; a seq-cls task head (deberta's pooler, roberta's
  // classifier) is then not in the checkpoint either.
  if (e.arch == "deberta-v2") base.left_out = 0;
  if (e.arch == "roberta") base.left_out = 0;
  expect_peft_layout(tmp / "model", tmp / "out", base, e.prefix);
  const auto v = verify_layout(tmp / "out", tmp / "model", *be);
  EXPECT_TRUE(v.ok()) << ::testing::PrintToString(v.problems);
}

INSTANTIATE_TEST_SUITE_P(Registry, EveryArch, ::testing::ValuesIn(expectations()),
                         [](const ::testing::TestParamInfo<Expect>& i) {
                           std::string n = i.param.arch;
                           for (char& c : n)
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return n;
                         });

TEST(EveryArchCoverage, TheTableCoversTheRegistry) {
  std::set<std::string> table;
  for (const auto& e : expectations()) table.insert(e.arch);
  for (const auto& a : model::architectures())
    EXPECT_TRUE(table.count(a.model_type)) << a.model_type;
}

}  // namespace
}  // namespace loftqd::convert
