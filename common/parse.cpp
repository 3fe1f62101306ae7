#include "common/parse.h"

#include <cctype>
#include <cmath>
#include <stdexcept>
#include <string>

#include "common/strings.h"

namespace loftqd::common {

const char* const kSizeExample = "a size such as 10G, 512MiB, 1GB or 4096 (bytes)";

namespace {

// Multiplier for a unit, 0 when unknown.
double unit_multiplier(const std::string& unit) {
  const std::string u = lower(unit);
  if (u.empty() || u == "b") return 1;
  static const char kUnits[] = "kmgt";
  for (int i = 0; i < 4; ++i) {
    const std::string p(1, kUnits[i]);
    const double bin = std::pow(1024.0, i + 1), dec = std::pow(1000.0, i + 1);
    if (u == p || u == p + "ib") return bin;
    if (u == p + "b") return dec;
  }
  return 0;
}

// Parses `s` once: the byte count, or nullopt with the reason in `why`.
std::optional<uint64_t> read_size(std::string_view s, std::string& why) {
  const std::string str = trim(s);
  size_t end = 0;
  while (end < str.size() &&
         (std::isdigit(static_cast<unsigned char>(str[end])) || str[end] == '.'))
    ++end;
  double v = 0;
  try {
    size_t used = 0;
    if (end > 0) v = std::stod(str.substr(0, end), &used);
    if (end == 0 || used != end) {
      why = "'" + str + "' is not " + kSizeExample;
      return std::nullopt;
    }
  } catch (const std::exception&) {
    why = "'" + str + "' is not " + kSizeExample;
    return std::nullopt;
  }
  const double mult = unit_multiplier(trim(str.substr(end)));
  if (mult == 0) {
    why = "'" + str +
          "' has an unknown unit (K, M, G, T and KiB… are powers of 1024; KB, MB, GB, TB "
          "powers of 1000)";
    return std::nullopt;
  }
  const double bytes = v * mult;
  if (!std::isfinite(bytes) || bytes >= 18446744073709551616.0) {
    why = "'" + str + "' is too large";
    return std::nullopt;
  }
  return static_cast<uint64_t>(bytes);
}

}  // namespace

std::string size_problem(std::string_view s) {
  std::string why;
  return read_size(s, why) ? "" : why;
}

std::optional<uint64_t> parse_size(std::string_view s) {
  std::string why;
  return read_size(s, why);
}

uint64_t parse_size_or_throw(std::string_view what, std::string_view s) {
  if (auto v = parse_size(s)) return *v;
  throw std::invalid_argument(std::string(what) + ": " + size_problem(s));
}

std::optional<int64_t> parse_duration(std::string_view s) {
  const std::string str = trim(s);
  if (str.empty()) return std::nullopt;
  if (str.find_first_not_of("0123456789") == std::string::npos) {
    if (str.size() > 12) return std::nullopt;
    const int64_t v = std::stoll(str);
    return v > 0 ? std::optional<int64_t>(v) : std::nullopt;
  }
  size_t pos = 0;
  int64_t total = 0;
  while (pos < str.size()) {
    size_t end = pos;
    while (end < str.size() && std::isdigit(static_cast<unsigned char>(str[end]))) ++end;
    if (end == pos || end == str.size() || end - pos > 9) return std::nullopt;
    const int64_t v = std::stoll(str.substr(pos, end - pos));
    const char unit = str[end];
    const int64_t mul = unit == 's'   ? 1
                        : unit == 'm' ? 60
                        : unit == 'h' ? 3600
                        : unit == 'd' ? 86400
                                      : 0;
    if (mul == 0) return std::nullopt;
    total += v * mul;
    pos = end + 1;
  }
  return total > 0 ? std::optional<int64_t>(total) : std::nullopt;
}

}  // namespace loftqd::common
