#include "common/env.h"

#include <cstdlib>
#include <fstream>

#include "common/strings.h"

namespace fs = std::filesystem;

namespace loftqd::common {

std::optional<std::string> env(const char* name, const EnvLookup& lookup) {
  std::optional<std::string> v;
  if (lookup) {
    v = lookup(name);
  } else if (const char* e = std::getenv(name)) {
    v = e;
  }
  if (v && v->empty()) v.reset();
  return v;
}

bool env_flag(const char* name, const EnvLookup& lookup) {
  const auto v = env(name, lookup);
  if (!v) return false;
  const std::string l = lower(trim(*v));
  return l == "1" || l == "true" || l == "yes" || l == "on";
}

HubEnv hub_env(const EnvLookup& lookup) {
  HubEnv h;
  if (auto e = env("HF_ENDPOINT", lookup)) {
    std::string endpoint = trim(*e);
    while (endpoint.size() > 1 && endpoint.back() == '/') endpoint.pop_back();
    if (!endpoint.empty()) h.endpoint = endpoint;
  }
  if (auto home = env("HF_HOME", lookup))
    h.hf_home = *home;
  else if (auto xdg = env("XDG_CACHE_HOME", lookup))
    h.hf_home = fs::path(*xdg) / "huggingface";
  else if (auto user = env("HOME", lookup))
    h.hf_home = fs::path(*user) / ".cache" / "huggingface";
  if (auto t = env("HF_TOKEN", lookup); t && !trim(*t).empty()) {
    h.token = trim(*t);
  } else if (!h.hf_home.empty()) {
    std::ifstream f(h.hf_home / "token");
    std::string line;
    if (f && std::getline(f, line) && !trim(line).empty()) h.token = trim(line);
  }
  h.offline = env_flag("HF_HUB_OFFLINE", lookup);
  return h;
}

}  // namespace loftqd::common
