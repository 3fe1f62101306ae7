#include "model/synth.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "model/naming.h"
#include "model/registry.h"
#include "model/safetensors.h"
#include "support/test_util.h"

namespace loftqd::model {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using loftqd::testing::slurp;
using loftqd::testing::TempDir;
using ::testing::HasSubstr;

SynthOptions tiny_llama() {
  SynthOptions o;
  o.arch = "llama";
  o.layers = 2;
  o.hidden = 64;
  o.intermediate = 96;
  o.heads = 4;
  o.kv_heads = 2;
  o.vocab = 64;
  return o;
}

// File name -> contents, for every file in a directory.
std::map<std::string, std::string> dir_contents(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::directory_iterator(dir))
    out[e.path().filename().string()] = slurp(e.path());
  return out;
}

json read_json(const fs::path& p) {
  return json::parse(slurp(p));
}

// name -> (dtype, shape) of every tensor of a checkpoint.
struct Entry {
  DType dtype;
  std::vector<int64_t> shape;
};
std::map<std::string, Entry> listing(const Checkpoint& ck) {
  std::map<std::string, Entry> out;
  for (const auto& [shard, t] : ck.all_tensors()) {
    EXPECT_TRUE(out.emplace(t->name, Entry{t->dtype, t->shape}).second) << t->name;
  }
  return out;
}

void expect_shape(const std::map<std::string, Entry>& m, const std::string& name,
                  std::vector<int64_t> shape) {
  auto it = m.find(name);
  ASSERT_NE(it, m.end()) << "missing tensor " << name;
  EXPECT_EQ(it->second.shape, shape) << name;
}

std::vector<float> read_tensor(const Checkpoint& ck, const std::string& name) {
  for (const auto& [shard, t] : ck.all_tensors())
    if (t->name == name) return ck.shard(shard).read_f32(*t);
  ADD_FAILURE() << "missing tensor " << name;
  return {};
}

struct Moments {
  double mean = 0, std = 0, kurtosis = 0;
};
Moments moments(const std::vector<float>& x) {
  Moments m;
  const double n = static_cast<double>(x.size());
  for (float v : x) m.mean += v;
  m.mean /= n;
  double m2 = 0, m4 = 0;
  for (float v : x) {
    const double d = v - m.mean;
    m2 += d * d;
    m4 += d * d * d * d;
  }
  m2 /= n;
  m4 /= n;
  m.std = std::sqrt(m2);
  m.kurtosis = m4 / (m2 * m2);
  return m;
}

// Largest singular value of a row-major [rows, cols] matrix by power iteration on W^T W.
double top_singular_value(const std::vector<float>& w, size_t rows, size_t cols) {
  std::vector<double> v(cols), u(rows);
  for (size_t j = 0; j < cols; ++j) v[j] = 1.0 + 0.01 * static_cast<double>(j % 7);
  double sigma = 0;
  for (int it = 0; it < 100; ++it) {
    for (size_t i = 0; i < rows; ++i) {
      double s = 0;
      for (size_t j = 0; j < cols; ++j) s += w[i * cols + j] * v[j];
      u[i] = s;
    }
    std::fill(v.begin(), v.end(), 0.0);
    for (size_t i = 0; i < rows; ++i)
      for (size_t j = 0; j < cols; ++j) v[j] += w[i * cols + j] * u[i];
    double nv = 0;
    for (double x : v) nv += x * x;
    nv = std::sqrt(nv);
    sigma = std::sqrt(nv);  // |W^T W v| / |v| with |v| = 1 -> sigma^2
    for (double& x : v) x /= nv;
  }
  return sigma;
}

template <class Ex>
void expect_throw_with(const SynthOptions& o, const std::string& needle) {
  TempDir tmp;
  try {
    synth_checkpoint(o, tmp / "out");
    ADD_FAILURE() << "expected an exception mentioning '" << needle << "'";
  } catch (const Ex& e) {
    EXPECT_THAT(e.what(), HasSubstr(needle));
  }
  EXPECT_FALSE(fs::exists(tmp / "out")) << "nothing may be written for bad options";
}

// ---------------------------------------------------------------------------------------------

TEST(SynthDeterminism, SameOptionsGiveIdenticalBytes) {
  TempDir tmp;
  SynthOptions o = tiny_llama();
  o.hidden = 128;
  o.vocab = 2048;  // 262144-element embeddings: exercises the multi-threaded path
  o.layers = 1;
  o.seed = 7;
  synth_checkpoint(o, tmp / "a");
  synth_checkpoint(o, tmp / "b");
  const auto a = dir_contents(tmp / "a");
  const auto b = dir_contents(tmp / "b");
  EXPECT_EQ(a.size(), 6u);  // model, config, generation config, 3 tokenizer files
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, bytes] : a) {
    ASSERT_TRUE(b.count(name)) << name;
    EXPECT_TRUE(bytes == b.at(name)) << name << " differs between two runs";
  }
}

TEST(SynthDeterminism, SeedChangesEveryWeightButNotTheConfig) {
  TempDir tmp;
  SynthOptions o = tiny_llama();
  synth_checkpoint(o, tmp / "a");
  o.seed = 1;
  synth_checkpoint(o, tmp / "b");
  EXPECT_EQ(slurp(tmp / "a" / "config.json"), slurp(tmp / "b" / "config.json"));
  const auto ca = Checkpoint::open(tmp / "a");
  const auto cb = Checkpoint::open(tmp / "b");
  const auto la = listing(ca);
  ASSERT_EQ(la.size(), listing(cb).size());
  for (const auto& [name, e] : la) {
    if (e.shape.size() != 2) continue;
    EXPECT_NE(read_tensor(ca, name), read_tensor(cb, name)) << name;
  }
}

TEST(SynthDeterminism, ShardingDoesNotChangeValues) {
  TempDir tmp;
  SynthOptions o = tiny_llama();
  synth_checkpoint(o, tmp / "one");
  o.shards = 3;
  synth_checkpoint(o, tmp / "three");
  const auto c1 = Checkpoint::open(tmp / "one");
  const auto c3 = Checkpoint::open(tmp / "three");
  for (const auto& [name, e] : listing(c1))
    EXPECT_EQ(read_tensor(c1, name), read_tensor(c3, name)) << name;
}

TEST(SynthLlama, NamesAndShapesWithGroupedQueryAttention) {
  TempDir tmp;
  SynthOptions o;
  o.arch = "llama";
  o.layers = 3;
  o.hidden = 128;
  o.intermediate = 200;
  o.heads = 8;
  o.kv_heads = 2;  // head_dim 16 -> k/v have 32 rows
  o.vocab = 100;
  synth_checkpoint(o, tmp / "m");
  EXPECT_TRUE(fs::is_regular_file(tmp / "m" / "model.safetensors"));
  EXPECT_FALSE(fs::exists(tmp / "m" / "model.safetensors.index.json"));
  const auto ck = Checkpoint::open(tmp / "m");
  EXPECT_FALSE(ck.sharded());
  const auto m = listing(ck);
  EXPECT_EQ(m.size(), 1u + 9u * 3u + 2u);
  for (const auto& [name, e] : m) EXPECT_EQ(e.dtype, DType::BF16) << name;
  expect_shape(m, "model.embed_tokens.weight", {100, 128});
  for (int i = 0; i < 3; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    expect_shape(m, p + "self_attn.q_proj.weight", {128, 128});
    expect_shape(m, p + "self_attn.k_proj.weight", {32, 128});
    expect_shape(m, p + "self_attn.v_proj.weight", {32, 128});
    expect_shape(m, p + "self_attn.o_proj.weight", {128, 128});
    expect_shape(m, p + "mlp.gate_proj.weight", {200, 128});
    expect_shape(m, p + "mlp.up_proj.weight", {200, 128});
    expect_shape(m, p + "mlp.down_proj.weight", {128, 200});
    expect_shape(m, p + "input_layernorm.weight", {128});
    expect_shape(m, p + "post_attention_layernorm.weight", {128});
  }
  expect_shape(m, "model.norm.weight", {128});
  expect_shape(m, "lm_head.weight", {100, 128});
  EXPECT_EQ(ck.shard(0).metadata().at("format"), "pt");
}

TEST(SynthLlama, ConfigAndSideFiles) {
  TempDir tmp;
  SynthOptions o = tiny_llama();
  synth_checkpoint(o, tmp / "m");
  const json c = read_json(tmp / "m" / "config.json");
  EXPECT_EQ(c["architectures"], json::array({"LlamaForCausalLM"}));
  EXPECT_EQ(c["model_type"], "llama");
  EXPECT_EQ(c["hidden_size"], 64);
  EXPECT_EQ(c["intermediate_size"], 96);
  EXPECT_EQ(c["num_hidden_layers"], 2);
  EXPECT_EQ(c["num_attention_heads"], 4);
  EXPECT_EQ(c["num_key_value_heads"], 2);
  EXPECT_EQ(c["vocab_size"], 64);
  EXPECT_EQ(c["torch_dtype"], "bfloat16");
  EXPECT_EQ(c["tie_word_embeddings"], false);
  EXPECT_EQ(c["hidden_act"], "silu");
  EXPECT_EQ(c["bos_token_id"], 1);
  EXPECT_EQ(c["eos_token_id"], 2);
  EXPECT_DOUBLE_EQ(c["rms_norm_eps"].get<double>(), 1e-5);
  EXPECT_DOUBLE_EQ(c["rope_theta"].get<double>(), 10000.0);
  EXPECT_GT(c["max_position_embeddings"].get<int>(), 0);
  // kv_heads = 0 means plain multi-head attention.
  o.kv_heads = 0;
  synth_checkpoint(o, tmp / "mha");
  EXPECT_EQ(read_json(tmp / "mha" / "config.json")["num_key_value_heads"], 4);
  expect_shape(listing(Checkpoint::open(tmp / "mha")), "model.layers.1.self_attn.k_proj.weight",
               {64, 64});

  const json g = read_json(tmp / "m" / "generation_config.json");
  EXPECT_EQ(g["bos_token_id"], 1);
  EXPECT_EQ(g["eos_token_id"], 2);
  const json t = read_json(tmp / "m" / "tokenizer.json");
  EXPECT_EQ(t["version"], "1.0");
  EXPECT_EQ(t["model"]["type"], "WordLevel");
  EXPECT_EQ(t["model"]["vocab"]["<s>"], 1);
  for (const auto& [tok, id] : t["model"]["vocab"].items()) EXPECT_LT(id.get<int>(), o.vocab);
  EXPECT_EQ(read_json(tmp / "m" / "special_tokens_map.json")["eos_token"], "</s>");
  EXPECT_EQ(read_json(tmp / "m" / "tokenizer_config.json")["bos_token"], "<s>");
  // JSON side files use a 2-space indent.
  EXPECT_THAT(slurp(tmp / "m" / "config.json"), HasSubstr("\n  \"model_type\": \"llama\""));
}

TEST(SynthBart, NamesShapesAndConfig) {
  TempDir tmp;
  SynthOptions o;
  o.arch = "bart";
  o.layers = 2;
  o.hidden = 64;
  o.intermediate = 128;
  o.heads = 4;
  o.vocab = 80;
  o.dtype = DType::F16;
  synth_checkpoint(o, tmp / "m");
  const auto ck = Checkpoint::open(tmp / "m");
  const auto m = listing(ck);
  // shared + 2 x (positions + layernorm_embedding 2) + final_logits_bias
  // + encoder layers 16 tensors each + decoder layers 26 each.
  EXPECT_EQ(m.size(), 1u + 2u * 3u + 1u + 2u * 16u + 2u * 26u);
  for (const auto& [name, e] : m) EXPECT_EQ(e.dtype, DType::F16) << name;
  expect_shape(m, "model.shared.weight", {80, 64});
  expect_shape(m, "model.encoder.embed_positions.weight", {1026, 64});
  expect_shape(m, "model.decoder.embed_positions.weight", {1026, 64});
  expect_shape(m, "final_logits_bias", {1, 80});
  for (const char* part : {"encoder", "decoder"}) {
    const std::string stack = std::string("model.") + part;
    expect_shape(m, stack + ".layernorm_embedding.weight", {64});
    expect_shape(m, stack + ".layernorm_embedding.bias", {64});
    for (int i = 0; i < 2; ++i) {
      const std::string p = stack + ".layers." + std::to_string(i) + ".";
      for (const char* proj : {"q_proj", "k_proj", "v_proj", "out_proj"}) {
        expect_shape(m, p + "self_attn." + proj + ".weight", {64, 64});
        expect_shape(m, p + "self_attn." + proj + ".bias", {64});
      }
      expect_shape(m, p + "self_attn_layer_norm.weight", {64});
      expect_shape(m, p + "self_attn_layer_norm.bias", {64});
      expect_shape(m, p + "fc1.weight", {128, 64});
      expect_shape(m, p + "fc1.bias", {128});
      expect_shape(m, p + "fc2.weight", {64, 128});
      expect_shape(m, p + "fc2.bias", {64});
      expect_shape(m, p + "final_layer_norm.weight", {64});
      expect_shape(m, p + "final_layer_norm.bias", {64});
      const bool decoder = std::string(part) == "decoder";
      EXPECT_EQ(m.count(p + "encoder_attn.q_proj.weight"), decoder ? 1u : 0u) << p;
      EXPECT_EQ(m.count(p + "encoder_attn_layer_norm.weight"), decoder ? 1u : 0u) << p;
      if (decoder) {
        expect_shape(m, p + "encoder_attn.out_proj.weight", {64, 64});
        expect_shape(m, p + "encoder_attn.v_proj.bias", {64});
        expect_shape(m, p + "encoder_attn_layer_norm.bias", {64});
      }
    }
  }
  for (float v : read_tensor(ck, "final_logits_bias")) EXPECT_EQ(v, 0.0f);

  const json c = read_json(tmp / "m" / "config.json");
  EXPECT_EQ(c["architectures"], json::array({"BartForConditionalGeneration"}));
  EXPECT_EQ(c["model_type"], "bart");
  EXPECT_EQ(c["d_model"], 64);
  EXPECT_EQ(c["encoder_layers"], 2);
  EXPECT_EQ(c["decoder_layers"], 2);
  EXPECT_EQ(c["encoder_attention_heads"], 4);
  EXPECT_EQ(c["decoder_attention_heads"], 4);
  EXPECT_EQ(c["encoder_ffn_dim"], 128);
  EXPECT_EQ(c["decoder_ffn_dim"], 128);
  EXPECT_EQ(c["vocab_size"], 80);
  EXPECT_EQ(c["max_position_embeddings"], 1024);
  EXPECT_EQ(c["is_encoder_decoder"], true);
  EXPECT_EQ(c["torch_dtype"], "float16");
  EXPECT_TRUE(fs::exists(tmp / "m" / "generation_config.json"));
}

TEST(SynthBert, NamesShapesPositionIdsAndConfig) {
  TempDir tmp;
  SynthOptions o;
  o.arch = "bert";
  o.layers = 2;
  o.hidden = 64;
  o.intermediate = 128;
  o.heads = 4;
  o.vocab = 120;
  o.dtype = DType::F32;
  synth_checkpoint(o, tmp / "m");
  const auto ck = Checkpoint::open(tmp / "m");
  const auto m = listing(ck);
  EXPECT_EQ(m.size(), 6u + 2u * 16u + 4u);
  expect_shape(m, "bert.embeddings.word_embeddings.weight", {120, 64});
  expect_shape(m, "bert.embeddings.position_embeddings.weight", {512, 64});
  expect_shape(m, "bert.embeddings.token_type_embeddings.weight", {2, 64});
  expect_shape(m, "bert.embeddings.LayerNorm.weight", {64});
  expect_shape(m, "bert.embeddings.LayerNorm.bias", {64});
  for (int i = 0; i < 2; ++i) {
    const std::string p = "bert.encoder.layer." + std::to_string(i) + ".";
    for (const char* proj : {"query", "key", "value"}) {
      expect_shape(m, p + "attention.self." + proj + ".weight", {64, 64});
      expect_shape(m, p + "attention.self." + proj + ".bias", {64});
    }
    expect_shape(m, p + "attention.output.dense.weight", {64, 64});
    expect_shape(m, p + "attention.output.dense.bias", {64});
    expect_shape(m, p + "attention.output.LayerNorm.weight", {64});
    expect_shape(m, p + "attention.output.LayerNorm.bias", {64});
    expect_shape(m, p + "intermediate.dense.weight", {128, 64});
    expect_shape(m, p + "intermediate.dense.bias", {128});
    expect_shape(m, p + "output.dense.weight", {64, 128});
    expect_shape(m, p + "output.dense.bias", {64});
    expect_shape(m, p + "output.LayerNorm.weight", {64});
    expect_shape(m, p + "output.LayerNorm.bias", {64});
  }
  expect_shape(m, "bert.pooler.dense.weight", {64, 64});
  expect_shape(m, "bert.pooler.dense.bias", {64});
  expect_shape(m, "classifier.weight", {2, 64});
  expect_shape(m, "classifier.bias", {2});
  for (const auto& [name, e] : m)
    EXPECT_EQ(e.dtype, name == "bert.embeddings.position_ids" ? DType::I64 : DType::F32) << name;

  // The non-float tensor: I64 [1, 512] holding 0..511, little-endian.
  expect_shape(m, "bert.embeddings.position_ids", {1, 512});
  const TensorInfo* pid = ck.shard(0).find("bert.embeddings.position_ids");
  ASSERT_NE(pid, nullptr);
  const auto bytes = ck.shard(0).bytes(*pid);
  ASSERT_EQ(bytes.size(), 512u * 8u);
  for (size_t i = 0; i < 512; ++i) {
    uint64_t v = 0;
    for (size_t b = 0; b < 8; ++b)
      v |= static_cast<uint64_t>(std::to_integer<uint8_t>(bytes[i * 8 + b])) << (8 * b);
    ASSERT_EQ(v, i);
  }

  const json c = read_json(tmp / "m" / "config.json");
  EXPECT_EQ(c["architectures"], json::array({"BertForSequenceClassification"}));
  EXPECT_EQ(c["model_type"], "bert");
  EXPECT_EQ(c["hidden_size"], 64);
  EXPECT_EQ(c["num_hidden_layers"], 2);
  EXPECT_EQ(c["num_attention_heads"], 4);
  EXPECT_EQ(c["intermediate_size"], 128);
  EXPECT_EQ(c["vocab_size"], 120);
  EXPECT_EQ(c["max_position_embeddings"], 512);
  EXPECT_EQ(c["type_vocab_size"], 2);
  EXPECT_EQ(c["torch_dtype"], "float32");
  EXPECT_FALSE(fs::exists(tmp / "m" / "generation_config.json"));
  EXPECT_EQ(read_json(tmp / "m" / "tokenizer.json")["version"], "1.0");
}

TEST(SynthShards, IndexIsConsistentAndCheckpointOpens) {
  TempDir tmp;
  SynthOptions o = tiny_llama();
  o.shards = 3;
  synth_checkpoint(o, tmp / "m");
  const fs::path dir = tmp / "m";
  EXPECT_FALSE(fs::exists(dir / "model.safetensors"));
  const json idx = read_json(dir / "model.safetensors.index.json");
  EXPECT_THAT(slurp(dir / "model.safetensors.index.json"), HasSubstr("\n  \"metadata\": {"));
  std::map<std::string, std::string> from_files;  // tensor -> shard holding it
  size_t total = 0;
  std::vector<size_t> shard_bytes;
  for (int k = 1; k <= 3; ++k) {
    const std::string name = "model-0000" + std::to_string(k) + "-of-00003.safetensors";
    ASSERT_TRUE(fs::is_regular_file(dir / name)) << name;
    const auto f = SafetensorsFile::open(dir / name);
    EXPECT_FALSE(f->tensors().empty()) << name;
    size_t bytes = 0;
    for (const auto& t : f->tensors()) {
      EXPECT_TRUE(from_files.emplace(t.name, name).second) << t.name << " in two shards";
      bytes += t.nbytes();
    }
    total += bytes;
    shard_bytes.push_back(bytes);
  }
  EXPECT_FALSE(fs::exists(dir / "model-00004-of-00003.safetensors"));
  EXPECT_EQ(idx["metadata"]["total_size"].get<size_t>(), total);
  ASSERT_EQ(idx["weight_map"].size(), from_files.size());
  for (const auto& [tensor, shard] : from_files) EXPECT_EQ(idx["weight_map"][tensor], shard);
  // Roughly equal: no shard more than twice the average (the largest tensor is small here).
  for (size_t b : shard_bytes) EXPECT_LT(b, 2 * total / 3) << "unbalanced shards";

  const auto ck = Checkpoint::open(dir);
  EXPECT_TRUE(ck.sharded());
  EXPECT_EQ(ck.num_shards(), 3u);
  EXPECT_EQ(ck.all_tensors().size(), from_files.size());
}

TEST(SynthShards, AsManyShardsAsTensors) {
  TempDir tmp;
  SynthOptions o = tiny_llama();
  o.layers = 1;
  o.shards = 12;  // embed + 9 per layer + norm + lm_head
  synth_checkpoint(o, tmp / "m");
  const auto ck = Checkpoint::open(tmp / "m");
  EXPECT_EQ(ck.num_shards(), 12u);
  for (size_t s = 0; s < ck.num_shards(); ++s) EXPECT_EQ(ck.shard(s).tensors().size(), 1u);
  EXPECT_TRUE(fs::exists(tmp / "m" / "model-00012-of-00012.safetensors"));
  o.shards = 13;
  expect_throw_with<std::invalid_argument>(o, "shards");
}

TEST(SynthStats, LinearWeightsLookTrained) {
  TempDir tmp;
  SynthOptions o;
  o.arch = "llama";
  o.layers = 1;
  o.hidden = 256;
  o.intermediate = 256;
  o.heads = 4;
  o.vocab = 64;
  o.dtype = DType::F32;
  o.seed = 3;
  synth_checkpoint(o, tmp / "m");
  const auto ck = Checkpoint::open(tmp / "m");
  const size_t n = 256;
  const std::vector<float> w = read_tensor(ck, "model.layers.0.self_attn.q_proj.weight");
  ASSERT_EQ(w.size(), n * n);
  const Moments mo = moments(w);
  EXPECT_GE(mo.std, 0.005);
  EXPECT_LE(mo.std, 0.08);
  EXPECT_LT(std::fabs(mo.mean), 0.2 * mo.std);
  EXPECT_GT(mo.kurtosis, 3.5) << "weights should be heavy-tailed";

  // A decaying spectrum: an i.i.d. matrix with the same Frobenius norm has its top singular
  // value near (sqrt(rows) + sqrt(cols)) * std.
  const double sigma1 = top_singular_value(w, n, n);
  const double iid = (std::sqrt(double(n)) + std::sqrt(double(n))) * mo.std;
  EXPECT_GT(sigma1, 2.0 * iid);

  // A few outlier input channels: the largest column RMS far above the median.
  std::vector<double> col(n, 0.0);
  for (size_t i = 0; i < n; ++i)
    for (size_t j = 0; j < n; ++j) col[j] += double(w[i * n + j]) * w[i * n + j];
  std::sort(col.begin(), col.end());
  EXPECT_GT(std::sqrt(col.back() / col[n / 2]), 3.0);
}

TEST(SynthStats, NormsBiasesAndEmbeddings) {
  TempDir tmp;
  SynthOptions o;
  o.arch = "bart";
  o.layers = 1;
  o.hidden = 64;
  o.intermediate = 128;
  o.heads = 4;
  o.vocab = 256;
  o.dtype = DType::F32;
  synth_checkpoint(o, tmp / "m");
  const auto ck = Checkpoint::open(tmp / "m");
  const Moments norm = moments(read_tensor(ck, "model.encoder.layers.0.final_layer_norm.weight"));
  EXPECT_NEAR(norm.mean, 1.0, 0.05);
  EXPECT_LT(norm.std, 0.2);
  EXPECT_GT(norm.std, 0.0);
  const Moments bias = moments(read_tensor(ck, "model.decoder.layers.0.fc1.bias"));
  EXPECT_LT(std::fabs(bias.mean), 0.01);
  EXPECT_GT(bias.std, 0.002);
  EXPECT_LT(bias.std, 0.03);
  const Moments emb = moments(read_tensor(ck, "model.shared.weight"));
  EXPECT_GT(emb.std, 0.01);
  EXPECT_LT(emb.std, 0.04);
  const Moments fc2 = moments(read_tensor(ck, "model.decoder.layers.0.fc2.weight"));
  EXPECT_GT(fc2.std, 0.005);
  EXPECT_LT(fc2.std, 0.08);
}

TEST(SynthOptionsCheck, BadOptionsThrowWithClearMessages) {
  auto with = [](auto edit) {
    SynthOptions o = tiny_llama();
    edit(o);
    return o;
  };
  using IA = std::invalid_argument;
  expect_throw_with<IA>(with([](SynthOptions& o) { o.arch = "gpt9"; }), "unknown arch 'gpt9'");
  expect_throw_with<IA>(with([](SynthOptions& o) { o.layers = 0; }), "layers must be >= 1");
  expect_throw_with<IA>(with([](SynthOptions& o) { o.hidden = 0; }), "hidden must be > 0");
  expect_throw_with<IA>(with([](SynthOptions& o) { o.intermediate = -1; }), "intermediate");
  expect_throw_with<IA>(with([](SynthOptions& o) { o.vocab = 0; }), "vocab");
  expect_throw_with<IA>(with([](SynthOptions& o) { o.heads = 0; }), "heads must be > 0");
  expect_throw_with<IA>(with([](SynthOptions& o) { o.heads = 5; }), "divisible by heads");
  expect_throw_with<IA>(with([](SynthOptions& o) { o.kv_heads = 3; }), "divisible by kv_heads");
  expect_throw_with<IA>(with([](SynthOptions& o) { o.kv_heads = -1; }), "kv_heads");
  expect_throw_with<IA>(with([](SynthOptions& o) {
                          o.arch = "bert";
                          o.kv_heads = 2;
                        }),
                        "grouped-query");
  expect_throw_with<IA>(with([](SynthOptions& o) { o.shards = 0; }), "shards must be >= 1");
  expect_throw_with<IA>(with([](SynthOptions& o) { o.shards = 1000; }), "number of tensors");
  expect_throw_with<IA>(with([](SynthOptions& o) { o.dtype = DType::I32; }), "dtype");
}

TEST(SynthOptionsCheck, OutputDirectoryMustBeEmpty) {
  TempDir tmp;
  const SynthOptions o = tiny_llama();
  fs::create_directories(tmp / "full");
  loftqd::testing::spit(tmp / "full" / "keep.txt", "x");
  try {
    synth_checkpoint(o, tmp / "full");
    ADD_FAILURE() << "expected std::runtime_error";
  } catch (const std::runtime_error& e) {
    EXPECT_THAT(e.what(), HasSubstr("not empty"));
  }
  EXPECT_EQ(dir_contents(tmp / "full").size(), 1u);
  // An existing empty directory is fine, and so is a missing parent.
  fs::create_directories(tmp / "empty");
  EXPECT_NO_THROW(synth_checkpoint(o, tmp / "empty"));
  EXPECT_TRUE(fs::exists(tmp / "empty" / "config.json"));
  EXPECT_NO_THROW(synth_checkpoint(o, tmp / "a" / "b" / "c"));
  EXPECT_TRUE(fs::exists(tmp / "a" / "b" / "c" / "model.safetensors"));
}

// ---------------------------------------------------------------------------------------------
// Every registry architecture, with transformers' key names and config.json fields.

SynthOptions tiny(const std::string& arch) {
  SynthOptions o;
  o.arch = arch;
  o.layers = 2;
  o.hidden = 64;
  o.intermediate = 96;
  o.heads = 4;
  o.vocab = 64;
  o.experts = 3;
  o.dtype = DType::F32;
  return o;
}

class SynthEveryArch : public ::testing::TestWithParam<std::string> {};

TEST_P(SynthEveryArch, OpensWithTheTaskClassNamesAndConsistentDepths) {
  TempDir tmp;
  const SynthOptions o = tiny(GetParam());
  synth_checkpoint(o, tmp / "m");
  const auto ck = Checkpoint::open(tmp / "m");
  const json c = read_json(tmp / "m" / "config.json");
  const Architecture& a = *find_architecture(o.arch);
  EXPECT_EQ(c["model_type"], o.arch);
  EXPECT_EQ(c["architectures"], json::array({a.task_class}));
  EXPECT_EQ(c["torch_dtype"], "float32");
  std::vector<std::string> names;
  for (const auto& [shard, t] : ck.all_tensors()) names.push_back(t->name);
  EXPECT_FALSE(is_base_class_save(a, names));
  // Every stack holds o.layers layers, as config.json says; every 2-D weight inside the blocks
  // is a default target or a router: the defaults leave nothing the loader quantizes behind.
  std::vector<std::set<int>> seen(a.stacks.size());
  size_t targets = 0;
  for (const auto& n : names) {
    const std::string module = module_path(n);
    const auto pos = locate_layer(a, module);
    if (pos) seen[pos->stack].insert(pos->layer);
    if (is_target_weight(n, a.targets)) ++targets;
    const auto& t = *ck.shard(0).find(n);
    if (pos && n.ends_with(".weight") && t.shape.size() == 2 && !is_target_weight(n, a.targets)) {
      const NeverTarget* never = never_target(a, module);
      EXPECT_TRUE(never && never->kind != NeverKind::Head) << o.arch << ": " << n;
    }
  }
  EXPECT_GT(targets, 0u);
  for (size_t i = 0; i < a.stacks.size(); ++i) {
    EXPECT_EQ(config_depth(a.stacks[i], c), 2) << o.arch << " " << a.stacks[i].name;
    EXPECT_EQ(seen[i], (std::set<int>{0, 1})) << o.arch << " " << a.stacks[i].path;
  }
  const json t = read_json(tmp / "m" / "tokenizer.json");
  for (const auto& [tok, id] : t["model"]["vocab"].items()) EXPECT_LT(id.get<int>(), o.vocab);
}

INSTANTIATE_TEST_SUITE_P(Registry, SynthEveryArch, ::testing::ValuesIn([] {
                           std::vector<std::string> v;
                           for (const auto& a : architectures()) v.push_back(a.model_type);
                           return v;
                         }()),
                         [](const ::testing::TestParamInfo<std::string>& i) {
                           std::string n = i.param;
                           for (char& ch : n)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });

TEST(SynthArchs, FusedMoeAndConv1DShapes) {
  TempDir tmp;
  SynthOptions o = tiny("phi3");
  o.kv_heads = 2;  // head_dim 16: qkv_proj = 64 + 2 * 32 rows
  synth_checkpoint(o, tmp / "phi3");
  auto m = listing(Checkpoint::open(tmp / "phi3"));
  expect_shape(m, "model.layers.1.self_attn.qkv_proj.weight", {128, 64});
  expect_shape(m, "model.layers.1.mlp.gate_up_proj.weight", {192, 64});
  expect_shape(m, "model.layers.1.mlp.down_proj.weight", {64, 96});

  synth_checkpoint(tiny("mixtral"), tmp / "mixtral");
  m = listing(Checkpoint::open(tmp / "mixtral"));
  expect_shape(m, "model.layers.0.block_sparse_moe.gate.weight", {3, 64});
  expect_shape(m, "model.layers.0.block_sparse_moe.experts.2.w1.weight", {96, 64});
  expect_shape(m, "model.layers.0.block_sparse_moe.experts.2.w2.weight", {64, 96});
  EXPECT_EQ(m.count("model.layers.0.block_sparse_moe.experts.3.w1.weight"), 0u);
  EXPECT_EQ(read_json(tmp / "mixtral" / "config.json")["num_local_experts"], 3);

  synth_checkpoint(tiny("qwen2_moe"), tmp / "qmoe");
  m = listing(Checkpoint::open(tmp / "qmoe"));
  expect_shape(m, "model.layers.0.mlp.shared_expert_gate.weight", {1, 64});
  expect_shape(m, "model.layers.0.mlp.shared_expert.up_proj.weight", {192, 64});
  expect_shape(m, "model.layers.0.mlp.experts.0.down_proj.weight", {64, 96});
  expect_shape(m, "model.layers.0.self_attn.q_proj.bias", {64});

  // GPT-2's Conv1D weights are stored (in, out).
  synth_checkpoint(tiny("gpt2"), tmp / "gpt2");
  m = listing(Checkpoint::open(tmp / "gpt2"));
  expect_shape(m, "transformer.h.0.attn.c_attn.weight", {64, 192});
  expect_shape(m, "transformer.h.0.attn.c_attn.bias", {192});
  expect_shape(m, "transformer.h.0.mlp.c_fc.weight", {64, 96});
  expect_shape(m, "transformer.h.0.mlp.c_proj.weight", {96, 64});
  EXPECT_EQ(m.count("lm_head.weight"), 0u);  // tied to wte
  const json g = read_json(tmp / "gpt2" / "config.json");
  EXPECT_EQ(g["n_layer"], 2);
  EXPECT_EQ(g["n_embd"], 64);

  synth_checkpoint(tiny("falcon"), tmp / "falcon");
  m = listing(Checkpoint::open(tmp / "falcon"));
  expect_shape(m, "transformer.h.0.self_attention.query_key_value.weight", {96, 64});  // MQA
}

TEST(SynthArchs, EncoderDecoderDepthsAndT5Layout) {
  TempDir tmp;
  SynthOptions o = tiny("bart");
  o.layers = 4;
  o.decoder_layers = 2;  // distilBART-like: deeper encoder
  synth_checkpoint(o, tmp / "bart");
  const json c = read_json(tmp / "bart" / "config.json");
  EXPECT_EQ(c["encoder_layers"], 4);
  EXPECT_EQ(c["decoder_layers"], 2);
  auto m = listing(Checkpoint::open(tmp / "bart"));
  EXPECT_EQ(m.count("model.encoder.layers.3.fc1.weight"), 1u);
  EXPECT_EQ(m.count("model.decoder.layers.2.fc1.weight"), 0u);

  o = tiny("t5");
  o.decoder_layers = 3;
  synth_checkpoint(o, tmp / "t5");
  const json t = read_json(tmp / "t5" / "config.json");
  EXPECT_EQ(t["num_layers"], 2);
  EXPECT_EQ(t["num_decoder_layers"], 3);
  EXPECT_EQ(t["feed_forward_proj"], "gated-gelu");
  m = listing(Checkpoint::open(tmp / "t5"));
  expect_shape(m, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", {32, 4});
  EXPECT_EQ(m.count("encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"), 0u);
  expect_shape(m, "decoder.block.2.layer.1.EncDecAttention.o.weight", {64, 64});
  expect_shape(m, "decoder.block.2.layer.2.DenseReluDense.wi_1.weight", {96, 64});
  expect_shape(m, "encoder.block.1.layer.1.DenseReluDense.wo.weight", {64, 96});

  synth_checkpoint(tiny("mbart"), tmp / "mbart");
  m = listing(Checkpoint::open(tmp / "mbart"));
  EXPECT_EQ(m.count("model.encoder.layer_norm.weight"), 1u);
  EXPECT_EQ(m.count("model.decoder.layer_norm.bias"), 1u);
}

TEST(SynthArchs, BaseClassSavesDropThePrefixAndTheHead) {
  TempDir tmp;
  SynthOptions o = tiny("llama");
  o.base_class = true;
  o.name_or_path = "meta-llama/Llama-2-7b-hf";
  synth_checkpoint(o, tmp / "llama");
  const json c = read_json(tmp / "llama" / "config.json");
  EXPECT_EQ(c["architectures"], json::array({"LlamaModel"}));
  EXPECT_EQ(c["_name_or_path"], "meta-llama/Llama-2-7b-hf");
  auto m = listing(Checkpoint::open(tmp / "llama"));
  EXPECT_EQ(m.count("layers.0.self_attn.q_proj.weight"), 1u);
  EXPECT_EQ(m.count("embed_tokens.weight"), 1u);
  EXPECT_EQ(m.count("lm_head.weight"), 0u);
  for (const auto& [name, e] : m) EXPECT_FALSE(name.starts_with("model.")) << name;

  o = tiny("gpt2");
  o.base_class = true;
  synth_checkpoint(o, tmp / "gpt2");
  m = listing(Checkpoint::open(tmp / "gpt2"));
  EXPECT_EQ(m.count("h.1.attn.c_attn.weight"), 1u);
  EXPECT_EQ(m.count("wte.weight"), 1u);

  o = tiny("t5");  // no prefix: the head goes, the names stay
  o.base_class = true;
  synth_checkpoint(o, tmp / "t5");
  m = listing(Checkpoint::open(tmp / "t5"));
  EXPECT_EQ(m.count("lm_head.weight"), 0u);
  EXPECT_EQ(m.count("encoder.block.0.layer.0.SelfAttention.q.weight"), 1u);
}

TEST(SynthArchs, Conv1DWeightsAreTransposedLinearWeights) {
  // The (in, out) weight read transposed has the row structure of a linear weight (out, in):
  // a row scale per output, column outliers per input channel.
  TempDir tmp;
  SynthOptions o = tiny("gpt2");
  o.hidden = 128;
  o.intermediate = 256;
  synth_checkpoint(o, tmp / "m");
  const auto ck = Checkpoint::open(tmp / "m");
  const auto w = read_tensor(ck, "transformer.h.0.mlp.c_fc.weight");  // (128, 256)
  ASSERT_EQ(w.size(), 128u * 256u);
  const Moments mo = moments(w);
  EXPECT_NEAR(mo.std, 0.02, 0.012);
  EXPECT_GT(mo.kurtosis, 3.5);
}

}  // namespace
}  // namespace loftqd::model
