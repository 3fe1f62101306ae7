// The loftqd command line: one function per subcommand, shared exit-code rules.
#pragma once

#include <string>
#include <vector>

namespace loftqd::daemon {

// Exit codes (DESIGN §1): 0 ok, 1 runtime failure, 2 usage or configuration error.
inline constexpr int kExitOk = 0;
inline constexpr int kExitRuntime = 1;
inline constexpr int kExitUsage = 2;

// Parses argv and runs the chosen subcommand; never throws.
int run_cli(int argc, char** argv);

}  // namespace loftqd::daemon
