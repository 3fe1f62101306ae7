// End-to-end: loftqd synth -> quantize -> verify, through the real binary.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "model/safetensors.h"
#include "support/test_util.h"

namespace fs = std::filesystem;
namespace model = loftqd::model;
using loftqd::testing::run_loftqd;
using loftqd::testing::slurp;
using loftqd::testing::spit;
using loftqd::testing::TempDir;
using nlohmann::json;
using ::testing::HasSubstr;
using ::testing::Not;

namespace {

std::vector<std::string> synth_args(const std::string& arch, const fs::path& out,
                                    const std::string& dtype = "bf16", int shards = 1) {
  return {"synth",
          "--arch",
          arch,
          "--layers",
          "3",
          "--hidden",
          "128",
          "--intermediate",
          "256",
          "--heads",
          "4",
          "--vocab",
          "256",
          "--dtype",
          dtype,
          "--shards",
          std::to_string(shards),
          "--seed",
          "7",
          out.string()};
}

void synth(const std::string& arch, const fs::path& out, const std::string& dtype = "bf16",
           int shards = 1) {
  auto r = run_loftqd(synth_args(arch, out, dtype, shards));
  ASSERT_EQ(r.exit_code, 0) << r.out;
}

std::vector<std::string> quantize_args(const fs::path& model, const fs::path& out,
                                       std::vector<std::string> extra) {
  std::vector<std::string> a = {"quantize", model.string(), out.string(), "--rank", "8", "--iters",
                                "3",        "--threads",    "1"};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

bool leftovers(const fs::path& dir) {
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().find(".staging") != std::string::npos) return true;
  return false;
}

}  // namespace

struct PlanCase {
  std::string arch;
  std::vector<std::string> flags;
};

class QuantizeVerify : public ::testing::TestWithParam<PlanCase> {};

TEST_P(QuantizeVerify, VerifyAcceptsWhatQuantizeWrote) {
  TempDir tmp;
  synth(GetParam().arch, tmp / "model");
  auto q = run_loftqd(quantize_args(tmp / "model", tmp / "out", GetParam().flags));
  ASSERT_EQ(q.exit_code, 0) << q.out;
  EXPECT_THAT(q.out, HasSubstr("loftq_err"));
  auto v = run_loftqd({"verify", (tmp / "out").string(), "--original", (tmp / "model").string()});
  EXPECT_EQ(v.exit_code, 0) << v.out;
  EXPECT_THAT(v.out, HasSubstr("valid LoftQ layout"));
  const json lj = json::parse(slurp(tmp / "out" / "loftq.json"));
  ASSERT_FALSE(lj["layers"].empty());
  for (const auto& l : lj["layers"]) {
    EXPECT_LE(l["loftq_error"].get<double>(), l["qlora_error"].get<double>()) << l["tensor"];
    EXPECT_GT(l["loftq_error"].get<double>(), 0.0);
  }
  EXPECT_FALSE(leftovers(tmp.path()));
}

INSTANTIATE_TEST_SUITE_P(
    Plans, QuantizeVerify,
    ::testing::Values(
        PlanCase{"llama", {"--bits", "4"}}, PlanCase{"llama", {"--bits", "2"}},
        PlanCase{"llama", {"--avg-bits", "3"}}, PlanCase{"llama", {"--quant", "uniform"}},
        PlanCase{"bart", {"--bits", "4"}}, PlanCase{"bart", {"--bits", "2"}},
        PlanCase{"bart", {"--avg-bits", "3"}}, PlanCase{"bart", {"--quant", "uniform"}},
        PlanCase{"bert", {"--bits", "4"}}, PlanCase{"bert", {"--bits", "2"}},
        PlanCase{"bert", {"--avg-bits", "3"}}, PlanCase{"bert", {"--quant", "uniform"}},
        PlanCase{"llama", {"--bit-plan", "0:4,1-:3", "--svd", "exact"}},
        PlanCase{"llama", {"--bits", "2", "--override", "down_proj@*:4", "--lora-alpha", "16"}}),
    [](const ::testing::TestParamInfo<PlanCase>& i) {
      std::string n = i.param.arch;
      for (const auto& f : i.param.flags)
        for (char c : f) n += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
      return n;
    });

TEST(Layout, PeftKeysShapesAndConfig) {
  TempDir tmp;
  synth("llama", tmp / "model", "f32");
  auto q = run_loftqd(quantize_args(tmp / "model", tmp / "out",
                                    {"--avg-bits", "3", "--repo-id", "org/tiny-loftq"}));
  ASSERT_EQ(q.exit_code, 0) << q.out;
  const json acfg = json::parse(slurp(tmp / "out" / "loftq_init" / "adapter_config.json"));
  EXPECT_EQ(acfg["peft_type"], "LORA");
  EXPECT_EQ(acfg["task_type"], "CAUSAL_LM");
  EXPECT_EQ(acfg["r"], 8);
  EXPECT_EQ(acfg["lora_alpha"], 8);
  EXPECT_EQ(acfg["init_lora_weights"], true);
  EXPECT_EQ(acfg["base_model_name_or_path"], "org/tiny-loftq");
  EXPECT_EQ(acfg["bias"], "none");
  EXPECT_EQ(acfg["target_modules"],
            json({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}));
  auto ad = model::SafetensorsFile::open(tmp / "out" / "loftq_init" / "adapter_model.safetensors");
  const auto* a = ad->find("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
  const auto* b = ad->find("base_model.model.model.layers.0.mlp.down_proj.lora_B.weight");
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{8, 128}));
  EXPECT_EQ(b->shape, (std::vector<int64_t>{128, 8}));
  EXPECT_EQ(ad->tensors().size(), 3u * 7u * 2u);
  // 3 equal layers, --avg-bits 3: half the parameters at 4 bits. Whole layers give 2.67 or 3.33
  // bits, so layer 0 is 4-bit and layer 1 is split by module: q/k/v/o (4 x 128 x 128) at 4 bits
  // is as close to half as the modules allow (gate_proj would overshoot by as much).
  const json lj = json::parse(slurp(tmp / "out" / "loftq.json"));
  EXPECT_EQ(lj["format_version"], 2);
  EXPECT_TRUE(lj["source"]["repo"].is_null());
  const std::set<std::string> attn = {"q_proj", "k_proj", "v_proj", "o_proj"};
  double bits = 0, params = 0;
  for (const auto& l : lj["layers"]) {
    const bool four = l["layer"] == 0 || (l["layer"] == 1 && attn.count(l["module"]));
    EXPECT_EQ(l["bits"], four ? 4 : 2) << l["tensor"];
    const double n = l["shape"][0].get<double>() * l["shape"][1].get<double>();
    bits += l["bits"].get<double>() * n;
    params += n;
  }
  EXPECT_NEAR(bits / params, 3.0, 0.07);
  EXPECT_NEAR(lj["avg_bits"]["achieved"].get<double>(), bits / params, 1e-9);
  EXPECT_EQ(lj["bit_plan_spec"], "0:4,1-:2,q_proj+k_proj+v_proj+o_proj@1:4");
  EXPECT_EQ(lj["bnb_nf4_reload_exact"], true);
  // Non-target tensors are byte-identical; copied files too.
  auto in = model::SafetensorsFile::open(tmp / "model" / "model.safetensors");
  auto out = model::SafetensorsFile::open(tmp / "out" / "model.safetensors");
  for (const char* name : {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"}) {
    auto x = in->bytes(*in->find(name)), y = out->bytes(*out->find(name));
    EXPECT_TRUE(std::equal(x.begin(), x.end(), y.begin(), y.end())) << name;
  }
  auto x = in->bytes(*in->find("model.layers.0.self_attn.q_proj.weight"));
  auto y = out->bytes(*out->find("model.layers.0.self_attn.q_proj.weight"));
  EXPECT_FALSE(std::equal(x.begin(), x.end(), y.begin(), y.end()));
  EXPECT_EQ(slurp(tmp / "model" / "config.json"), slurp(tmp / "out" / "config.json"));
  EXPECT_EQ(slurp(tmp / "model" / "tokenizer.json"), slurp(tmp / "out" / "tokenizer.json"));
  const std::string card = slurp(tmp / "out" / "README.md");
  EXPECT_THAT(card, HasSubstr("subfolder=\"loftq_init\""));
  EXPECT_THAT(card, HasSubstr("model.layers.2.mlp.down_proj.weight"));
}

TEST(Layout, LoraAlphaPreScalesBothFactors) {
  TempDir tmp;
  synth("llama", tmp / "model", "f32");
  ASSERT_EQ(run_loftqd(quantize_args(tmp / "model", tmp / "r", {"--svd", "exact"})).exit_code, 0);
  ASSERT_EQ(run_loftqd(
                quantize_args(tmp / "model", tmp / "a32", {"--svd", "exact", "--lora-alpha", "32"}))
                .exit_code,
            0);
  auto r = model::SafetensorsFile::open(tmp / "r" / "loftq_init" / "adapter_model.safetensors");
  auto s = model::SafetensorsFile::open(tmp / "a32" / "loftq_init" / "adapter_model.safetensors");
  const std::string key = "base_model.model.model.layers.1.mlp.up_proj.lora_A.weight";
  auto va = r->read_f32(*r->find(key)), vb = s->read_f32(*s->find(key));
  ASSERT_EQ(va.size(), vb.size());
  // alpha 32 with r 8: PEFT scales B A by 4, so each factor is divided by 2.
  for (size_t i = 0; i < va.size(); ++i)
    EXPECT_NEAR(vb[i], va[i] / 2.0f, 1e-6f * (1 + std::fabs(va[i])));
  EXPECT_EQ(json::parse(slurp(tmp / "a32" / "loftq_init" / "adapter_config.json"))["lora_alpha"],
            32);
  EXPECT_EQ(run_loftqd({"verify", (tmp / "a32").string(), "--original", (tmp / "model").string()})
                .exit_code,
            0);
}

TEST(Layout, ShardedCheckpointKeepsItsSharding) {
  TempDir tmp;
  synth("llama", tmp / "model", "bf16", 3);
  auto q = run_loftqd(quantize_args(tmp / "model", tmp / "out", {"--bits", "4"}));
  ASSERT_EQ(q.exit_code, 0) << q.out;
  EXPECT_TRUE(fs::exists(tmp / "out" / "model-00001-of-00003.safetensors"));
  EXPECT_TRUE(fs::exists(tmp / "out" / "model-00003-of-00003.safetensors"));
  EXPECT_FALSE(fs::exists(tmp / "out" / "model.safetensors"));
  EXPECT_EQ(slurp(tmp / "model" / "model.safetensors.index.json"),
            slurp(tmp / "out" / "model.safetensors.index.json"));
  EXPECT_EQ(run_loftqd({"verify", (tmp / "out").string(), "--original", (tmp / "model").string()})
                .exit_code,
            0);
}

TEST(Cli, ExistingOutputNeedsForce) {
  TempDir tmp;
  synth("llama", tmp / "model");
  fs::create_directories(tmp / "out");
  spit(tmp / "out" / "keep.txt", "precious");
  auto q = run_loftqd(quantize_args(tmp / "model", tmp / "out", {}));
  EXPECT_EQ(q.exit_code, 2) << q.out;
  EXPECT_THAT(q.out, HasSubstr("--force"));
  EXPECT_EQ(slurp(tmp / "out" / "keep.txt"), "precious");
  auto f = run_loftqd(quantize_args(tmp / "model", tmp / "out", {"--force"}));
  EXPECT_EQ(f.exit_code, 0) << f.out;
  EXPECT_FALSE(fs::exists(tmp / "out" / "keep.txt"));
  EXPECT_TRUE(fs::exists(tmp / "out" / "loftq.json"));
  EXPECT_FALSE(leftovers(tmp.path()));
}

namespace {

// Every entry under `dir` (not following links): path -> its contents, link target or kind.
std::map<std::string, std::string> tree_of(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    auto rel = e.path().lexically_relative(dir).string();
    if (e.is_symlink())
      out[rel] = "-> " + fs::read_symlink(e.path()).string();
    else if (e.is_regular_file())
      out[rel] = slurp(e.path());
    else
      out[rel] = e.is_directory() ? "dir" : "special";
  }
  return out;
}

}  // namespace

// An output that is the input, inside it or a parent of it is refused, with or without --force
// (symlinks resolved), and the input is left exactly as it was.
TEST(Cli, OutputOverlappingTheInputIsRefused) {
  TempDir tmp;
  const fs::path in = tmp / "p" / "in";
  fs::create_directories(in.parent_path());
  synth("llama", in);
  fs::create_directories(in / "sub");
  spit(in / "sub" / "notes.txt", "mine");
  fs::create_directory_symlink(in, tmp / "alias");
  const auto before = tree_of(in);
  for (const fs::path& out : {in, in / "sub", in / "new" / "deeper", in.parent_path(), tmp.path(),
                              tmp / "alias", tmp / "alias" / "x", fs::path(in.string() + "/.")}) {
    for (bool force : {false, true}) {
      SCOPED_TRACE(out.string() + (force ? " --force" : ""));
      auto r = run_loftqd(quantize_args(
          in, out, force ? std::vector<std::string>{"--force"} : std::vector<std::string>{}));
      EXPECT_EQ(r.exit_code, 2) << r.out;
      EXPECT_THAT(r.out, HasSubstr("output must not be the model directory"));
      EXPECT_EQ(tree_of(in), before);
    }
  }
  EXPECT_FALSE(fs::exists(in / "new"));
  EXPECT_FALSE(leftovers(in.parent_path()));
  // A sibling whose name extends the input's is not inside it.
  auto ok = run_loftqd(quantize_args(in, tmp / "p" / "in2", {}));
  EXPECT_EQ(ok.exit_code, 0) << ok.out;
  EXPECT_EQ(tree_of(in), before);
}

// A FIFO, a device or a symlink loop in place of model.safetensors (or beside it) is refused by
// name before anything opens it: quantize neither blocks nor reports "no model.safetensors".
TEST(Cli, NonRegularCheckpointFilesAreRefusedByKind) {
  TempDir tmp;
  synth("llama", tmp / "model");
  const fs::path st = tmp / "model" / "model.safetensors";
  fs::remove(st);
  struct Case {
    std::function<void()> make;
    std::string message;
  } cases[] = {
      {[&] { ASSERT_EQ(::mkfifo(st.c_str(), 0644), 0); }, "is a FIFO"},
      {[&] { fs::create_symlink("model.safetensors", st); }, "is a symbolic link loop"},
      {[&] { fs::create_symlink("/dev/null", st); }, "is a character device"},
      {[&] { fs::create_symlink("gone.safetensors", st); }, "is a dangling symbolic link"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.message);
    c.make();
    const auto before = tree_of(tmp / "model");
    auto r = run_loftqd(quantize_args(tmp / "model", tmp / "out", {}));
    EXPECT_NE(r.exit_code, 0) << r.out;
    EXPECT_THAT(r.out, HasSubstr(st.string() + ": " + c.message));
    EXPECT_THAT(r.out, Not(HasSubstr("no model.safetensors")));
    EXPECT_EQ(tree_of(tmp / "model"), before);
    EXPECT_FALSE(fs::exists(tmp / "out"));
    fs::remove(st);
  }
  // A FIFO beside the checkpoint (it would be copied as a passthrough file) is refused too.
  synth("llama", tmp / "model2");
  ASSERT_EQ(::mkfifo((tmp / "model2" / "notes.txt").c_str(), 0644), 0);
  auto r = run_loftqd(quantize_args(tmp / "model2", tmp / "out", {}));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.out, HasSubstr("notes.txt: is a FIFO"));
}

TEST(Cli, UsageErrorsExitTwo) {
  TempDir tmp;
  synth("llama", tmp / "model");
  struct Case {
    std::vector<std::string> args;
    std::string message;
  } cases[] = {
      {{"quantize", (tmp / "nope").string(), (tmp / "o").string()}, "not a directory"},
      {quantize_args(tmp / "model", tmp / "o", {"--bit-plan", "0-1:4,1-:2"}), "overlap"},
      {quantize_args(tmp / "model", tmp / "o", {"--bit-plan", "0-1:4"}), "no bits for layer 2"},
      {quantize_args(tmp / "model", tmp / "o", {"--bits", "8"}), "8 bits not supported"},
      {quantize_args(tmp / "model", tmp / "o", {"--bits", "4", "--avg-bits", "3"}), "excludes"},
      {quantize_args(tmp / "model", tmp / "o", {"--block-size", "100"}), "block size"},
      {quantize_args(tmp / "model", tmp / "o", {"--target-modules", "q_proj,nonexistent"}),
       "nonexistent"},
      {{"quantize", (tmp / "model").string(), (tmp / "o").string(), "--rank", "0"},
       "--rank: must be >= 1"},
      {quantize_args(tmp / "model", tmp / "o", {"--lora-alpha", "-1"}),
       "--lora-alpha: must be a number > 0"},
      {quantize_args(tmp / "model", tmp / "o", {"--avg-bits", "5"}),
       "--avg-bits: must be a number in [2, 4]"},
      {quantize_args(tmp / "model", tmp / "o", {"--device", "tpu"}), "unknown device 'tpu'"},
      {quantize_args(tmp / "model", tmp / "o", {"--repo-id", "org-/name"}),
       "invalid repo id 'org-/name': name starts or ends with '.' or '-'"},
      {{"fetch", "org-/name", "--store", (tmp / "st").string(), "--endpoint", "http://127.0.0.1:9"},
       "invalid repo id 'org-/name': name starts or ends with '.' or '-'"},
      {{"publish", (tmp / "model").string(), "org-/name", "--endpoint", "http://127.0.0.1:9"},
       "invalid repo id 'org-/name': name starts or ends with '.' or '-'"},
      {quantize_args(tmp / "model", tmp / "o", {"--svd", "fast"}), "svd"},
      {{"quantize", "a", "b", "--frobnicate"}, "frobnicate"},
      {{"synth", "--arch", "gpt9", (tmp / "s").string()}, "arch"},
      {{"synth", "--hidden", "130", "--heads", "4", (tmp / "s").string()}, "heads"},
  };
  for (const auto& c : cases) {
    auto r = run_loftqd(c.args);
    EXPECT_EQ(r.exit_code, 2) << c.message << ": " << r.out;
    EXPECT_THAT(r.out, HasSubstr(c.message));
    EXPECT_FALSE(fs::exists(tmp / "o"));
  }
  EXPECT_FALSE(leftovers(tmp.path()));
}

TEST(Cli, MalformedCheckpointIsARuntimeErrorNamingTheFile) {
  TempDir tmp;
  synth("llama", tmp / "model");
  const fs::path st = tmp / "model" / "model.safetensors";
  fs::resize_file(st, fs::file_size(st) - 10);
  auto r = run_loftqd(quantize_args(tmp / "model", tmp / "out", {}));
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_THAT(r.out, HasSubstr("model.safetensors"));
  EXPECT_FALSE(fs::exists(tmp / "out"));
  EXPECT_FALSE(leftovers(tmp.path()));
  fs::remove(tmp / "model" / "config.json");
  r = run_loftqd(quantize_args(tmp / "model", tmp / "out", {}));
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_THAT(r.out, HasSubstr("config.json"));
}

TEST(Verify, DetectsTampering) {
  TempDir tmp;
  synth("llama", tmp / "model", "f32");
  ASSERT_EQ(run_loftqd(quantize_args(tmp / "model", tmp / "good", {"--bits", "4"})).exit_code, 0);
  auto verify = [&](const fs::path& p) {
    return run_loftqd({"verify", p.string(), "--original", (tmp / "model").string()});
  };
  auto copy = [&](const std::string& name) {
    fs::copy(tmp / "good", tmp / name, fs::copy_options::recursive);
    return tmp / name;
  };
  auto patch_tensor = [](const fs::path& file, const std::string& tensor, size_t elem,
                         float value) {
    auto f = model::SafetensorsFile::open(file);
    const auto* t = f->find(tensor);
    const size_t header = fs::file_size(file) - f->tensors().back().end;
    std::string bytes = slurp(file);
    std::memcpy(bytes.data() + header + t->begin + elem * 4, &value, 4);
    f.reset();
    spit(file, bytes);
  };
  ASSERT_EQ(verify(tmp / "good").exit_code, 0);

  auto p1 = copy("norm");  // a non-target tensor changed
  patch_tensor(p1 / "model.safetensors", "model.norm.weight", 3, 0.5f);
  auto r1 = verify(p1);
  EXPECT_EQ(r1.exit_code, 1);
  EXPECT_THAT(r1.out, HasSubstr("model.norm.weight"));

  auto p2 = copy("cfg");  // adapter_config.json r changed
  json acfg = json::parse(slurp(p2 / "loftq_init" / "adapter_config.json"));
  acfg["r"] = 16;
  spit(p2 / "loftq_init" / "adapter_config.json", acfg.dump());
  auto r2 = verify(p2);
  EXPECT_EQ(r2.exit_code, 1);
  EXPECT_THAT(r2.out, HasSubstr("'r'"));

  auto p3 = copy("q");  // a Q value off the code table
  {
    auto f = model::SafetensorsFile::open(p3 / "model.safetensors");
    auto v = f->read_f32(*f->find("model.layers.1.mlp.up_proj.weight"));
    float amax = 0;
    for (int i = 0; i < 64; ++i) amax = std::max(amax, std::fabs(v[i]));
    f.reset();
    patch_tensor(p3 / "model.safetensors", "model.layers.1.mlp.up_proj.weight", 5, amax * 0.6f);
  }
  auto r3 = verify(p3);
  EXPECT_EQ(r3.exit_code, 1);
  EXPECT_THAT(r3.out, HasSubstr("not representable"));

  auto p4 = copy("adapter");  // the adapter no longer reconstructs W
  patch_tensor(p4 / "loftq_init" / "adapter_model.safetensors",
               "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", 0, 50.0f);
  auto r4 = verify(p4);
  EXPECT_EQ(r4.exit_code, 1);
  EXPECT_THAT(r4.out, HasSubstr("exceeds the recorded"));

  auto p5 = copy("tok");  // a copied file changed
  spit(p5 / "tokenizer.json", "{}");
  auto r5 = verify(p5);
  EXPECT_EQ(r5.exit_code, 1);
  EXPECT_THAT(r5.out, HasSubstr("tokenizer.json"));
}

TEST(Cli, StaleStagingDirectoriesOfDeadRunsAreRemoved) {
  TempDir tmp;
  synth("llama", tmp / "model");
  // What a run killed with SIGKILL leaves behind (pid 99999999 cannot exist: pid_max <= 2^22).
  fs::create_directories(tmp / ".out.staging-99999999" / "loftq_init");
  spit(tmp / ".out.staging-99999999" / "model.safetensors", "partial");
  auto q = run_loftqd(quantize_args(tmp / "model", tmp / "out", {}));
  ASSERT_EQ(q.exit_code, 0) << q.out;
  EXPECT_FALSE(fs::exists(tmp / ".out.staging-99999999"));
  EXPECT_FALSE(leftovers(tmp.path()));
}

// Registry architectures end to end through the binary: synth (with the flags for fused, MoE,
// Conv1D, encoder-decoder and base-class saves) -> quantize with the default targets -> verify.
struct ArchCase {
  std::string name;
  std::vector<std::string> synth_flags;
};

class ArchRoundTrip : public ::testing::TestWithParam<ArchCase> {};

TEST_P(ArchRoundTrip, DefaultTargetsQuantizeAndVerify) {
  TempDir tmp;
  std::vector<std::string> s = {"synth", "--layers", "2", "--hidden", "64", "--intermediate",
                                "128",   "--heads",  "4", "--vocab",  "64", "--dtype",
                                "f32"};
  s.insert(s.end(), GetParam().synth_flags.begin(), GetParam().synth_flags.end());
  s.push_back((tmp / "model").string());
  auto r = run_loftqd(s);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  auto q = run_loftqd(quantize_args(tmp / "model", tmp / "out", {"--repo-id", "org/x"}));
  ASSERT_EQ(q.exit_code, 0) << q.out;
  auto v = run_loftqd({"verify", (tmp / "out").string(), "--original", (tmp / "model").string()});
  EXPECT_EQ(v.exit_code, 0) << v.out;
  EXPECT_THAT(v.out, HasSubstr("valid LoftQ layout"));
}

INSTANTIATE_TEST_SUITE_P(
    Registry, ArchRoundTrip,
    ::testing::Values(ArchCase{"phi3", {"--arch", "phi3", "--kv-heads", "2"}},
                      ArchCase{"mixtral", {"--arch", "mixtral", "--experts", "2"}},
                      ArchCase{"qwen2_moe", {"--arch", "qwen2_moe", "--experts", "2"}},
                      ArchCase{"gpt2", {"--arch", "gpt2"}},
                      ArchCase{"gpt2_base", {"--arch", "gpt2", "--base-class"}},
                      ArchCase{"llama_base", {"--arch", "llama", "--base-class"}},
                      ArchCase{"t5", {"--arch", "t5", "--decoder-layers", "3"}},
                      ArchCase{"distilbart", {"--arch", "bart", "--decoder-layers", "1"}},
                      ArchCase{"deberta_v2", {"--arch", "deberta-v2"}},
                      ArchCase{"falcon", {"--arch", "falcon"}}),
    [](const ::testing::TestParamInfo<ArchCase>& i) { return i.param.name; });

TEST(Cli, RegistryErrorsAndWarnings) {
  TempDir tmp;
  auto r = run_loftqd({"synth", "--arch", "mixtral", "--layers", "2", "--hidden", "64",
                       "--intermediate", "128", "--heads", "4", "--vocab", "64", "--experts", "2",
                       (tmp / "moe").string()});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  // The routers are left out, and the run says so.
  auto q = run_loftqd(quantize_args(tmp / "moe", tmp / "out", {"--repo-id", "org/x"}));
  ASSERT_EQ(q.exit_code, 0) << q.out;
  EXPECT_THAT(q.out, HasSubstr("weight(s) 'gate'"));
  EXPECT_THAT(q.out, HasSubstr("20 target weights quantized"));
  // Non-Linear targets: exit 2 naming the module.
  q = run_loftqd(
      quantize_args(tmp / "moe", tmp / "o2", {"--target-modules", "q_proj,embed_tokens"}));
  EXPECT_EQ(q.exit_code, 2) << q.out;
  EXPECT_THAT(q.out, HasSubstr("'embed_tokens' matches 'model.embed_tokens'"));
  q = run_loftqd(quantize_args(tmp / "moe", tmp / "o2", {"--target-modules", "gate"}));
  EXPECT_EQ(q.exit_code, 2) << q.out;
  EXPECT_THAT(q.out, HasSubstr("router"));
  // An unknown model_type: exit 2, the candidates and the flag.
  json cfg = json::parse(slurp(tmp / "moe" / "config.json"));
  cfg["model_type"] = "mystery";
  spit(tmp / "moe" / "config.json", cfg.dump());
  q = run_loftqd(quantize_args(tmp / "moe", tmp / "o3", {}));
  EXPECT_EQ(q.exit_code, 2) << q.out;
  EXPECT_THAT(q.out, HasSubstr("pass --target-modules"));
  EXPECT_THAT(q.out, HasSubstr("w1 (4 x [128, 64])"));
  EXPECT_FALSE(fs::exists(tmp / "o2"));
  EXPECT_FALSE(fs::exists(tmp / "o3"));
}
