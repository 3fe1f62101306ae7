#include "common/strings.h"

#include <algorithm>

#include <sys/random.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace loftqd::common {

std::vector<std::string> split(std::string_view s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    const size_t end = s.find(sep, start);
    out.emplace_back(s.substr(start, end == std::string_view::npos ? end : end - start));
    if (end == std::string_view::npos) break;
    start = end + 1;
  }
  return out;
}

std::string join(const std::vector<std::string>& v, std::string_view sep, size_t from, size_t to) {
  std::string r;
  for (size_t i = from; i < to && i < v.size(); ++i) {
    if (i > from) r += sep;
    r += v[i];
  }
  return r;
}

std::string trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return std::string(s.substr(b, e - b));
}

std::string lower(std::string_view s) {
  std::string r(s);
  for (auto& c : r) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return r;
}

bool all_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

std::string escape_segment(std::string_view s) {
  static const char* kHex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

std::string escape_path(std::string_view s) {
  std::string out;
  for (const auto& seg : split(s, '/')) out += escape_segment(seg) + '/';
  out.pop_back();  // split() gives at least one segment
  return out;
}

std::string random_hex(size_t n) {
  static const char* kHex = "0123456789abcdef";
  std::string bytes((n + 1) / 2, '\0');
  size_t got = 0;
  while (got < bytes.size()) {
    const ssize_t r = ::getrandom(bytes.data() + got, bytes.size() - got, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error(std::string("getrandom: ") + std::strerror(errno));
    }
    got += static_cast<size_t>(r);
  }
  std::string s;
  s.reserve(n);
  for (unsigned char b : bytes) {
    s += kHex[b >> 4];
    if (s.size() < n) s += kHex[b & 15];
  }
  s.resize(n);
  return s;
}

}  // namespace loftqd::common
