// How loftqd's log lines look: "text" (time with its zone offset, level, message) or "json" (one
// object per line: time, level, msg, and the message's key=value fields such as repo, commit,
// job, step; seconds= becomes duration_s).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace loftqd::daemon {

// Installs the format on the default logger. std::invalid_argument for another name.
void set_log_format(const std::string& format);

// The JSON object for one line (what the json format writes, without the newline).
nlohmann::json log_line_json(std::string_view time, std::string_view level, std::string_view msg);

// Collapses a line that repeats pass after pass (an idle poll's "run: pass (poll) checked 1
// repos (0 failed), 0 jobs queued, ...") into its first occurrence; when a different line comes,
// a note says how often the previous one repeated.
class RepeatFilter {
 public:
  // What to log for `line`: nothing when it equals the previous line; else the line, preceded by
  // "(previous line repeated N times: ...)" when repeats were held back.
  std::vector<std::string> next(const std::string& line);
  // A line logged another way comes next: the note for the held-back repeats (if any), and the
  // previous line is forgotten.
  std::vector<std::string> flush();

 private:
  std::string last_;
  size_t repeats_ = 0;
};

}  // namespace loftqd::daemon
