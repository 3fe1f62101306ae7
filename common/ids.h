// Validation of the names that reach the disk or a URL: repo ids, repo file paths, revisions,
// hex digests. One rule each, used by the config, the CLI, the store, the client and the mirror.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace loftqd::common {

// Why `path` is not a safe repo file path, or nullopt when it is: POSIX, relative, no empty,
// "." or ".." component, no ".git" component, no NUL, backslash or control character.
std::optional<std::string> path_problem(std::string_view path);
// Same for a repo id ("name" or "org/name", [A-Za-z0-9._-], no "--" or "..").
std::optional<std::string> repo_id_problem(std::string_view repo_id);
// Same for a revision stored under refs/ (a branch or tag name; "refs/pr/1" allowed).
std::optional<std::string> revision_problem(std::string_view revision);

bool is_sha1_hex(std::string_view s);    // 40 lowercase hex digits
bool is_sha256_hex(std::string_view s);  // 64 lowercase hex digits

// The one message for a refused repo id: "invalid repo id 'ID': WHY", or "" when it is valid.
// `namespaced`: an org is required ("org/name"), as for watched and published repos.
std::string repo_id_error(std::string_view repo_id, bool namespaced = false);

// Same for a repo id that must be namespaced ("org/name"), as watched and published repos are.
std::optional<std::string> namespaced_repo_id_problem(std::string_view repo_id);

}  // namespace loftqd::common
