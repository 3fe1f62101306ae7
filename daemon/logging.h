// How loftqd's log lines look: "text" (time with its zone offset, level, message) or "json" (one
// object per line: time, level, msg, and the message's key=value fields such as repo, commit,
// job, step; seconds= becomes duration_s).
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace loftqd::daemon {

// Installs the format on the default logger. std::invalid_argument for another name.
void set_log_format(const std::string& format);

// The JSON object for one line (what the json format writes, without the newline).
nlohmann::json log_line_json(std::string_view time, std::string_view level, std::string_view msg);

}  // namespace loftqd::daemon
