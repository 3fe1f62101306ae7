// Wall time since construction on the steady clock: a step's, a job's or a call's duration.
#pragma once

#include <chrono>
#include <string>

namespace loftqd::common {

class Stopwatch {
 public:
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  }
  std::string str() const { return std::to_string(seconds()); }

 private:
  std::chrono::steady_clock::time_point t0_ = std::chrono::steady_clock::now();
};

}  // namespace loftqd::common
