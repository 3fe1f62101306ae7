// LoftQ settings: what the user chooses for one conversion, parsed once from the config file or
// the CLI flags into typed values, checked by one validator per concept, and turned into the
// engine's options by one function. Everything that changes the published result is here (and
// in to_json(), which the daemon hashes); the device only changes where the work runs.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "quant/bitplan.h"
#include "quant/device.h"
#include "quant/loftq.h"
#include "quant/quantizer.h"

namespace loftqd::convert {

struct LoftqSettings {
  int rank = 64;
  int iters = 5;  // LoftQ alternating iterations T
  quant::QuantMethod quant = quant::QuantMethod::NF;
  int block_size = quant::kDefaultBlockSize;
  // Parsed, not yet resolved: an average plan is fixed against the model's layer count once per
  // job (quantize_model).
  quant::BitPlan plan = quant::BitPlan::uniform(4);
  std::vector<std::string> target_modules;  // empty: by config.json model_type
  quant::SvdMode svd = quant::SvdMode::Randomized;
  std::optional<double> lora_alpha;  // default: rank
  double lora_dropout = 0.0;
  quant::DeviceChoice device;  // where LoftQ runs; not part of the result

  double alpha() const { return lora_alpha.value_or(static_cast<double>(rank)); }
  // "4bit", "2bit", "mixed", "avg3bit" (publish_as {plan}).
  std::string plan_label() const { return plan.label(); }
  // Canonical JSON of what changes the result (keys sorted by nlohmann): rank, iters, quant,
  // block_size, svd, target_modules, lora_alpha, and one plan form: "bits" for a uniform plan,
  // "avg_bits" (+ "overrides" when module rules are added) for an average plan, else "bit_plan".
  nlohmann::json to_json() const;
};

// A problem with one setting: `key` is the config key ("rank", "bit_plan", ...); the CLI
// reports it under its flag (flag_for_key()).
struct SettingProblem {
  std::string key;
  std::string message;
};

// One validator per concept; each returns the problem, or "" when the value is fine.
std::string rank_problem(int64_t rank);              // 1 .. 65536
std::string iters_problem(int64_t iters);            // 1 .. 1000
std::string block_size_problem(int64_t block_size);  // 1 .. 2^20
std::string lora_alpha_problem(double alpha);        // > 0, finite
std::string lora_dropout_problem(double p);          // [0, 1)
std::string avg_bits_problem(double avg_bits);       // [2, 4]
// The plan against the quantizer, independent of the model (quant::BitPlan::validate).
std::string plan_problem(const quant::BitPlan& plan, quant::QuantMethod method);

// Every problem of a whole settings value (empty: valid).
std::vector<SettingProblem> validate(const LoftqSettings& s);
// std::invalid_argument listing every problem, each as "FLAG: message" (see flag_for_key).
void check(const LoftqSettings& s);
// "rank" -> "--rank", "bit_plan" -> "--bit-plan", "target_modules" -> "--target-modules".
std::string flag_for_key(const std::string& key);

// The engine's options for one layer quantized with `bits`.
quant::LoftqOptions loftq_options(const LoftqSettings& s, int bits);

}  // namespace loftqd::convert
