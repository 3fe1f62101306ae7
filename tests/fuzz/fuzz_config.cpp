// libFuzzer: the daemon's configuration (config/config.cpp): any JSON document either parses
// into a Config or is refused with ConfigError (or invalid_argument for a publish_as template),
// never a crash or an escaping JSON-library exception.
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "config/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto j = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  try {
    (void)loftqd::config::parse_config(j, "fuzz");
  } catch (const loftqd::config::ConfigError&) {
  } catch (const std::invalid_argument&) {
  }
  return 0;
}
