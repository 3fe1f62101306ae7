// Sizes and durations as users write them, parsed one way everywhere (config file and flags).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace loftqd::common {

// A byte size: a non-negative number (decimals allowed) and an optional unit, case-insensitive:
//   (none) or B  bytes
//   K M G T      powers of 1024 (as `dd`, `curl --limit-rate` and coreutils read them)
//   KiB MiB GiB TiB  the same, spelled out
//   KB MB GB TB  powers of 1000
// "10G" = "10GiB" = 10·2^30, "10GB" = 10^10, "1.5M" = 1572864. nullopt for anything else
// (negative, empty, unknown unit, overflow); size_problem() says why.
std::optional<uint64_t> parse_size(std::string_view s);
std::string size_problem(std::string_view s);  // "" when parse_size accepts s
// The units accepted, for error messages: "a size such as 10G, 512MiB, 1GB or 4096".
extern const char* const kSizeExample;
// parse_size() for a flag or key: std::invalid_argument "WHAT: PROBLEM" when it is not a size.
uint64_t parse_size_or_throw(std::string_view what, std::string_view s);

// A duration: "90s", "15m", "2h", "1d", combinations such as "1h30m", or a whole number of
// seconds ("600"). Must be > 0. nullopt otherwise.
std::optional<int64_t> parse_duration(std::string_view s);

}  // namespace loftqd::common
