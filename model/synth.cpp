#include "model/synth.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <numbers>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common/fs.h"
#include "model/registry.h"
#include "model/safetensors.h"
#include "model/synth_internal.h"

namespace loftqd::model {

using common::write_file_atomic;

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// ---------------------------------------------------------------------------------------------
// Randomness. Everything is derived from opt.seed through splitmix64 and xoshiro256**, whose
// outputs are fixed by their definitions (unlike std::normal_distribution), so the same options
// give the same bytes everywhere. Each tensor gets a seed from its name, and each row of a
// matrix its own generator, so the output does not depend on the thread count.

inline uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

inline uint64_t mix(uint64_t a, uint64_t b) {
  uint64_t s = a ^ (b * 0xD6E8FEB86659FD93ull + 0x2545F4914F6CDD1Dull);
  splitmix64(s);
  return splitmix64(s);
}

uint64_t fnv1a(std::string_view s) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (unsigned char ch : s) {
    h ^= ch;
    h *= 0x100000001B3ull;
  }
  return h;
}

class Rng {
 public:
  explicit Rng(uint64_t seed) {
    for (auto& w : s_) w = splitmix64(seed);
  }
  uint64_t next() {
    const uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }
  // Uniform in (0, 1), never exactly 0 or 1.
  double uniform() { return (static_cast<double>(next() >> 11) + 0.5) * 0x1.0p-53; }
  // Standard normal (Box-Muller; used only for small vectors, so speed does not matter).
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double r = std::sqrt(-2.0 * std::log(uniform()));
    const double a = 2.0 * std::numbers::pi * uniform();
    spare_ = r * std::sin(a);
    has_spare_ = true;
    return r * std::cos(a);
  }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  std::array<uint64_t, 4> s_{};
  double spare_ = 0.0;
  bool has_spare_ = false;
};

// Heavy-tailed unit-variance noise: Student-t with 5 degrees of freedom (kurtosis 9), sampled
// by a piecewise-linear inverse CDF table (one generator call and one lookup per value; the
// extreme tails are cut near the 1/(4*kBins) quantile, about 12 standard deviations).
class StudentT5 {
 public:
  static constexpr int kBits = 13;
  static constexpr int kBins = 1 << kBits;

  StudentT5() {
    for (int i = 0; i <= kBins; ++i) {
      double p = static_cast<double>(i) / kBins;
      if (i == 0) p = 0.25 / kBins;
      if (i == kBins) p = 1.0 - 0.25 / kBins;
      q_[static_cast<size_t>(i)] = quantile(p);
    }
    // Exact variance of the piecewise-linear distribution, to normalize to unit variance.
    double m2 = 0.0;
    for (int i = 0; i < kBins; ++i) {
      const double a = q_[static_cast<size_t>(i)], b = q_[static_cast<size_t>(i) + 1];
      m2 += (a * a + a * b + b * b) / 3.0;
    }
    const double inv_std = 1.0 / std::sqrt(m2 / kBins);
    for (size_t i = 0; i < table_.size(); ++i) table_[i] = static_cast<float>(q_[i] * inv_std);
  }

  float sample(Rng& rng) const {
    const uint64_t x = rng.next();
    const size_t i = static_cast<size_t>(x >> (64 - kBits));
    const float frac = static_cast<float>(x & 0xFFFFFF) * 0x1.0p-24f;
    return table_[i] + frac * (table_[i + 1] - table_[i]);
  }

 private:
  // For nu = 5: F(t) = 1/2 + (theta + sin(theta) cos(theta) (1 + 2/3 cos^2(theta))) / pi with
  // theta = atan(t / sqrt(5)); solve for theta by bisection.
  static double quantile(double p) {
    const double target = std::numbers::pi * (p - 0.5);
    double lo = -std::numbers::pi / 2, hi = std::numbers::pi / 2;
    for (int it = 0; it < 80; ++it) {
      const double th = 0.5 * (lo + hi);
      const double c = std::cos(th);
      const double g = th + std::sin(th) * c * (1.0 + 2.0 / 3.0 * c * c);
      (g < target ? lo : hi) = th;
    }
    return std::sqrt(5.0) * std::tan(0.5 * (lo + hi));
  }

  std::array<double, kBins + 1> q_{};
  std::array<float, kBins + 1> table_{};
};

const StudentT5& student_t5() {
  static const StudentT5 t;
  return t;
}

// ---------------------------------------------------------------------------------------------
// What to write: synth_archs.cpp.

using synth_detail::Def;
using synth_detail::Kind;
using synth_detail::Vocab;

size_t numel(const std::vector<int64_t>& shape) {
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  return n;
}

size_t nbytes(const Def& d) {
  return numel(d.shape) * dtype_size(d.dtype);
}

constexpr int kMinVocab = 8;  // room for the tokenizer stub's special tokens
constexpr int kLlamaMaxPositions = 2048;
constexpr int kBartMaxPositions = 1024;
constexpr int kBertMaxPositions = 512;

// ---------------------------------------------------------------------------------------------
// Validation.

std::string arch_list() {
  std::string s;
  for (const auto& a : synth_detail::arch_specs())
    s += (s.empty() ? "" : ", ") + std::string(a.type);
  return s;
}

void validate(const SynthOptions& o) {
  auto bad = [](const std::string& msg) { throw std::invalid_argument("synth: " + msg); };
  const auto* spec = synth_detail::find_arch_spec(o.arch);
  if (!spec) bad("unknown arch '" + o.arch + "' (expected one of " + arch_list() + ")");
  if (o.layers < 1) bad("layers must be >= 1, got " + std::to_string(o.layers));
  if (o.decoder_layers < 0)
    bad("decoder_layers must be >= 0, got " + std::to_string(o.decoder_layers));
  if (o.hidden <= 0) bad("hidden must be > 0, got " + std::to_string(o.hidden));
  if (o.intermediate <= 0) bad("intermediate must be > 0, got " + std::to_string(o.intermediate));
  if (o.heads <= 0) bad("heads must be > 0, got " + std::to_string(o.heads));
  if (o.experts < 1) bad("experts must be >= 1, got " + std::to_string(o.experts));
  if (o.vocab < kMinVocab)
    bad("vocab must be >= " + std::to_string(kMinVocab) + ", got " + std::to_string(o.vocab));
  if (o.kv_heads < 0) bad("kv_heads must be >= 0, got " + std::to_string(o.kv_heads));
  if (o.hidden % o.heads != 0)
    bad("hidden (" + std::to_string(o.hidden) + ") must be divisible by heads (" +
        std::to_string(o.heads) + ")");
  if (o.kv_heads != 0 && o.kv_heads != o.heads) {
    if (!spec->gqa)
      bad("kv_heads (grouped-query attention) applies only to llama-like architectures, not " +
          o.arch);
    if (o.heads % o.kv_heads != 0)
      bad("heads (" + std::to_string(o.heads) + ") must be divisible by kv_heads (" +
          std::to_string(o.kv_heads) + ")");
  }
  if (!is_float_dtype(o.dtype))
    bad("dtype must be F32, F16 or BF16, got " + std::string(dtype_name(o.dtype)));
  if (o.shards < 1) bad("shards must be >= 1, got " + std::to_string(o.shards));
}

// ---------------------------------------------------------------------------------------------
// Generation.

unsigned worker_count(size_t rows, size_t n) {
  if (n < (size_t{1} << 18)) return 1;
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  return static_cast<unsigned>(std::min<size_t>({hw, 16, rows / 8 + 1}));
}

// Runs fn(row_begin, row_end) over [0, rows) on a few threads.
template <class Fn>
void parallel_rows(size_t rows, size_t n, Fn fn) {
  const unsigned t = worker_count(rows, n);
  if (t <= 1) {
    fn(size_t{0}, rows);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(t);
  for (unsigned k = 0; k < t; ++k) {
    const size_t b = rows * k / t, e = rows * (k + 1) / t;
    pool.emplace_back([=, &fn] { fn(b, e); });
  }
  for (auto& th : pool) th.join();
}

// Log-normal scales exp(sigma * N(0,1)), normalized to root-mean-square 1.
std::vector<float> lognormal_scales(Rng& rng, size_t n, double sigma) {
  std::vector<double> v(n);
  double ss = 0.0;
  for (auto& x : v) {
    x = std::exp(sigma * rng.normal());
    ss += x * x;
  }
  const double inv = 1.0 / std::sqrt(ss / static_cast<double>(n));
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(v[i] * inv);
  return out;
}

constexpr double kLinearStd = 0.02;
constexpr double kEmbeddingStd = 0.02;
constexpr double kNormNoise = 0.05;
constexpr double kBiasStd = 0.01;
constexpr double kScaleSigma = 0.3;        // log-normal row/column scales
constexpr double kOutlierFraction = 0.01;  // columns scaled 5-10x
constexpr double kLowRankEnergy = 0.4;     // share of the variance in the low-rank part
constexpr double kLowRankDecay = 0.75;     // ratio of successive low-rank singular values
constexpr size_t kMaxRank = 16;

// W = s * diag(r) * (sqrt(1-e) * T + U diag(sigma) V^T) * diag(c): T Student-t noise, r and c
// log-normal with a few outlier input channels (the same channels for every matrix reading
// a dimension, as in trained transformers), U and V Gaussian, sigma geometric with
// sum(sigma^2) = e. With the RMS of r and c normalized to 1, std(W) is about s.
void gen_linear(uint64_t base_seed, uint64_t tseed, size_t out, size_t in, float* w) {
  Rng rng(mix(tseed, 1));
  const std::vector<float> r = lognormal_scales(rng, out, kScaleSigma);

  // Column scales: log-normal, then outliers chosen per input width (shared across tensors).
  std::vector<double> cs(in);
  for (auto& x : cs) x = std::exp(kScaleSigma * rng.normal());
  {
    Rng orng(mix(base_seed, 0x6F75746C69657273ull ^ in));
    const size_t n_out =
        in >= 16
            ? std::max<size_t>(1, static_cast<size_t>(kOutlierFraction * static_cast<double>(in)))
            : 0;
    for (size_t k = 0; k < n_out; ++k) {
      const size_t j = static_cast<size_t>(orng.next() % in);
      cs[j] = 5.0 + 5.0 * rng.uniform();  // magnitude varies per tensor
    }
  }
  double ss = 0.0;
  for (double x : cs) ss += x * x;
  const double cinv = 1.0 / std::sqrt(ss / static_cast<double>(in));
  std::vector<float> c(in);
  for (size_t j = 0; j < in; ++j) c[j] = static_cast<float>(cs[j] * cinv);

  // Low-rank part: rank k, U [out, k] already multiplied by sigma, V [k, in].
  const size_t k = std::clamp<size_t>(std::min(out, in) / 8, 1, kMaxRank);
  std::vector<double> sig(k);
  double sig_ss = 0.0;
  for (size_t i = 0; i < k; ++i) {
    sig[i] = std::pow(kLowRankDecay, static_cast<double>(i));
    sig_ss += sig[i] * sig[i];
  }
  for (auto& x : sig) x *= std::sqrt(kLowRankEnergy / sig_ss);
  std::vector<float> u(out * k), v(k * in);
  for (size_t i = 0; i < out; ++i)
    for (size_t q = 0; q < k; ++q) u[i * k + q] = static_cast<float>(sig[q] * rng.normal());
  for (auto& x : v) x = static_cast<float>(rng.normal());

  const float noise_w = static_cast<float>(std::sqrt(1.0 - kLowRankEnergy));
  const StudentT5& t5 = student_t5();
  parallel_rows(out, out * in, [&](size_t rb, size_t re) {
    std::vector<float> acc(in);
    for (size_t i = rb; i < re; ++i) {
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (size_t q = 0; q < k; ++q) {
        const float a = u[i * k + q];
        const float* vq = v.data() + q * in;
        for (size_t j = 0; j < in; ++j) acc[j] += a * vq[j];
      }
      Rng row(mix(tseed, 0x100 + i));
      const float rs = static_cast<float>(kLinearStd) * r[i];
      float* wi = w + i * in;
      for (size_t j = 0; j < in; ++j) wi[j] = rs * c[j] * (noise_w * t5.sample(row) + acc[j]);
    }
  });
}

void gen_embedding(uint64_t tseed, size_t rows, size_t cols, float* w) {
  Rng rng(mix(tseed, 1));
  const std::vector<float> r = lognormal_scales(rng, rows, kScaleSigma);
  const StudentT5& t5 = student_t5();
  parallel_rows(rows, rows * cols, [&](size_t rb, size_t re) {
    for (size_t i = rb; i < re; ++i) {
      Rng row(mix(tseed, 0x100 + i));
      const float s = static_cast<float>(kEmbeddingStd) * r[i];
      for (size_t j = 0; j < cols; ++j) w[i * cols + j] = s * t5.sample(row);
    }
  });
}

void gen_tensor(const Def& d, uint64_t base_seed, std::vector<float>& buf) {
  const size_t n = numel(d.shape);
  buf.assign(n, 0.0f);
  const uint64_t tseed = mix(base_seed, fnv1a(d.name));
  switch (d.kind) {
    case Kind::kLinear:
      gen_linear(base_seed, tseed, static_cast<size_t>(d.shape[0]), static_cast<size_t>(d.shape[1]),
                 buf.data());
      break;
    case Kind::kConv1D: {
      // A linear layer's weight (out, in), stored transposed as Conv1D keeps it.
      const size_t in = static_cast<size_t>(d.shape[0]), out = static_cast<size_t>(d.shape[1]);
      std::vector<float> w(n);
      gen_linear(base_seed, tseed, out, in, w.data());
      for (size_t i = 0; i < out; ++i)
        for (size_t j = 0; j < in; ++j) buf[j * out + i] = w[i * in + j];
      break;
    }
    case Kind::kEmbedding:
      gen_embedding(tseed, static_cast<size_t>(d.shape[0]), static_cast<size_t>(d.shape[1]),
                    buf.data());
      break;
    case Kind::kNorm:
    case Kind::kBias: {
      Rng rng(mix(tseed, 1));
      const StudentT5& t5 = student_t5();
      const bool norm = d.kind == Kind::kNorm;
      const float s = static_cast<float>(norm ? kNormNoise : kBiasStd);
      for (auto& x : buf) x = (norm ? 1.0f : 0.0f) + s * t5.sample(rng);
      break;
    }
    case Kind::kZeros:
    case Kind::kPositionIds:
      break;
  }
}

void write_tensor(SafetensorsWriter& w, const Def& d, uint64_t seed, std::vector<float>& buf) {
  if (d.kind == Kind::kPositionIds) {
    const size_t n = numel(d.shape);
    std::vector<std::byte> bytes(n * 8);
    for (size_t i = 0; i < n; ++i)
      for (size_t b = 0; b < 8; ++b)
        bytes[i * 8 + b] = static_cast<std::byte>((static_cast<uint64_t>(i) >> (8 * b)) & 0xFF);
    w.write(d.name, bytes);
    return;
  }
  gen_tensor(d, seed, buf);
  w.write_f32(d.name, buf.data(), buf.size());
}

// Splits tensors, in order, into `shards` contiguous groups of roughly equal bytes, none empty.
std::vector<int> assign_shards(const std::vector<Def>& defs, int shards) {
  size_t total = 0;
  for (const auto& d : defs) total += nbytes(d);
  std::vector<int> out(defs.size(), 0);
  int cur = 0;
  size_t acc = 0;
  const size_t n = defs.size();
  for (size_t i = 0; i < n; ++i) {
    if (i > 0 && cur < shards - 1) {
      const size_t remaining_tensors = n - i;
      const size_t remaining_shards = static_cast<size_t>(shards - 1 - cur);
      const long double mid = static_cast<long double>(acc) + nbytes(defs[i]) / 2.0L;
      const long double boundary =
          static_cast<long double>(total) * (cur + 1) / static_cast<long double>(shards);
      if (mid > boundary || remaining_tensors == remaining_shards) ++cur;
    }
    out[i] = cur;
    acc += nbytes(defs[i]);
  }
  return out;
}

std::string shard_name(int k, int n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05d-of-%05d.safetensors", k, n);
  return buf;
}

// ---------------------------------------------------------------------------------------------
// JSON side files.

struct Specials {
  std::vector<std::string> tokens;  // id = index
  json map;                         // special_tokens_map.json
  json tokenizer_config;
  std::string unk;
};

Specials specials(Vocab v) {
  Specials s;
  switch (v) {
    case Vocab::Llama:
      s.tokens = {"<unk>", "<s>", "</s>"};
      s.map = {{"bos_token", "<s>"}, {"eos_token", "</s>"}, {"unk_token", "<unk>"}};
      s.tokenizer_config = {{"add_bos_token", true}, {"add_eos_token", false},
                            {"bos_token", "<s>"},    {"clean_up_tokenization_spaces", false},
                            {"eos_token", "</s>"},   {"model_max_length", kLlamaMaxPositions},
                            {"pad_token", nullptr},  {"tokenizer_class", "PreTrainedTokenizerFast"},
                            {"unk_token", "<unk>"}};
      s.unk = "<unk>";
      return s;
    case Vocab::Gpt2:
      s.tokens = {"<|endoftext|>"};
      s.map = {{"bos_token", "<|endoftext|>"},
               {"eos_token", "<|endoftext|>"},
               {"unk_token", "<|endoftext|>"}};
      s.tokenizer_config = s.map;
      s.tokenizer_config["model_max_length"] = kBartMaxPositions;
      s.tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast";
      s.unk = "<|endoftext|>";
      return s;
    case Vocab::Bart:
      s.tokens = {"<s>", "<pad>", "</s>", "<unk>", "<mask>"};
      s.map = {{"bos_token", "<s>"},     {"cls_token", "<s>"},   {"eos_token", "</s>"},
               {"mask_token", "<mask>"}, {"pad_token", "<pad>"}, {"sep_token", "</s>"},
               {"unk_token", "<unk>"}};
      s.tokenizer_config = s.map;
      s.tokenizer_config["model_max_length"] = kBartMaxPositions;
      s.tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast";
      s.unk = "<unk>";
      return s;
    case Vocab::T5:
      s.tokens = {"<pad>", "</s>", "<unk>"};
      s.map = {{"eos_token", "</s>"}, {"pad_token", "<pad>"}, {"unk_token", "<unk>"}};
      s.tokenizer_config = s.map;
      s.tokenizer_config["model_max_length"] = kBertMaxPositions;
      s.tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast";
      s.unk = "<unk>";
      return s;
    case Vocab::Bert:
      break;
  }
  s.tokens = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};
  s.map = {{"cls_token", "[CLS]"},
           {"mask_token", "[MASK]"},
           {"pad_token", "[PAD]"},
           {"sep_token", "[SEP]"},
           {"unk_token", "[UNK]"}};
  s.tokenizer_config = s.map;
  s.tokenizer_config["do_lower_case"] = true;
  s.tokenizer_config["model_max_length"] = kBertMaxPositions;
  s.tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast";
  s.unk = "[UNK]";
  return s;
}

// A minimal but loadable `tokenizers` file: a WordLevel model over the special tokens and a few
// words, whitespace pre-tokenization.
json tokenizer_json(const SynthOptions& o, const Specials& s) {
  json added = json::array();
  json vocab = json::object();
  int id = 0;
  for (const auto& t : s.tokens) {
    added.push_back({{"id", id},
                     {"content", t},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
    vocab[t] = id++;
  }
  for (const char* w : {"the", "a", "synthetic", "model"}) {
    if (id >= o.vocab) break;
    vocab[w] = id++;
  }
  return json{{"version", "1.0"},
              {"truncation", nullptr},
              {"padding", nullptr},
              {"added_tokens", added},
              {"normalizer", nullptr},
              {"pre_tokenizer", {{"type", "Whitespace"}}},
              {"post_processor", nullptr},
              {"decoder", nullptr},
              {"model", {{"type", "WordLevel"}, {"vocab", vocab}, {"unk_token", s.unk}}}};
}

void write_json(const fs::path& p, const json& j) {
  write_file_atomic(p, j.dump(2) + "\n");
}

// A base-class save (LlamaModel, GPT2Model, ...): the task class's prefix stripped from every
// key, its head dropped.
std::vector<Def> as_base_class(std::vector<Def> defs, const Architecture& a) {
  const std::string prefix = task_prefix(a);
  std::vector<Def> out;
  for (auto& d : defs) {
    if (prefix.empty()) {
      if (!d.name.starts_with("lm_head.")) out.push_back(std::move(d));
    } else if (d.name.starts_with(prefix + ".")) {
      d.name = d.name.substr(prefix.size() + 1);
      out.push_back(std::move(d));
    }
  }
  return out;
}

json config_json(const SynthOptions& opt, const synth_detail::ArchSpec& spec,
                 const Architecture& a) {
  json c = spec.config(opt);
  if (opt.base_class) c["architectures"] = {a.base_class};
  if (!opt.name_or_path.empty()) c["_name_or_path"] = opt.name_or_path;
  return c;
}

// generation_config.json of the generative architectures (none for the encoders).
std::optional<json> generation_config(const SynthOptions& opt, const Architecture& a,
                                      const json& config) {
  if (opt.arch == "llama")
    return json{{"bos_token_id", 1},
                {"eos_token_id", 2},
                {"max_length", kLlamaMaxPositions},
                {"transformers_version", synth_detail::kTransformersVersion}};
  if (opt.arch == "bart")
    return json{
        {"bos_token_id", 0},         {"decoder_start_token_id", 2},
        {"early_stopping", true},    {"eos_token_id", 2},
        {"forced_bos_token_id", 0},  {"forced_eos_token_id", 2},
        {"no_repeat_ngram_size", 3}, {"num_beams", 4},
        {"pad_token_id", 1},         {"transformers_version", synth_detail::kTransformersVersion}};
  if (a.task_type == "SEQ_CLS") return std::nullopt;
  json g = {{"transformers_version", synth_detail::kTransformersVersion}};
  for (const char* k : {"bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"})
    if (config.contains(k)) g[k] = config[k];
  return g;
}

}  // namespace

void synth_checkpoint(const SynthOptions& opt, const fs::path& out_dir) {
  validate(opt);
  const auto& spec = *synth_detail::find_arch_spec(opt.arch);
  const Architecture* arch = find_architecture(opt.arch);
  if (!arch) throw std::logic_error("synth: '" + opt.arch + "' is not in the registry");
  std::vector<Def> defs = spec.defs(opt);
  if (opt.base_class) defs = as_base_class(std::move(defs), *arch);
  if (static_cast<size_t>(opt.shards) > defs.size())
    throw std::invalid_argument("synth: shards (" + std::to_string(opt.shards) +
                                ") exceeds the number of tensors (" + std::to_string(defs.size()) +
                                ")");

  std::error_code ec;
  if (fs::exists(out_dir, ec)) {
    if (!fs::is_directory(out_dir, ec))
      throw std::runtime_error("synth: " + out_dir.string() + " exists and is not a directory");
    if (!fs::is_empty(out_dir, ec))
      throw std::runtime_error("synth: output directory " + out_dir.string() + " is not empty");
  }
  fs::create_directories(out_dir);

  const std::map<std::string, std::string> metadata{{"format", "pt"}};
  std::vector<float> buf;
  const std::vector<int> shard_of = assign_shards(defs, opt.shards);
  json weight_map = json::object();
  size_t total = 0;
  for (int s = 0; s < opt.shards; ++s) {
    const std::string file = opt.shards == 1 ? "model.safetensors" : shard_name(s + 1, opt.shards);
    std::vector<TensorSpec> specs;
    std::vector<const Def*> members;
    for (size_t i = 0; i < defs.size(); ++i) {
      if (shard_of[i] != s) continue;
      specs.push_back({defs[i].name, defs[i].dtype, defs[i].shape});
      members.push_back(&defs[i]);
      weight_map[defs[i].name] = file;
      total += nbytes(defs[i]);
    }
    SafetensorsWriter writer(out_dir / file, std::move(specs), metadata);
    for (const Def* d : members) write_tensor(writer, *d, opt.seed, buf);
    writer.commit();
  }
  buf.clear();
  buf.shrink_to_fit();

  if (opt.shards > 1) {
    // nlohmann::json keeps object keys sorted, as transformers writes the weight map.
    write_json(out_dir / "model.safetensors.index.json",
               json{{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}});
  }

  const Specials sp = specials(spec.vocab);
  write_json(out_dir / "tokenizer.json", tokenizer_json(opt, sp));
  write_json(out_dir / "tokenizer_config.json", sp.tokenizer_config);
  write_json(out_dir / "special_tokens_map.json", sp.map);
  const json config = config_json(opt, spec, *arch);
  if (auto g = generation_config(opt, *arch, config))
    write_json(out_dir / "generation_config.json", *g);
  // config.json last: a directory with a config.json is complete.
  write_json(out_dir / "config.json", config);
}

}  // namespace loftqd::model
