// The loftqd command line: builds the app, lets each subcommand (daemon/cmd_*.cpp) register,
// parses, runs the chosen one and maps exceptions to exit codes.
#pragma once

#include <functional>
#include <string>

namespace loftqd::daemon {

// Exit codes (DESIGN §1): 0 ok, 1 runtime failure, 2 usage or configuration error.
inline constexpr int kExitOk = 0;
inline constexpr int kExitRuntime = 1;
inline constexpr int kExitUsage = 2;

// What a caller of run_cli may plug in. The loftqd binary passes none; the crash tests' binary
// (tests/support/loftqd_failpoints_main.cpp) passes a failpoint hook.
struct CliHooks {
  // PipelineOptions::failpoint for sync, run and demo.
  std::function<void(const std::string& point)> failpoint;
};

// Parses argv and runs the chosen subcommand; never throws.
int run_cli(int argc, char** argv, const CliHooks& hooks = {});

}  // namespace loftqd::daemon
