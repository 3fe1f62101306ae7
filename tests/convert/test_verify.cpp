#include "convert/verify.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <vector>

#include "convert/layouts.h"

using namespace loftqd::convert;
using namespace loftqd::model;
using namespace loftqd::quant;

TEST(VerifyBlocks, QuantizedBlocksAreRepresentable) {
  std::vector<float> x(64);
  for (int i = 0; i < 64; ++i) x[i] = 0.01f * static_cast<float>((i * 37) % 23) - 0.1f;
  for (auto m : {QuantMethod::NF, QuantMethod::Uniform}) {
    for (int bits : {2, 3, 4}) {
      const QuantSpec s{m, bits, 64};
      std::vector<float> q(64);
      quant_dequant(s, x.data(), 64, q.data());
      for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
        std::vector<float> r = q;
        round_to_dtype(dt, r.data(), r.size());
        EXPECT_TRUE(
            block_representable(r.data(), 64, code_table(m, bits), dt, m == QuantMethod::NF))
            << spec_name(s) << " " << dtype_name(dt);
      }
    }
  }
}

TEST(VerifyBlocks, OffTableValuesAreCaught) {
  std::vector<float> q(64, 0.0f);
  q[0] = 1.0f;
  q[1] = 0.5f;  // not an NF4 code (0.4407 and 0.5626 are)
  EXPECT_FALSE(
      block_representable(q.data(), 64, code_table(QuantMethod::NF, 4), DType::BF16, true));
  q[1] = 0.44070982933044434f;
  EXPECT_TRUE(block_representable(q.data(), 64, code_table(QuantMethod::NF, 4), DType::F32, true));
  q[2] = 0.16093020141124725f;  // an NF4 code but not an NF2 code
  EXPECT_FALSE(block_representable(q.data(), 64, code_table(QuantMethod::NF, 2), DType::F32, true));
  // Uniform 4-bit: values on a grid of one scale pass, a value between grid points does not.
  auto u4 = code_table(QuantMethod::Uniform, 4);
  std::vector<float> g(64, 0.0f);
  for (int i = 0; i < 64; ++i) g[i] = u4[i % 16] * 0.37f;
  EXPECT_TRUE(block_representable(g.data(), 64, u4, DType::F32, false));
  g[3] = 0.5f * (u4[5] + u4[6]) * 0.37f;
  EXPECT_FALSE(block_representable(g.data(), 64, u4, DType::F32, false));
  std::vector<float> zeros(64, 0.0f);
  EXPECT_TRUE(
      block_representable(zeros.data(), 64, code_table(QuantMethod::NF, 2), DType::BF16, true));
}

// ---------------------------------------------------------------------------------------------
// verify re-derives the loading rules: one broken layout per defect class of issue 10, each
// what the writer produced (or could produce) before, and verify must name the problem.

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using loftqd::testing::quick_options;
using loftqd::testing::read_json;
using loftqd::testing::slurp;
using loftqd::testing::spit;
using loftqd::testing::TempDir;
using loftqd::testing::tiny_synth;
using ::testing::HasSubstr;

class BrokenLayout : public ::testing::Test {
 protected:
  // A good layout of `arch` (checked), copied to `name` for breaking.
  fs::path good(const std::string& arch, std::function<void(SynthOptions&)> edit = {},
                QuantizeOptions o = quick_options()) {
    auto so = tiny_synth(arch);
    if (edit) edit(so);
    model_ = tmp_ / ("model-" + arch);
    synth_checkpoint(so, model_);
    const fs::path out = tmp_ / ("good-" + arch);
    quantize_model(model_, out, o, *be_);
    const auto v = verify_layout(out, model_, *be_);
    EXPECT_TRUE(v.ok()) << ::testing::PrintToString(v.problems);
    const fs::path copy = tmp_ / ("broken-" + arch);
    fs::copy(out, copy, fs::copy_options::recursive);
    return copy;
  }
  // verify's problems, joined.
  std::string problems(const fs::path& out) {
    const auto v = verify_layout(out, model_, *be_);
    EXPECT_FALSE(v.ok()) << "verify accepted a broken layout";
    std::string s;
    for (const auto& p : v.problems) s += p + "\n";
    return s;
  }
  static void edit_json(const fs::path& p, const std::function<void(json&)>& f) {
    json j = read_json(p);
    f(j);
    spit(p, j.dump(2));
  }
  // Rewrites the adapter with `f` applied to its tensors (name, shape, f32 data).
  static void edit_adapter(const fs::path& out,
                           const std::function<void(std::vector<OwnedTensor>&)>& f) {
    const fs::path p = out / "loftq_init" / "adapter_model.safetensors";
    std::vector<OwnedTensor> ts;
    {
      auto ad = SafetensorsFile::open(p);
      for (const auto& t : ad->tensors()) {
        const auto b = ad->bytes(t);
        ts.push_back({TensorSpec{t.name, t.dtype, t.shape}, {b.begin(), b.end()}});
      }
    }
    f(ts);
    fs::remove(p);
    write_safetensors(p, ts);
  }

  TempDir tmp_;
  fs::path model_;
  std::unique_ptr<Backend> be_ = make_cpu_backend(1);
};

// Phi-3's fused modules (and Mixtral's experts) quantized by the loader with no correction and
// no record: what the writer produced when its targets missed them.
TEST_F(BrokenLayout, LoaderQuantizedWeightWithoutCorrection) {
  QuantizeOptions o = quick_options();
  o.settings.target_modules = {"o_proj", "down_proj"};
  for (const char* arch : {"phi3", "mixtral"}) {
    if (std::string(arch) == "mixtral") o.settings.target_modules = {"q_proj", "k_proj"};
    const fs::path out = good(arch, {}, o);  // left-outs recorded: verify accepts it
    edit_json(out / "loftq.json", [](json& j) {
      j["left_out"] = json::array();
      j["llm_int8_skip_modules"] = json::array();
    });
    const std::string p = problems(out);
    EXPECT_THAT(p, HasSubstr("is quantized by the loader but carries no LoftQ correction"));
    if (std::string(arch) == "phi3") {
      EXPECT_THAT(p, HasSubstr("model.layers.0.self_attn.qkv_proj"));
      EXPECT_THAT(p, HasSubstr("model.layers.1.mlp.gate_up_proj"));
    } else {
      EXPECT_THAT(p, HasSubstr("model.layers.0.block_sparse_moe.experts.1.w2"));
      EXPECT_THAT(p, HasSubstr("[router]"));
    }
  }
}

TEST_F(BrokenLayout, LeftOutButNotRecordedOrNotInTheSnippet) {
  fs::path out = good("mixtral");
  edit_json(out / "loftq.json", [](json& j) { j["left_out"] = json::array(); });
  EXPECT_THAT(problems(out), HasSubstr("does not list it under left_out"));
  out = good("qwen2_moe");
  std::string card = slurp(out / "README.md");
  const size_t at = card.find(",\n        llm_int8_skip_modules=");
  ASSERT_NE(at, std::string::npos);
  card.erase(at, card.find("]", at) + 1 - at);
  spit(out / "README.md", card);
  EXPECT_THAT(problems(out), HasSubstr("does not pass llm_int8_skip_modules=[\"lm_head\", "
                                       "\"gate\", \"shared_expert_gate\"]"));
}

// GPT-2's Conv1D as the writer wrote it before: fan_in_fan_out false, factors for the stored
// (in, out) matrix as if it were (out, in).
TEST_F(BrokenLayout, Conv1DOrientation) {
  fs::path out = good("gpt2");
  edit_json(out / "loftq_init" / "adapter_config.json",
            [](json& j) { j["fan_in_fan_out"] = false; });
  EXPECT_THAT(problems(out), HasSubstr("field 'fan_in_fan_out' is false"));

  out = tmp_ / "shapes";
  fs::copy(tmp_ / "good-gpt2", out, fs::copy_options::recursive);
  // c_attn is stored (64, 192): the old writer made lora_A (r, 192) and lora_B (64, r).
  edit_adapter(out, [](std::vector<OwnedTensor>& ts) {
    for (auto& t : ts) {
      if (t.spec.name.find("h.0.attn.c_attn.lora_A") != std::string::npos) t.spec.shape = {4, 192};
      if (t.spec.name.find("h.0.attn.c_attn.lora_B") != std::string::npos) t.spec.shape = {64, 4};
      const size_t n = t.spec.shape[0] * t.spec.shape[1] * 4;
      t.data.resize(n);
    }
  });
  std::string p = problems(out);
  EXPECT_THAT(p, HasSubstr("PEFT builds lora_A [4, 64] and lora_B [192, 4]"));
  EXPECT_THAT(p, HasSubstr("'transformer.h.0.attn.c_attn' (a Conv1D"));

  // The square attn.c_proj loads, but with the factors of the other orientation (B A)^T: A' =
  // B^T, B' = A^T.
  out = tmp_ / "square";
  fs::copy(tmp_ / "good-gpt2", out, fs::copy_options::recursive);
  edit_adapter(out, [](std::vector<OwnedTensor>& ts) {
    OwnedTensor *a = nullptr, *b = nullptr;
    for (auto& t : ts) {
      if (t.spec.name.ends_with("h.1.attn.c_proj.lora_A.weight")) a = &t;
      if (t.spec.name.ends_with("h.1.attn.c_proj.lora_B.weight")) b = &t;
    }
    ASSERT_TRUE(a && b);
    auto tr = [](const std::vector<std::byte>& d, size_t rows, size_t cols) {
      std::vector<std::byte> o(d.size());
      for (size_t i = 0; i < rows; ++i)
        for (size_t j = 0; j < cols; ++j)
          std::memcpy(&o[(j * rows + i) * 4], &d[(i * cols + j) * 4], 4);
      return o;
    };
    const auto at = tr(a->data, 4, 64), bt = tr(b->data, 64, 4);
    a->data = bt;  // (4, 64) = B^T
    b->data = at;  // (64, 4) = A^T
  });
  p = problems(out);
  EXPECT_THAT(p, HasSubstr("transformer.h.1.attn.c_proj.weight': the effective weight PEFT "
                           "computes (Q + s B A, transposed for Conv1D)"));
  EXPECT_THAT(p, HasSubstr("exceeds the recorded"));
}

// A base-class save's adapter written without the task class's prefix: PEFT loads nothing.
TEST_F(BrokenLayout, BaseClassSaveWithoutThePrefix) {
  const fs::path out = good("llama", [](SynthOptions& o) { o.base_class = true; });
  edit_adapter(out, [](std::vector<OwnedTensor>& ts) {
    for (auto& t : ts)
      t.spec.name.replace(0, std::string("base_model.model.model.").size(), "base_model.model.");
  });
  const std::string p = problems(out);
  EXPECT_THAT(p, HasSubstr("PEFT wraps 'model.layers.0.self_attn.q_proj' and loads "
                           "'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight', "
                           "which is missing"));
  EXPECT_THAT(p, HasSubstr("tensor 'base_model.model.layers.0.self_attn.q_proj.lora_A.weight' "
                           "names no module PEFT wraps"));
  EXPECT_THAT(p, HasSubstr("'model.' prefix"));
}

// embed_tokens in target_modules: PEFT wraps the embedding with LoRA's embedding layer.
TEST_F(BrokenLayout, EmbeddingInTargetModules) {
  const fs::path out = good("llama");
  for (const char* f : {"loftq_init/adapter_config.json", "loftq.json"})
    edit_json(out / f, [](json& j) { j["target_modules"].push_back("embed_tokens"); });
  const std::string p = problems(out);
  EXPECT_THAT(p, HasSubstr("PEFT wrap 'model.embed_tokens', an nn.Embedding"));
}

// The old numbering: decoder layer i numbered i, as encoder layer i; the average over it.
TEST_F(BrokenLayout, LayerNumberingAndAverageBits) {
  QuantizeOptions o = quick_options();
  o.settings.plan = BitPlan::average(3);
  const fs::path out = good(
      "bart",
      [](SynthOptions& s) {
        s.layers = 4;
        s.decoder_layers = 2;
      },
      o);
  edit_json(out / "loftq.json", [](json& j) {
    j["num_layers"] = 4;
    for (auto& l : j["layers"])
      if (l["stack"] == "decoder") l["layer"] = l["stack_layer"];
  });
  std::string p = problems(out);
  EXPECT_THAT(p, HasSubstr("num_layers is 4, the model has 6 layers"));
  EXPECT_THAT(p, HasSubstr("numbers 'model.decoder.layers.0.self_attn.k_proj.weight' as layer 0, "
                           "expected 4 (layer 0 of stack 'decoder', which starts at 4)"));
  // What the old plan did: layers 0-1 of both stacks at 4 bits (3.4 bits on average).
  const fs::path avg = tmp_ / "avg";
  fs::copy(tmp_ / "good-bart", avg, fs::copy_options::recursive);
  edit_json(avg / "loftq.json", [](json& j) {
    double bits = 0, params = 0;
    for (auto& l : j["layers"]) {
      l["bits"] = l["stack_layer"].get<int>() < 2 ? 4 : 2;
      const double n = l["shape"][0].get<double>() * l["shape"][1].get<double>();
      bits += l["bits"].get<double>() * n;
      params += n;
    }
    j["avg_bits"]["achieved"] = bits / params;
  });
  p = problems(avg);
  EXPECT_THAT(p, HasSubstr("--avg-bits 3.000000 gave 3.4"));
}

// A shard on disk but not in the index, in the original or in the output.
TEST_F(BrokenLayout, StrayShard) {
  const fs::path out = good("llama", [](SynthOptions& s) { s.shards = 2; });
  fs::copy_file(out / "model-00002-of-00002.safetensors", out / "model-00003-of-00003.safetensors");
  try {
    verify_layout(out, model_, *be_);
    FAIL() << "no error";
  } catch (const FormatError& e) {
    EXPECT_THAT(e.what(), HasSubstr("model-00003-of-00003.safetensors"));
    EXPECT_THAT(e.what(), HasSubstr("not in weight_map"));
  }
}

// base_model_name_or_path: the output folder's name (the old default), or not a repo id.
TEST_F(BrokenLayout, BaseModelNameIsAFolder) {
  const fs::path out = good("llama");
  edit_json(out / "loftq_init" / "adapter_config.json",
            [&](json& j) { j["base_model_name_or_path"] = out.filename().string(); });
  EXPECT_THAT(problems(out), HasSubstr("is the name of the folder"));
  edit_json(out / "loftq_init" / "adapter_config.json",
            [&](json& j) { j["base_model_name_or_path"] = "/tmp/x/y"; });
  EXPECT_THAT(problems(out), HasSubstr("is not a repo id"));
}

// The card's snippet loads the wrong class (CausalLM for a seq2seq model, with a note).
TEST_F(BrokenLayout, CardLoadsTheWrongClass) {
  const fs::path out = good("bart");
  std::string card = slurp(out / "README.md");
  for (size_t at; (at = card.find("AutoModelForSeq2SeqLM")) != std::string::npos;)
    card.replace(at, std::string("AutoModelForSeq2SeqLM").size(), "AutoModelForCausalLM");
  spit(out / "README.md", card);
  EXPECT_THAT(problems(out), HasSubstr("does not use AutoModelForSeq2SeqLM (task class "
                                       "BartForConditionalGeneration)"));
}

TEST_F(BrokenLayout, WrongTaskTypeAndCountMismatch) {
  const fs::path out = good("bert");
  edit_json(out / "loftq_init" / "adapter_config.json",
            [](json& j) { j["task_type"] = "CAUSAL_LM"; });
  EXPECT_THAT(problems(out), HasSubstr("field 'task_type' is \"CAUSAL_LM\", expected \"SEQ_CLS\""));
  // config.json of the original says 3 layers, the tensors hold 2.
  const fs::path o2 = tmp_ / "count";
  fs::copy(tmp_ / "good-bert", o2, fs::copy_options::recursive);
  edit_json(model_ / "config.json", [](json& j) { j["num_hidden_layers"] = 3; });
  const auto v = verify_layout(o2, model_, *be_);
  std::string p;
  for (const auto& x : v.problems) p += x;
  EXPECT_THAT(p, HasSubstr("num_hidden_layers is 3 but the tensors under 'bert.encoder.layer' "
                           "hold 2"));
}

}  // namespace
