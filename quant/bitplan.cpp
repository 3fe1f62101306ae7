#include "quant/bitplan.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <sstream>
#include <stdexcept>

#include "common/strings.h"

namespace loftqd::quant {

namespace {

int parse_int(std::string_view s, const std::string& what) {
  int v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (!common::all_digits(s) || ec != std::errc() || p != s.data() + s.size())
    throw std::invalid_argument(what + ": '" + std::string(s) + "' is not a non-negative integer");
  return v;
}

// "*", "3", "0-7", "8-" -> (first, last); -1 marks "every layer" / "open end".
std::pair<int, int> parse_range(std::string_view r, const std::string& what) {
  if (r == "*") return {-1, -1};
  const size_t dash = r.find('-');
  if (dash == std::string_view::npos) {
    const int v = parse_int(r, what);
    return {v, v};
  }
  const int first = parse_int(r.substr(0, dash), what);
  if (dash + 1 == r.size()) return {first, -1};
  const int last = parse_int(r.substr(dash + 1), what);
  if (last < first)
    throw std::invalid_argument(what + ": range '" + std::string(r) + "' ends before it starts");
  return {first, last};
}

std::string range_string(const PlanRule& r) {
  if (r.first < 0) return "*";
  if (r.last < 0) return std::to_string(r.first) + "-";
  if (r.last == r.first) return std::to_string(r.first);
  return std::to_string(r.first) + "-" + std::to_string(r.last);
}

bool overlaps(const PlanRule& a, const PlanRule& b) {
  if (a.first < 0 || b.first < 0) return true;
  const long a_end = a.last < 0 ? long(1) << 40 : a.last;
  const long b_end = b.last < 0 ? long(1) << 40 : b.last;
  return a.first <= b_end && b.first <= a_end;
}

bool covers(const PlanRule& r, int layer) {
  if (r.first < 0) return true;
  return layer >= r.first && (r.last < 0 || layer <= r.last);
}

std::string fmt_bits(double b) {
  std::ostringstream os;
  os << b;
  return os.str();
}

}  // namespace

BitPlan BitPlan::uniform(int bits) {
  BitPlan p;
  p.rules_.push_back(PlanRule{-1, -1, {}, bits});
  return p;
}

BitPlan BitPlan::parse(std::string_view spec) {
  BitPlan p;
  if (spec.empty()) throw std::invalid_argument("bit plan is empty");
  for (const auto& item : common::split(spec, ',')) {
    const std::string what = "bit plan item '" + item + "'";
    const size_t colon = item.rfind(':');
    if (colon == std::string::npos) throw std::invalid_argument(what + ": expected RANGE:BITS");
    PlanRule r;
    r.bits = parse_int(std::string_view(item).substr(colon + 1), what);
    std::string_view range = std::string_view(item).substr(0, colon);
    const size_t at = range.find('@');
    if (at != std::string_view::npos) {
      r.modules = common::split(range.substr(0, at), '+');
      for (const auto& m : r.modules)
        if (m.empty()) throw std::invalid_argument(what + ": empty module name");
      range = range.substr(at + 1);
    }
    std::tie(r.first, r.last) = parse_range(range, what);
    p.rules_.push_back(std::move(r));
  }
  return p;
}

BitPlan BitPlan::average(double avg_bits) {
  if (!(avg_bits >= 2.0 && avg_bits <= 4.0))
    throw std::invalid_argument("average bits must be in [2, 4], got " + fmt_bits(avg_bits));
  BitPlan p;
  p.avg_ = avg_bits;
  return p;
}

BitPlan BitPlan::from_json(const nlohmann::json& j) {
  if (!j.is_array()) throw std::invalid_argument("bit plan: expected an array of rules");
  BitPlan p;
  for (size_t i = 0; i < j.size(); ++i) {
    const std::string what = "bit plan rule " + std::to_string(i);
    const auto& o = j[i];
    if (!o.is_object()) throw std::invalid_argument(what + ": expected an object");
    PlanRule r;
    for (auto it = o.begin(); it != o.end(); ++it)
      if (it.key() != "layers" && it.key() != "bits" && it.key() != "modules")
        throw std::invalid_argument(what + ": unknown key '" + it.key() + "'");
    if (!o.contains("bits") || !o["bits"].is_number_integer())
      throw std::invalid_argument(what + ": 'bits' must be an integer");
    r.bits = o["bits"].get<int>();
    if (o.contains("layers")) {
      if (o["layers"].is_number_integer()) {
        r.first = r.last = o["layers"].get<int>();
        if (r.first < 0) throw std::invalid_argument(what + ": 'layers' must be >= 0");
      } else if (o["layers"].is_string()) {
        std::tie(r.first, r.last) = parse_range(o["layers"].get<std::string>(), what + " 'layers'");
      } else {
        throw std::invalid_argument(what +
                                    ": 'layers' must be a string such as \"0-7\" or an integer");
      }
    }
    if (o.contains("modules")) {
      if (!o["modules"].is_array())
        throw std::invalid_argument(what + ": 'modules' must be an array");
      for (const auto& m : o["modules"]) {
        if (!m.is_string() || m.get<std::string>().empty())
          throw std::invalid_argument(what + ": 'modules' must hold non-empty strings");
        r.modules.push_back(m.get<std::string>());
      }
    }
    p.rules_.push_back(std::move(r));
  }
  return p;
}

namespace {

// Bits each rule uses are allowed, and no two rules claim the same (layer, module).
void check_rules(const std::vector<PlanRule>& rules, const std::set<int>& allowed) {
  for (size_t i = 0; i < rules.size(); ++i) {
    const auto& a = rules[i];
    if (!allowed.count(a.bits)) {
      std::string list;
      for (int b : allowed) list += (list.empty() ? "" : ", ") + std::to_string(b);
      throw std::invalid_argument("bit plan rule " + range_string(a) + ":" +
                                  std::to_string(a.bits) + ": " + std::to_string(a.bits) +
                                  " bits not supported (allowed: " + list + ")");
    }
    for (size_t k = 0; k < i; ++k) {
      const auto& b = rules[k];
      if (!overlaps(a, b)) continue;
      bool clash = a.modules.empty() && b.modules.empty();
      for (const auto& m : a.modules)
        clash |= std::find(b.modules.begin(), b.modules.end(), m) != b.modules.end();
      if (clash)
        throw std::invalid_argument("bit plan rules '" + range_string(b) + ":" +
                                    std::to_string(b.bits) + "' and '" + range_string(a) + ":" +
                                    std::to_string(a.bits) + "' overlap");
    }
  }
}

}  // namespace

void BitPlan::validate(const std::set<int>& allowed) const {
  if (avg_ && !resolved_) {
    for (int b : {4, 2})
      if (!allowed.count(b))
        throw std::invalid_argument("average bits " + fmt_bits(*avg_) + " needs 4- and 2-bit " +
                                    "layers, which this quantizer does not support");
    for (const auto& r : rules_)
      if (r.modules.empty())
        throw std::invalid_argument("bit plan rule " + range_string(r) + ":" +
                                    std::to_string(r.bits) +
                                    ": only module overrides (e.g. down_proj@*:4) can be combined "
                                    "with average bits");
  } else if (rules_.empty()) {
    throw std::invalid_argument("bit plan has no rules");
  }
  check_rules(rules_, allowed);
}

void BitPlan::resolve(int num_layers, const std::set<int>& allowed) {
  validate(allowed);
  if (avg_ && !resolved_) {
    const int n4 = static_cast<int>(std::floor(num_layers * (*avg_ - 2.0) / 2.0 + 1e-9));
    std::vector<PlanRule> base;
    if (n4 > 0) base.push_back(PlanRule{0, n4 - 1, {}, 4});
    if (n4 < num_layers || num_layers == 0) base.push_back(PlanRule{n4, -1, {}, 2});
    rules_.insert(rules_.begin(), base.begin(), base.end());
  }
  resolved_ = true;
  check_rules(rules_, allowed);
}

std::optional<int> BitPlan::bits_for(std::optional<int> layer, std::string_view module) const {
  auto match = [&](bool module_rules) -> std::optional<int> {
    for (const auto& r : rules_) {
      if (r.modules.empty() == module_rules) continue;
      if (module_rules && std::find(r.modules.begin(), r.modules.end(), module) == r.modules.end())
        continue;
      if (layer ? covers(r, *layer) : r.first < 0) return r.bits;
    }
    return std::nullopt;
  };
  if (auto b = match(true)) return b;
  if (auto b = match(false)) return b;
  if (!layer) {
    int best = 0;
    for (const auto& r : rules_) best = std::max(best, r.bits);
    return best > 0 ? std::optional<int>(best) : std::nullopt;
  }
  return std::nullopt;
}

std::string BitPlan::label() const {
  if (avg_) return "avg" + fmt_bits(*avg_) + "bit";
  std::set<int> bits;
  for (const auto& r : rules_) bits.insert(r.bits);
  if (bits.size() == 1) return std::to_string(*bits.begin()) + "bit";
  return "mixed";
}

nlohmann::json BitPlan::to_json() const {
  nlohmann::json j = nlohmann::json::array();
  for (const auto& r : rules_) {
    nlohmann::json o;
    o["layers"] = range_string(r);
    if (!r.modules.empty()) o["modules"] = r.modules;
    o["bits"] = r.bits;
    j.push_back(o);
  }
  return j;
}

std::string BitPlan::to_string() const {
  std::string s;
  for (const auto& r : rules_) {
    if (!s.empty()) s += ",";
    std::string mods;
    for (const auto& m : r.modules) mods += (mods.empty() ? "" : "+") + m;
    s += (mods.empty() ? "" : mods + "@") + range_string(r) + ":" + std::to_string(r.bits);
  }
  if (avg_ && !resolved_) s = "avg " + fmt_bits(*avg_) + (s.empty() ? "" : " + " + s);
  return s;
}

}  // namespace loftqd::quant
