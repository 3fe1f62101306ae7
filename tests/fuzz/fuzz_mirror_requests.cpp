// libFuzzer: the mirror's request parsing that needs no socket (mirror/write_api.cpp,
// mirror/read_api.cpp): NDJSON commit bodies are parsed and validated completely (a problem or
// a payload whose every member has the type the commit handler reads, so applying it cannot
// throw), and Range headers are planned against a file size (a Partial range lies inside it).
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "mirror/internal.h"

namespace mirror = loftqd::mirror;
using nlohmann::json;

namespace {

// Reads a validated payload the way the handler does: these must not throw.
void read_like_the_handler(const json& header, const std::vector<json>& ops) {
  (void)header.value("summary", "");
  (void)header.value("parentCommit", "");
  for (const auto& op : ops) {
    // Mirror::Impl::apply_commit_op reads each kind's own members only: a "file" op's stray
    // "size" is never read, so it is not validated either.
    json v = op.value("value", json::object());
    const std::string key = op.value("key", "");
    (void)v.value("path", "");
    if (key == "file") {
      (void)v.value("encoding", "base64");
      (void)v.value("content", "");
    } else if (key == "lfsFile") {
      (void)v.value("oid", "");
      (void)v.value("size", uint64_t{0});
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string body(reinterpret_cast<const char*>(data), size);
  json header;
  std::vector<json> ops;
  if (!mirror::parse_commit_payload(body, header, ops)) read_like_the_handler(header, ops);
  for (uint64_t file_size : {uint64_t{0}, uint64_t{1}, uint64_t{70000}, ~uint64_t{0}}) {
    auto plan = mirror::plan_range(body, file_size);
    if (plan.kind == mirror::RangePlan::Partial &&
        (plan.length == 0 || plan.offset >= file_size || plan.length > file_size - plan.offset))
      __builtin_trap();
  }
  return 0;
}
