// Which weights of a checkpoint get LoftQ and with how many bits: config.json's model_type, the
// target modules, and the bit plan resolved once against the model.
#include <algorithm>
#include <set>

#include "common/fs.h"
#include "convert/internal.h"
#include "model/dtype.h"
#include "model/naming.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace loftqd::convert::detail {

using model::FormatError;

std::string read_model_type(const fs::path& model_dir) {
  const fs::path cfg_path = model_dir / "config.json";
  if (!fs::exists(cfg_path))
    throw FormatError(cfg_path.string() + ": missing (needed for model_type)");
  json cfg;
  try {
    cfg = json::parse(common::read_file(cfg_path));
  } catch (const json::exception& e) {
    throw FormatError(cfg_path.string() + ": not valid JSON (" + e.what() + ")");
  }
  if (!cfg.is_object() || !cfg.contains("model_type") || !cfg["model_type"].is_string())
    throw FormatError(cfg_path.string() + ": field 'model_type' is missing or not a string");
  return cfg["model_type"].get<std::string>();
}

namespace {

// The layer count the bit plan is resolved against: highest layer index + 1.
int count_layers(const model::Checkpoint& ckpt) {
  int n = 0;
  for (const auto& [shard, t] : ckpt.all_tensors())
    if (auto li = model::layer_index(t->name)) n = std::max(n, *li + 1);
  return n;
}

// The spec of one target weight, after checking that LoftQ can run on it.
Target plan_one(const model::Checkpoint& ckpt, size_t shard, const model::TensorInfo& t,
                const TargetPlan& tp, const LoftqSettings& s) {
  const std::string where = ckpt.shard(shard).path().string() + ": tensor '" + t.name + "'";
  if (t.shape.size() != 2) throw FormatError(where + ": target weight is not 2-D");
  if (!model::is_float_dtype(t.dtype))
    throw FormatError(where + ": target weight has dtype " +
                      std::string(model::dtype_name(t.dtype)) + " (F32, F16 or BF16 expected)");
  Target tg;
  tg.layer = model::layer_index(t.name);
  const auto bits = tp.plan.bits_for(tg.layer, model::module_leaf(t.name));
  if (!bits)
    throw std::invalid_argument("bit plan '" + tp.plan.to_string() + "' gives no bits for layer " +
                                std::to_string(tg.layer.value_or(-1)) + " (" + t.name + ")");
  tg.spec = quant::QuantSpec{s.quant, *bits, s.block_size};
  try {
    quant::check_spec(tg.spec, t.numel());
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(where + ": " + e.what());
  }
  return tg;
}

}  // namespace

TargetPlan plan_targets(const fs::path& model_dir, const std::string& model_type,
                        const model::Checkpoint& ckpt, const LoftqSettings& s) {
  TargetPlan tp;
  tp.model_type = model_type;
  const std::vector<std::string> targets =
      s.target_modules.empty() ? model::default_target_modules(tp.model_type) : s.target_modules;
  if (targets.empty())
    throw std::invalid_argument((model_dir / "config.json").string() + ": model_type '" +
                                tp.model_type +
                                "' has no default target modules; pass --target-modules");
  tp.num_layers = count_layers(ckpt);
  tp.plan = s.plan;
  tp.plan.resolve(tp.num_layers, quant::supported_bits(s.quant));

  std::set<std::string> used;
  for (const auto& [shard, t] : ckpt.all_tensors()) {
    if (!model::is_target_weight(t->name, targets)) continue;
    tp.by_tensor[t->name] = plan_one(ckpt, shard, *t, tp, s);
    for (const auto& tm : targets)
      if (model::is_target_weight(t->name, {tm})) used.insert(tm);
  }
  if (tp.by_tensor.empty())
    throw std::invalid_argument(model_dir.string() + ": no tensor matches the target modules");
  for (const auto& tm : targets) {
    if (!s.target_modules.empty() && !used.count(tm))
      throw std::invalid_argument("target module '" + tm + "' matches no weight in " +
                                  model_dir.string());
    if (used.count(tm)) tp.adapter_targets.push_back(tm);
  }
  return tp;
}

}  // namespace loftqd::convert::detail
