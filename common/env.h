// The environment, read one way by every command: the Hub's own variables (HF_ENDPOINT,
// HF_TOKEN, HF_HOME, HF_HUB_OFFLINE) as huggingface_hub reads them. Lookups take an optional
// function so tests can pass an environment of their own.
#pragma once

#include <filesystem>
#include <functional>
#include <optional>
#include <string>

namespace loftqd::common {

// Returns a variable's value, nullopt when it is unset or empty.
using EnvLookup = std::function<std::optional<std::string>(const char* name)>;

// `name` from `lookup` (default: the process environment); nullopt when unset or empty.
std::optional<std::string> env(const char* name, const EnvLookup& lookup = {});
// A boolean variable as huggingface_hub reads them: 1, true, yes, on (any case) are true.
bool env_flag(const char* name, const EnvLookup& lookup = {});

struct HubEnv {
  std::optional<std::string> endpoint;  // HF_ENDPOINT, trailing '/' removed
  std::optional<std::string> token;     // HF_TOKEN, else the first line of $HF_HOME/token
  std::filesystem::path hf_home;        // HF_HOME, else $XDG_CACHE_HOME/huggingface, else
                                        // ~/.cache/huggingface (empty when HOME is unset too)
  bool offline = false;                 // HF_HUB_OFFLINE: no network request at all
};
HubEnv hub_env(const EnvLookup& lookup = {});

}  // namespace loftqd::common
