#include "convert/settings.h"

#include <cmath>
#include <stdexcept>

namespace loftqd::convert {

using nlohmann::json;

namespace {

std::string range_problem(int64_t v, int64_t lo, int64_t hi) {
  if (v < lo) return "must be >= " + std::to_string(lo);
  if (v > hi) return "must be <= " + std::to_string(hi);
  return "";
}

// The plan's uniform bit width, when it is one rule for every layer and module.
std::optional<int> uniform_bits(const quant::BitPlan& p) {
  const auto& r = p.rules();
  if (p.average_bits() || r.size() != 1 || r[0].first >= 0 || !r[0].modules.empty())
    return std::nullopt;
  return r[0].bits;
}

}  // namespace

json LoftqSettings::to_json() const {
  json j = {{"rank", rank},
            {"iters", iters},
            {"quant", quant::method_name(quant)},
            {"block_size", block_size},
            {"svd", quant::svd_mode_name(svd)},
            {"target_modules", target_modules}};
  j["lora_alpha"] = lora_alpha ? json(*lora_alpha) : json(nullptr);
  if (lora_dropout != 0.0) j["lora_dropout"] = lora_dropout;
  if (auto b = uniform_bits(plan)) {
    j["bits"] = *b;
  } else if (auto avg = plan.average_bits(); avg && !plan.resolved()) {
    j["avg_bits"] = *avg;
    if (!plan.rules().empty()) j["overrides"] = plan.to_json();
  } else {
    j["bit_plan"] = plan.to_json();
  }
  return j;
}

std::string rank_problem(int64_t rank) {
  return range_problem(rank, 1, 65536);
}
std::string iters_problem(int64_t iters) {
  return range_problem(iters, 1, 1000);
}
std::string block_size_problem(int64_t block_size) {
  return range_problem(block_size, 1, int64_t{1} << 20);
}
std::string lora_alpha_problem(double alpha) {
  return std::isfinite(alpha) && alpha > 0 ? "" : "must be a number > 0";
}
std::string lora_dropout_problem(double p) {
  return std::isfinite(p) && p >= 0 && p < 1 ? "" : "must be in [0, 1)";
}
std::string avg_bits_problem(double avg_bits) {
  return avg_bits >= 2.0 && avg_bits <= 4.0 ? "" : "must be a number in [2, 4]";
}

std::string plan_problem(const quant::BitPlan& plan, quant::QuantMethod method) {
  try {
    plan.validate(quant::supported_bits(method));
    return "";
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
}

std::vector<SettingProblem> validate(const LoftqSettings& s) {
  std::vector<SettingProblem> out;
  auto add = [&](const char* key, std::string msg) {
    if (!msg.empty()) out.push_back({key, std::move(msg)});
  };
  add("rank", rank_problem(s.rank));
  add("iters", iters_problem(s.iters));
  add("block_size", block_size_problem(s.block_size));
  if (s.lora_alpha) add("lora_alpha", lora_alpha_problem(*s.lora_alpha));
  add("lora_dropout", lora_dropout_problem(s.lora_dropout));
  if (auto avg = s.plan.average_bits()) add("avg_bits", avg_bits_problem(*avg));
  add(uniform_bits(s.plan)    ? "bits"
      : s.plan.average_bits() ? "avg_bits"
                              : "bit_plan",
      plan_problem(s.plan, s.quant));
  for (const auto& t : s.target_modules)
    if (t.empty()) add("target_modules", "module names must not be empty");
  return out;
}

std::string flag_for_key(const std::string& key) {
  std::string f = "--" + key;
  for (auto& c : f)
    if (c == '_') c = '-';
  return f;
}

void check(const LoftqSettings& s) {
  const auto problems = validate(s);
  if (problems.empty()) return;
  std::string msg;
  for (const auto& p : problems)
    msg += (msg.empty() ? "" : "; ") + flag_for_key(p.key) + ": " + p.message;
  throw std::invalid_argument(msg);
}

quant::LoftqOptions loftq_options(const LoftqSettings& s, int bits) {
  quant::LoftqOptions o;
  o.rank = s.rank;
  o.iters = s.iters;
  o.quant = quant::QuantSpec{s.quant, bits, s.block_size};
  o.svd = s.svd;
  return o;
}

}  // namespace loftqd::convert
