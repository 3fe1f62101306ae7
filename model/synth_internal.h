// Internal to model/: what a synthetic checkpoint holds, per architecture (synth_archs.cpp), and
// the generator that fills it (synth.cpp). Not a public header.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "model/dtype.h"
#include "model/synth.h"

namespace loftqd::model::synth_detail {

enum class Kind {
  kLinear,       // nn.Linear weight (out, in): heavy-tailed noise + low-rank part, std ~0.02
  kConv1D,       // transformers Conv1D weight, stored (in, out): a kLinear (out, in) transposed
  kEmbedding,    // heavy-tailed rows with log-normal row norms, std ~0.02
  kNorm,         // ~1.0 + small noise
  kBias,         // std 0.01
  kZeros,        //
  kPositionIds,  // I64 0..n-1
};

struct Def {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  Kind kind;
};

// Appends tensor definitions in declaration order (the order the modules are declared in
// transformers, which is the order the files hold them in).
struct Builder {
  DType dtype;
  std::vector<Def> defs;
  void linear(const std::string& name, int64_t out, int64_t in) {
    defs.push_back({name, dtype, {out, in}, Kind::kLinear});
  }
  void bias(const std::string& prefix, int64_t n) {
    defs.push_back({prefix + ".bias", dtype, {n}, Kind::kBias});
  }
  void linear_b(const std::string& prefix, int64_t out, int64_t in, bool with_bias = true) {
    linear(prefix + ".weight", out, in);
    if (with_bias) bias(prefix, out);
  }
  // Conv1D(nf = out, nx = in): weight (in, out), bias (out).
  void conv1d(const std::string& prefix, int64_t in, int64_t out) {
    defs.push_back({prefix + ".weight", dtype, {in, out}, Kind::kConv1D});
    bias(prefix, out);
  }
  void embedding(const std::string& name, int64_t rows, int64_t cols) {
    defs.push_back({name, dtype, {rows, cols}, Kind::kEmbedding});
  }
  void rms_norm(const std::string& name, int64_t n) {
    defs.push_back({name, dtype, {n}, Kind::kNorm});
  }
  void layer_norm(const std::string& prefix, int64_t n) {
    defs.push_back({prefix + ".weight", dtype, {n}, Kind::kNorm});
    bias(prefix, n);
  }
};

// Which tokenizer stub (special tokens and their ids) goes with an architecture.
enum class Vocab { Llama, Gpt2, Bart, Bert, T5 };

struct ArchSpec {
  std::string_view type;  // config.json model_type
  std::vector<Def> (*defs)(const SynthOptions&);
  nlohmann::json (*config)(const SynthOptions&);
  Vocab vocab;
  bool gqa;  // supports kv_heads < heads
};

// Every architecture synth can write (one per registry entry), and the one for a model_type.
const std::vector<ArchSpec>& arch_specs();
const ArchSpec* find_arch_spec(std::string_view type);

std::string torch_dtype(DType t);
constexpr const char* kTransformersVersion = "4.44.2";

}  // namespace loftqd::model::synth_detail
