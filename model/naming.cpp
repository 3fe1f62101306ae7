#include "model/naming.h"

#include <algorithm>

#include "common/strings.h"
#include "model/registry.h"

namespace loftqd::model {

std::optional<int> layer_index(std::string_view name) {
  const auto parts = common::split(name, '.');
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    const auto& p = parts[i];
    if ((p == "layers" || p == "layer" || p == "h" || p == "block" || p == "blocks") &&
        common::all_digits(parts[i + 1]) && parts[i + 1].size() < 9)
      return std::stoi(parts[i + 1]);
  }
  return std::nullopt;
}

std::string module_path(std::string_view name) {
  const size_t dot = name.rfind('.');
  return std::string(dot == std::string_view::npos ? name : name.substr(0, dot));
}

std::string module_leaf(std::string_view name) {
  const std::string m = module_path(name);
  const size_t dot = m.rfind('.');
  return dot == std::string::npos ? m : m.substr(dot + 1);
}

std::vector<std::string> default_target_modules(std::string_view t) {
  const Architecture* a = find_architecture(t);
  return a ? a->targets : std::vector<std::string>{};
}

std::string default_task_type(std::string_view t) {
  const Architecture* a = find_architecture(t);
  return a ? a->task_type : "CAUSAL_LM";
}

bool is_target_weight(std::string_view name, const std::vector<std::string>& targets) {
  if (name.size() < 7 || name.substr(name.size() - 7) != ".weight") return false;
  const std::string m = module_path(name);
  for (const auto& t : targets) {
    if (m == t) return true;
    if (m.size() > t.size() && m.compare(m.size() - t.size(), t.size(), t) == 0 &&
        m[m.size() - t.size() - 1] == '.')
      return true;
  }
  return false;
}

}  // namespace loftqd::model
