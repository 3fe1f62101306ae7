// The subcommands of loftqd (internal to daemon/): each cmd_*.cpp registers its flags on the
// app and returns what runs it once the command line is parsed.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

#include "daemon/cli.h"

namespace loftqd::daemon {

struct Command {
  CLI::App* app = nullptr;   // the subcommand; *app is true when it was chosen
  std::function<int()> run;  // the exit code; std::invalid_argument for usage errors
};

Command add_synth_command(CLI::App& app);
Command add_quantize_command(CLI::App& app);
Command add_verify_command(CLI::App& app);
Command add_status_command(CLI::App& app);
Command add_retry_command(CLI::App& app);
Command add_check_config_command(CLI::App& app);
Command add_sync_command(CLI::App& app, const CliHooks& hooks);
Command add_run_command(CLI::App& app, const CliHooks& hooks);
Command add_demo_command(CLI::App& app, const CliHooks& hooks);
Command add_serve_command(CLI::App& app);
Command add_fetch_command(CLI::App& app);
Command add_publish_command(CLI::App& app);

}  // namespace loftqd::daemon
