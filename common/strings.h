// Small string helpers shared by every library: split/join, trimming, case, URL escaping, and
// random hex tokens.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace loftqd::common {

// "a/b//c" split on '/' -> {"a", "b", "", "c"}; an empty input gives {""}.
std::vector<std::string> split(std::string_view s, char sep);
// Joins v[from, to) with `sep` (to is clamped to v.size()).
std::string join(const std::vector<std::string>& v, std::string_view sep, size_t from = 0,
                 size_t to = static_cast<size_t>(-1));
std::string trim(std::string_view s);   // ASCII whitespace at both ends
std::string lower(std::string_view s);  // ASCII lowercase
// Non-empty and only ASCII digits 0-9 (no sign, no space): a layer index, a bit count.
bool all_digits(std::string_view s);

// Percent-encodes everything but RFC 3986 unreserved characters.
std::string escape_segment(std::string_view s);
// The same, keeping '/' (a repo path inside a URL).
std::string escape_path(std::string_view s);

// `n` random lowercase hex characters from the operating system's CSPRNG (getrandom): tokens,
// temp-file suffixes. Throws std::runtime_error when the kernel cannot supply randomness.
std::string random_hex(size_t n);

}  // namespace loftqd::common
