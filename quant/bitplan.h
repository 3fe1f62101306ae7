// Per-layer bit plans (DESIGN §4 "Bit plan"). Layer indices come from model/naming.h.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace loftqd::quant {

// One rule: layers [first, last] (last = -1: open-ended; first = -1: every layer, and tensors
// without a layer index too), optionally restricted to modules, gets `bits`.
struct PlanRule {
  int first = -1;
  int last = -1;
  std::vector<std::string> modules;
  int bits = 4;
};

// A bit plan. Layer rules (no modules) must not overlap; module rules override layer rules for
// their modules and must not overlap each other for a same module.
class BitPlan {
 public:
  static BitPlan uniform(int bits);
  // CLI form: "0-7:4,8-:2", "*:4", "down_proj@0-3:4,12:2", "gate_proj+up_proj@*:4".
  static BitPlan parse(std::string_view spec);
  // The LoftQ authors' mixed precision: first floor(L*(b-2)/2) layers 4-bit, the rest 2-bit.
  // Resolved against the layer count when the model is known.
  static BitPlan average(double avg_bits);
  // Config form: [{"layers": "0-7", "bits": 4}, {"layers": "8-", "bits": 2},
  //               {"modules": ["down_proj"], "bits": 4}]. std::invalid_argument naming the index.
  static BitPlan from_json(const nlohmann::json& j);

  // Adds rules (e.g. per-module overrides after --avg-bits). Validated by resolve().
  void add(PlanRule r) { rules_.push_back(std::move(r)); }

  // Checks what does not depend on the model: every rule's bits in `allowed`, no two rules for
  // the same (layer, module), and only module overrides on top of an average plan.
  // std::invalid_argument with a clear message otherwise.
  void validate(const std::set<int>& allowed_bits) const;
  // validate(), then fixes an average plan for the model's `num_layers` (once per job).
  void resolve(int num_layers, const std::set<int>& allowed_bits);
  bool resolved() const { return resolved_; }

  // Bits for a tensor with this layer index (nullopt = unindexed) and module leaf. Unindexed
  // targets (e.g. bert.pooler.dense) take the highest bits of the plan unless a rule covers
  // every layer (`*`) or the module. nullopt when no rule covers the layer.
  std::optional<int> bits_for(std::optional<int> layer, std::string_view module) const;

  // Short label for repo names ({plan}): "4bit" or "2bit" when every rule has the same bits,
  // "mixed" otherwise, "avg3bit" / "avg2.5bit" for an average plan (overrides included).
  std::string label() const;
  // The plan in config form, after resolve().
  nlohmann::json to_json() const;
  std::string to_string() const;  // CLI form
  const std::vector<PlanRule>& rules() const { return rules_; }
  std::optional<double> average_bits() const { return avg_; }

 private:
  std::vector<PlanRule> rules_;
  std::optional<double> avg_;
  bool resolved_ = false;
};

}  // namespace loftqd::quant
