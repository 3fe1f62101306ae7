// Command-line pieces shared by the benchmark programs (bench_loftq, bench_gpu): a wall clock,
// weight shapes and strict integer parsing. Errors go to the program's own usage() (`fail`).
#pragma once

#include <algorithm>
#include <chrono>
#include <climits>
#include <stdexcept>
#include <string>
#include <vector>

namespace loftqd::bench {

using Clock = std::chrono::steady_clock;

inline double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

struct Shape {
  int out = 0, in = 0;
  std::string str() const { return std::to_string(out) + "x" + std::to_string(in); }
};

using Fail = void (*)(const std::string&);  // [[noreturn]]: prints usage and exits

// The whole of `v` as an integer in [min, INT_MAX].
inline int parse_int(const std::string& flag, const std::string& v, Fail fail, int min = INT_MIN) {
  long long x = 0;
  try {
    size_t pos = 0;
    x = std::stoll(v, &pos);
    if (pos != v.size()) throw std::invalid_argument(v);
  } catch (const std::exception&) {
    x = LLONG_MIN;
  }
  if (x < min || x > INT_MAX) {
    fail(flag + " expects " + (min == 0 ? "a non-negative integer" : "an integer") + ", got '" + v +
         "'");
    throw std::logic_error("fail() returned");  // not reached: fail exits
  }
  return static_cast<int>(x);
}

// "OUTxIN,OUTxIN,..." with positive dimensions.
inline std::vector<Shape> parse_shapes(const std::string& s, Fail fail) {
  std::vector<Shape> out;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t comma = std::min(s.find(',', start), s.size());
    const std::string item = s.substr(start, comma - start);
    const size_t x = item.find('x');
    if (x == std::string::npos) fail("--shapes: expected OUTxIN, got '" + item + "'");
    const Shape sh{parse_int("--shapes", item.substr(0, x), fail),
                   parse_int("--shapes", item.substr(x + 1), fail)};
    if (sh.out <= 0 || sh.in <= 0) fail("--shapes: dimensions must be positive in '" + item + "'");
    out.push_back(sh);
    start = comma + 1;
  }
  return out;
}

}  // namespace loftqd::bench
