// libFuzzer: bit plans (quant/bitplan.cpp), both forms: the CLI spec ("0-7:4,8-:2") and, when
// the input is JSON, the config form; an accepted plan is resolved against a small model. Bad
// input is std::invalid_argument, never a crash, an overflow or an escaping JSON exception.
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string_view>

#include "quant/bitplan.h"

using loftqd::quant::BitPlan;

namespace {

void exercise(BitPlan plan) {
  try {
    plan.resolve(8, {2, 4});
  } catch (const std::invalid_argument&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view spec(reinterpret_cast<const char*>(data), size);
  try {
    exercise(BitPlan::parse(spec));
  } catch (const std::invalid_argument&) {
  }
  auto j = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  try {
    exercise(BitPlan::from_json(j));
  } catch (const std::invalid_argument&) {
  }
  return 0;
}
