// Shared by the convert tests: tiny synthetic checkpoints of any registry architecture, quick
// LoftQ settings, and PEFT's effective weight computed here with plain loops (not with the
// writer's or verify's code).
#pragma once

#include <cmath>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "convert/convert.h"
#include "model/safetensors.h"
#include "model/synth.h"
#include "quant/device.h"
#include "support/test_util.h"

namespace loftqd::testing {

inline model::SynthOptions tiny_synth(const std::string& arch) {
  model::SynthOptions o;
  o.arch = arch;
  o.layers = 2;
  o.hidden = 64;
  o.intermediate = 128;
  o.heads = 4;
  o.vocab = 64;
  o.experts = 2;
  o.dtype = model::DType::F32;  // exact effective-weight checks
  return o;
}

inline convert::QuantizeOptions quick_options() {
  convert::QuantizeOptions o;
  o.settings.rank = 4;
  o.settings.iters = 1;
  o.repo_id = "org/tiny-loftq";
  return o;
}

inline nlohmann::json read_json(const std::filesystem::path& p) {
  return nlohmann::json::parse(slurp(p));
}

// The tensor `name` of a checkpoint directory (any shard), as float32, with its shape.
inline std::vector<float> tensor_f32(const std::filesystem::path& dir, const std::string& name,
                                     std::vector<int64_t>* shape = nullptr) {
  const auto ck = model::Checkpoint::open(dir);
  for (const auto& [s, t] : ck.all_tensors())
    if (t->name == name) {
      if (shape) *shape = t->shape;
      return ck.shard(s).read_f32(*t);
    }
  throw std::runtime_error("no tensor " + name + " in " + dir.string());
}

// ||W - W'|| / ||W|| with PEFT's effective weight W' = Q + s B A for nn.Linear (weight
// (out, in)) and W' = Q + s (B A)^T for Conv1D (weight (in, out)); A is (r, in), B (out, r).
inline double peft_effective_error(const std::vector<float>& W, const std::vector<float>& Q,
                                   const std::vector<float>& A, const std::vector<float>& B,
                                   int64_t out, int64_t in, int64_t r, double s, bool conv1d) {
  double err = 0, norm = 0;
  for (int64_t i = 0; i < out; ++i)
    for (int64_t j = 0; j < in; ++j) {
      double ba = 0;
      for (int64_t k = 0; k < r; ++k) ba += double(B[i * r + k]) * A[k * in + j];
      const int64_t at = conv1d ? j * out + i : i * in + j;
      const double d = W[at] - (Q[at] + s * ba);
      err += d * d;
      norm += double(W[at]) * W[at];
    }
  return std::sqrt(err / norm);
}

}  // namespace loftqd::testing
