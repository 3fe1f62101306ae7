// Which weights of a checkpoint get LoftQ and with how many bits: config.json's model_type
// looked up in the architecture registry (model/registry.h), the layer stacks checked against
// config.json, the target modules matched by PEFT's rule on the task class's module names, the
// weights the loader would quantize but that get no correction recorded as left out, and the
// bit plan resolved once against the model.
#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "common/fs.h"
#include "convert/internal.h"
#include "model/dtype.h"
#include "model/naming.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace loftqd::convert::detail {

using model::Architecture;
using model::FormatError;
using model::NeverKind;

json read_config(const fs::path& model_dir) {
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
  return cfg;
}

std::string read_model_type(const fs::path& model_dir) {
  return read_config(model_dir)["model_type"].get<std::string>();
}

namespace {

bool is_weight(const std::string& name) {
  return name.ends_with(".weight");
}

// One tensor of the checkpoint as the task class sees it.
struct Seen {
  size_t shard;
  const model::TensorInfo* t;
  std::string module;  // task-class module path
  std::optional<model::LayerPos> pos;
};

std::vector<Seen> view(const model::Checkpoint& ckpt, const Architecture& a, bool base_save) {
  std::vector<Seen> out;
  for (const auto& [shard, t] : ckpt.all_tensors()) {
    const std::string tn = model::task_name(a, base_save, t->name);
    const std::string module = model::module_path(tn);
    out.push_back({shard, t, module, model::locate_layer(a, module)});
  }
  return out;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string o = "[";
  for (size_t i = 0; i < s.size(); ++i) o += (i ? ", " : "") + std::to_string(s[i]);
  return o + "]";
}

// The message for a model_type outside the registry: the 2-D weights of the repeated blocks,
// by module name, and the flag to pass.
std::string unknown_type_message(const fs::path& model_dir, const std::string& model_type,
                                 const model::Checkpoint& ckpt) {
  std::vector<std::string> order;
  std::map<std::string, std::pair<int, std::string>> seen;  // leaf -> (count, example shape)
  for (const auto& [shard, t] : ckpt.all_tensors()) {
    if (!is_weight(t->name) || t->shape.size() != 2 || !model::layer_index(t->name)) continue;
    const std::string leaf = model::module_leaf(t->name);
    auto [it, fresh] = seen.emplace(leaf, std::make_pair(0, shape_str(t->shape)));
    if (fresh) order.push_back(leaf);
    ++it->second.first;
  }
  std::string msg = (model_dir / "config.json").string() + ": model_type '" + model_type +
                    "' is not in loftqd's architecture registry (" + model::known_model_types() +
                    "), and loftqd does not guess which weights to quantize: pass "
                    "--target-modules with the linear modules of the repeated blocks";
  if (order.empty()) return msg + " (no 2-D weight with a layer index was found)";
  msg += ". Candidate linear weights: ";
  std::string all;
  for (size_t i = 0; i < order.size(); ++i) {
    const auto& [n, shape] = seen[order[i]];
    msg += (i ? ", " : "") + order[i] + " (" + std::to_string(n) + " x " + shape + ")";
    all += (i ? "," : "") + order[i];
  }
  return msg + "; e.g. --target-modules " + all;
}

// Each stack's depth from config.json, checked against the layer indices of the tensors.
std::vector<StackInfo> check_stacks(const fs::path& model_dir, const Architecture& a,
                                    const json& config, const std::vector<Seen>& tensors) {
  std::vector<std::set<int>> indices(a.stacks.size());
  for (const auto& s : tensors)
    if (s.pos) indices[s.pos->stack].insert(s.pos->layer);
  std::vector<StackInfo> out;
  int first = 0;
  for (size_t i = 0; i < a.stacks.size(); ++i) {
    const auto& st = a.stacks[i];
    const int from_tensors = indices[i].empty() ? 0 : *indices[i].rbegin() + 1;
    StackInfo info{st.name, st.path, "", from_tensors, first};
    const auto depth = model::config_depth(st, config, &info.config_field);
    const std::string where = (model_dir / "config.json").string();
    if (depth && *depth != from_tensors)
      throw FormatError(where + ": " + info.config_field + " is " + std::to_string(*depth) +
                        " but the checkpoint's tensors under '" + st.path + "' hold " +
                        std::to_string(from_tensors) + " layer(s)");
    if (static_cast<int>(indices[i].size()) != from_tensors) {
      int missing = 0;
      while (indices[i].count(missing)) ++missing;
      throw FormatError(model_dir.string() + ": the tensors under '" + st.path +
                        "' have no layer " + std::to_string(missing) + " of " +
                        std::to_string(from_tensors));
    }
    out.push_back(info);
    first += from_tensors;
  }
  return out;
}

// A match of --target-modules on a module LoftQ cannot correct: a clear refusal.
[[noreturn]] void refuse(const std::string& target, const std::string& module,
                         const std::string& why) {
  throw std::invalid_argument("--target-modules: '" + target + "' matches '" + module +
                              "', which is not a LoftQ target: " + why +
                              ". Only nn.Linear and Conv1D layers can be targets");
}

std::string matching_target(const std::string& task_weight, const std::vector<std::string>& ts) {
  for (const auto& t : ts)
    if (model::is_target_weight(task_weight, {t})) return t;
  return "";
}

// Classifies every tensor: targets (planned without bits yet), left-outs, the rest ignored.
void pick_targets(TargetPlan& tp, const std::vector<Seen>& tensors,
                  const std::vector<std::string>& targets, bool user_targets) {
  std::set<std::string> used;
  for (const auto& s : tensors) {
    const auto& t = *s.t;
    if (!is_weight(t.name)) continue;
    const model::NeverTarget* never = model::never_target(tp.arch, s.module);
    if (never && never->kind == NeverKind::Unused) continue;  // not in the task class
    const std::string tm = matching_target(s.module + ".weight", targets);
    if (!tm.empty()) {
      if (never) refuse(tm, s.module, never->reason);
      if (t.shape.size() != 2)
        refuse(tm, s.module,
               "its weight is " + std::to_string(t.shape.size()) +
                   "-D (a norm or a bias-like "
                   "parameter), not a Linear layer");
      Target tg;
      tg.module = s.module;
      tg.conv1d = model::is_conv1d(tp.arch, s.module);
      tg.out_features = tg.conv1d ? t.shape[1] : t.shape[0];
      tg.in_features = tg.conv1d ? t.shape[0] : t.shape[1];
      if (s.pos) {
        const StackInfo& st = tp.stacks[s.pos->stack];
        tg.layer = st.first + s.pos->layer;
        tg.stack = st.name;
        tg.stack_layer = s.pos->layer;
      }
      tp.by_tensor[t.name] = tg;
      used.insert(tm);
      for (const auto& other : targets)
        if (model::is_target_weight(s.module + ".weight", {other})) used.insert(other);
      continue;
    }
    if (t.shape.size() != 2) continue;
    if (never && (never->kind == NeverKind::Embedding || never->kind == NeverKind::Head)) continue;
    const std::string leaf = model::module_leaf(t.name);
    if (std::find(tp.arch.keep_fp32.begin(), tp.arch.keep_fp32.end(), leaf) !=
        tp.arch.keep_fp32.end())
      continue;  // the loader keeps it in float32 (_keep_in_fp32_modules)
    const std::string why = never          ? never->reason
                            : user_targets ? "not in --target-modules"
                                           : "not in the registry's targets for " + tp.model_type;
    // Routers and task heads by their registry name, anything else by its leaf (bitsandbytes
    // then also keeps other modules of that name in full precision: more memory, never wrong).
    const std::string skip = never ? never->module : leaf;
    tp.left_out.push_back({t.name, s.module, why, skip, s.pos.has_value()});
  }
  for (const auto& tm : targets)
    if (used.count(tm)) tp.adapter_targets.push_back(tm);
}

// --target-modules names that match no weight: a container module (PEFT would refuse it) or
// nothing at all.
void check_unmatched(const TargetPlan& tp, const std::vector<Seen>& tensors,
                     const std::vector<std::string>& targets, const fs::path& model_dir) {
  for (const auto& tm : targets) {
    if (std::find(tp.adapter_targets.begin(), tp.adapter_targets.end(), tm) !=
        tp.adapter_targets.end())
      continue;
    for (const auto& s : tensors) {
      const std::string m = s.module + ".";
      const size_t at = m.find("." + tm + ".");
      if (m.starts_with(tm + ".") || at != std::string::npos) {
        const std::string container =
            m.starts_with(tm + ".") ? tm : m.substr(0, at + 1 + tm.size());
        refuse(tm, container, "it is a container module (" + s.module + " is inside it)");
      }
    }
    throw std::invalid_argument("target module '" + tm + "' matches no weight in " +
                                model_dir.string());
  }
}

// ---- Bit plans ----

bool rule_covers(const quant::PlanRule& r, std::optional<int> layer, const std::string& leaf) {
  if (std::find(r.modules.begin(), r.modules.end(), leaf) == r.modules.end()) return false;
  if (r.first < 0) return true;
  return layer && *layer >= r.first && (r.last < 0 || *layer <= r.last);
}

// --avg-bits B, parameter-weighted: the first layers (in the plan's numbering) get 4 bits and
// the rest 2 so that the 4-bit share of the target parameters is (B - 2) / 2. Whole layers when
// that lands within 0.05 bits (the LoftQ authors' floor(L (B - 2) / 2) on equal layers);
// otherwise the boundary layer is split by module. Weights that a --override rule covers keep
// its bits and are left out of the balance; unindexed targets take the plan's highest bits.
quant::BitPlan resolve_average(const TargetPlan& tp, const LoftqSettings& s,
                               const model::Checkpoint& ckpt) {
  const double B = *s.plan.average_bits();
  const auto& user = s.plan.rules();
  const int L = tp.num_layers;
  std::vector<double> per_layer(static_cast<size_t>(L), 0.0);
  std::vector<std::vector<std::pair<std::string, double>>> groups(static_cast<size_t>(L));
  double free_total = 0;
  for (const auto& [shard, t] : ckpt.all_tensors()) {
    auto it = tp.by_tensor.find(t->name);
    if (it == tp.by_tensor.end() || !it->second.layer) continue;
    const std::string leaf = model::module_leaf(t->name);
    if (std::any_of(user.begin(), user.end(),
                    [&](const auto& r) { return rule_covers(r, it->second.layer, leaf); }))
      continue;
    const auto l = static_cast<size_t>(*it->second.layer);
    const double n = static_cast<double>(t->numel());
    per_layer[l] += n;
    free_total += n;
    auto g = std::find_if(groups[l].begin(), groups[l].end(),
                          [&](const auto& x) { return x.first == leaf; });
    if (g == groups[l].end())
      groups[l].push_back({leaf, n});
    else
      g->second += n;
  }
  const double want4 = (B - 2.0) / 2.0 * free_total;
  int k = 0;
  double cum = 0;
  if (free_total <= 0) {
    k = static_cast<int>(std::floor(L * (B - 2.0) / 2.0 + 1e-9));
  } else {
    while (k < L && cum + per_layer[static_cast<size_t>(k)] <= want4 * (1 + 1e-12)) {
      cum += per_layer[static_cast<size_t>(k)];
      ++k;
    }
  }
  auto avg = [&](double p4) { return free_total > 0 ? 2.0 + 2.0 * p4 / free_total : B; };
  std::vector<std::string> split;
  if (free_total > 0 && k < L && std::fabs(avg(cum) - B) > 0.05) {
    const double whole_next = cum + per_layer[static_cast<size_t>(k)];
    if (std::fabs(avg(whole_next) - B) <= 0.05) {
      cum = whole_next;
      ++k;
    } else {
      double best = std::fabs(cum - want4), acc = cum;
      size_t take = 0;
      const auto& gs = groups[static_cast<size_t>(k)];
      for (size_t g = 0; g < gs.size(); ++g) {
        acc += gs[g].second;
        if (std::fabs(acc - want4) < best) best = std::fabs(acc - want4), take = g + 1;
      }
      for (size_t g = 0; g < take; ++g) split.push_back(gs[g].first);
    }
  }
  quant::BitPlan plan;
  if (k > 0) plan.add(quant::PlanRule{0, k - 1, {}, 4});
  if (k < L || L == 0) plan.add(quant::PlanRule{k, -1, {}, 2});
  if (!split.empty()) plan.add(quant::PlanRule{k, k, split, 4});
  for (const auto& r : user) plan.add(r);
  plan.resolve(L, quant::supported_bits(s.quant));
  return plan;
}

// The spec of every target, after checking that LoftQ can run on it.
void assign_bits(TargetPlan& tp, const model::Checkpoint& ckpt, const LoftqSettings& s) {
  double bits_sum = 0, params = 0;
  for (const auto& [shard, t] : ckpt.all_tensors()) {
    auto it = tp.by_tensor.find(t->name);
    if (it == tp.by_tensor.end()) continue;
    Target& tg = it->second;
    const std::string where = ckpt.shard(shard).path().string() + ": tensor '" + t->name + "'";
    if (!model::is_float_dtype(t->dtype))
      throw FormatError(where + ": target weight has dtype " +
                        std::string(model::dtype_name(t->dtype)) + " (F32, F16 or BF16 expected)");
    const auto bits = tp.plan.bits_for(tg.layer, model::module_leaf(t->name));
    if (!bits)
      throw std::invalid_argument("bit plan '" + tp.plan.to_string() +
                                  "' gives no bits for layer " +
                                  std::to_string(tg.layer.value_or(-1)) + " (" + t->name + ")");
    tg.spec = quant::QuantSpec{s.quant, *bits, s.block_size};
    try {
      quant::check_spec(tg.spec, t->numel());
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(where + ": " + e.what());
    }
    bits_sum += *bits * static_cast<double>(t->numel());
    params += static_cast<double>(t->numel());
  }
  if (s.plan.average_bits()) {
    tp.avg_bits_requested = s.plan.average_bits();
    tp.avg_overrides = !s.plan.rules().empty();
    tp.avg_bits_achieved = params > 0 ? bits_sum / params : 0.0;
  }
}

// llm_int8_skip_modules (by leaf: bitsandbytes skips a module whose own name is listed, and
// everything under a listed name): needed when something the loader would quantize is left
// out; it replaces the loader's default, so the heads go in too.
void skip_list(TargetPlan& tp) {
  const bool task_extra = std::any_of(tp.arch.never.begin(), tp.arch.never.end(),
                                      [](const auto& n) { return n.kind == NeverKind::TaskExtra; });
  if (tp.left_out.empty() && !task_extra) return;
  auto add = [&](const std::string& m) {
    if (std::find(tp.skip_modules.begin(), tp.skip_modules.end(), m) == tp.skip_modules.end())
      tp.skip_modules.push_back(m);
  };
  for (const auto& n : tp.arch.never)
    if (n.kind == NeverKind::Head || n.kind == NeverKind::TaskExtra) add(n.module);
  for (const auto& l : tp.left_out) add(l.skip_name);
}

void warn_left_out(TargetPlan& tp) {
  std::vector<std::string> order;
  std::map<std::string, std::pair<int, const LeftOut*>> by_leaf;
  for (const auto& l : tp.left_out) {
    const std::string leaf = model::module_leaf(l.module + ".weight");
    auto [it, fresh] = by_leaf.emplace(leaf, std::make_pair(0, &l));
    if (fresh) order.push_back(leaf);
    ++it->second.first;
  }
  for (const auto& leaf : order) {
    const auto& [n, l] = by_leaf[leaf];
    tp.warnings.push_back(std::to_string(n) + " weight(s) '" + leaf + "' (e.g. " + l->tensor +
                          (l->in_blocks ? ", inside the blocks" : "") +
                          ") get no LoftQ correction and stay in full precision "
                          "(llm_int8_skip_modules): " +
                          l->reason);
  }
}

}  // namespace

TargetPlan plan_targets(const fs::path& model_dir, const json& config,
                        const model::Checkpoint& ckpt, const LoftqSettings& s) {
  TargetPlan tp;
  tp.config = config;
  tp.model_type = tp.config["model_type"].get<std::string>();
  std::vector<std::string> names;
  for (const auto& [shard, t] : ckpt.all_tensors()) names.push_back(t->name);
  if (const Architecture* a = model::find_architecture(tp.model_type)) {
    tp.arch = *a;
  } else if (s.target_modules.empty()) {
    throw std::invalid_argument(unknown_type_message(model_dir, tp.model_type, ckpt));
  } else {
    tp.arch = model::generic_architecture(tp.model_type, tp.config, names);
    tp.registered = false;
  }
  tp.base_class_save = model::is_base_class_save(tp.arch, names);
  const std::vector<Seen> tensors = view(ckpt, tp.arch, tp.base_class_save);
  tp.stacks = check_stacks(model_dir, tp.arch, tp.config, tensors);
  for (const auto& st : tp.stacks) tp.num_layers += st.layers;

  const bool user = !s.target_modules.empty();
  const std::vector<std::string>& targets = user ? s.target_modules : tp.arch.targets;
  pick_targets(tp, tensors, targets, user);
  if (user) check_unmatched(tp, tensors, targets, model_dir);
  if (tp.by_tensor.empty())
    throw std::invalid_argument(model_dir.string() + ": no tensor matches the target modules");
  for (const auto& [name, tg] : tp.by_tensor) tp.fan_in_fan_out |= tg.conv1d;

  if (s.plan.average_bits() && !s.plan.resolved()) {
    tp.plan = resolve_average(tp, s, ckpt);
  } else {
    tp.plan = s.plan;
    tp.plan.resolve(tp.num_layers, quant::supported_bits(s.quant));
  }
  assign_bits(tp, ckpt, s);
  skip_list(tp);
  warn_left_out(tp);
  return tp;
}

}  // namespace loftqd::convert::detail
