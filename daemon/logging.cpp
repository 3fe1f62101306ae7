#include "daemon/logging.h"

#include <spdlog/pattern_formatter.h>
#include <spdlog/spdlog.h>

#include <ctime>
#include <memory>
#include <stdexcept>

namespace loftqd::daemon {

namespace {

constexpr const char* kTextPattern = "%Y-%m-%dT%H:%M:%S.%e%z %^%l%$ %v";

// "2026-12-01T10:02:43.123+00:00".
std::string iso_time(const spdlog::log_clock::time_point& tp) {
  const auto secs = std::chrono::time_point_cast<std::chrono::seconds>(tp);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(tp - secs).count();
  const std::time_t t = spdlog::log_clock::to_time_t(tp);
  std::tm tm{};
  ::localtime_r(&t, &tm);
  char buf[64], zone[8];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  std::strftime(zone, sizeof zone, "%z", &tm);  // +0000
  std::string z = zone;
  if (z.size() == 5) z.insert(3, ":");
  char out[96];
  std::snprintf(out, sizeof out, "%s.%03d%s", buf, static_cast<int>(ms), z.c_str());
  return out;
}

class JsonFormatter : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    const auto lvl = spdlog::level::to_string_view(msg.level);
    const std::string line =
        log_line_json(iso_time(msg.time), std::string_view(lvl.data(), lvl.size()),
                      std::string_view(msg.payload.data(), msg.payload.size()))
            .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) +
        "\n";
    dest.append(line.data(), line.data() + line.size());
  }
  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<JsonFormatter>();
  }
};

}  // namespace

nlohmann::json log_line_json(std::string_view time, std::string_view level, std::string_view msg) {
  nlohmann::json j = {{"time", time}, {"level", level}, {"msg", msg}};
  // key=value and key="quoted value" tokens; a token without '=' ends nothing (it is text).
  size_t i = 0;
  while (i < msg.size()) {
    while (i < msg.size() && msg[i] == ' ') ++i;
    size_t k = i;
    while (k < msg.size() && msg[k] != ' ' && msg[k] != '=') ++k;
    if (k >= msg.size() || msg[k] != '=' || k == i) {
      while (i < msg.size() && msg[i] != ' ') ++i;  // plain word
      continue;
    }
    const std::string key(msg.substr(i, k - i));
    size_t v = k + 1, end;
    std::string value;
    if (v < msg.size() && msg[v] == '"') {
      end = msg.find('"', v + 1);
      if (end == std::string_view::npos) end = msg.size();
      value = std::string(msg.substr(v + 1, end - v - 1));
      i = end + 1;
    } else {
      end = msg.find(' ', v);
      if (end == std::string_view::npos) end = msg.size();
      value = std::string(msg.substr(v, end - v));
      i = end;
    }
    if (key == "seconds") {
      try {
        j["duration_s"] = std::stod(value);
      } catch (const std::exception&) {
        j["duration_s"] = value;
      }
    } else if (key == "job") {
      try {
        j["job"] = std::stoll(value);
      } catch (const std::exception&) {
        j["job"] = value;
      }
    } else if (!j.contains(key)) {
      j[key] = value;
    }
  }
  return j;
}

void set_log_format(const std::string& format) {
  if (format == "text")
    spdlog::set_formatter(std::make_unique<spdlog::pattern_formatter>(kTextPattern));
  else if (format == "json")
    spdlog::set_formatter(std::make_unique<JsonFormatter>());
  else
    throw std::invalid_argument("log_format must be \"text\" or \"json\" (got \"" + format + "\")");
}

std::vector<std::string> RepeatFilter::flush() {
  std::vector<std::string> out;
  if (repeats_ > 0)
    out.push_back("(previous line repeated " + std::to_string(repeats_) +
                  (repeats_ == 1 ? " time: " : " times: ") + last_ + ")");
  last_.clear();
  repeats_ = 0;
  return out;
}

std::vector<std::string> RepeatFilter::next(const std::string& line) {
  if (!last_.empty() && line == last_) {
    ++repeats_;
    return {};
  }
  std::vector<std::string> out = flush();
  out.push_back(line);
  last_ = line;
  return out;
}

}  // namespace loftqd::daemon
