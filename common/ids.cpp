#include "common/ids.h"

#include <algorithm>
#include <cctype>

#include "common/strings.h"

namespace loftqd::common {

namespace {

bool all_hex(std::string_view s) {
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

}  // namespace

std::optional<std::string> path_problem(std::string_view path) {
  if (path.empty()) return "empty path";
  if (path.size() > 4096) return "path longer than 4096 bytes";
  for (char c : path) {
    if (c == '\0') return "NUL byte in path";
    if (c == '\\') return "backslash in path";
    if (static_cast<unsigned char>(c) < 0x20) return "control character in path";
  }
  if (path.front() == '/') return "absolute path";
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    std::string_view comp = path.substr(start, end - start);
    if (comp.empty()) return "empty path component";
    if (comp == ".") return "'.' path component";
    if (comp == "..") return "'..' path component";
    if (lower(comp) == ".git") return "'.git' path component";
    start = end + 1;
  }
  return std::nullopt;
}

std::optional<std::string> repo_id_problem(std::string_view id) {
  if (id.empty()) return "empty repo id";
  if (id.size() > 96) return "repo id longer than 96 characters";
  size_t slash = id.find('/');
  if (slash != std::string_view::npos && id.find('/', slash + 1) != std::string_view::npos)
    return "repo id has more than one '/'";
  auto part_ok = [](std::string_view p) -> std::optional<std::string> {
    if (p.empty()) return "empty name";
    for (char c : p)
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.')
        return std::string("character '") + c + "' not allowed";
    if (p.front() == '.' || p.front() == '-' || p.back() == '.' || p.back() == '-')
      return "name starts or ends with '.' or '-'";
    if (p.find("--") != std::string_view::npos || p.find("..") != std::string_view::npos)
      return "'--' and '..' are not allowed";
    return std::nullopt;
  };
  if (slash == std::string_view::npos) return part_ok(id);
  if (auto p = part_ok(id.substr(0, slash))) return p;
  return part_ok(id.substr(slash + 1));
}

std::optional<std::string> revision_problem(std::string_view rev) {
  if (rev.empty()) return "empty revision";
  if (rev.size() > 255) return "revision longer than 255 bytes";
  if (auto p = path_problem(rev)) return p;
  for (char c : rev)
    if (c == ' ' || c == '~' || c == '^' || c == ':' || c == '?' || c == '*' || c == '[')
      return std::string("character '") + c + "' not allowed in a revision";
  if (rev.find(".lock") != std::string_view::npos && rev.ends_with(".lock"))
    return "revision ends with .lock";
  return std::nullopt;
}

bool is_sha1_hex(std::string_view s) {
  return s.size() == 40 && all_hex(s);
}
bool is_sha256_hex(std::string_view s) {
  return s.size() == 64 && all_hex(s);
}

std::optional<std::string> namespaced_repo_id_problem(std::string_view id) {
  if (auto p = repo_id_problem(id)) return p;
  if (id.find('/') == std::string_view::npos)
    return "repo id has no organization (expected org/name)";
  return std::nullopt;
}

std::string repo_id_error(std::string_view id, bool namespaced) {
  const auto why = namespaced ? namespaced_repo_id_problem(id) : repo_id_problem(id);
  return why ? "invalid repo id '" + std::string(id) + "': " + *why : "";
}

}  // namespace loftqd::common
