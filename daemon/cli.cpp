#include "daemon/cli.h"

#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <stdexcept>
#include <vector>

#include "daemon/blas_kernels.h"
#include "daemon/commands.h"
#include "daemon/logging.h"
#include "model/safetensors.h"

namespace loftqd::daemon {

int run_cli(int argc, char** argv, const CliHooks& hooks) {
  CLI::App app{"loftqd: turns Hugging Face checkpoints into ready-to-fine-tune LoftQ models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", [] {
    const std::string warning = blas_kernels_warning();
    return std::string("loftqd ") + LOFTQD_VERSION + "\n" + blas_kernels_line() +
           (warning.empty() ? "" : "\nwarning: " + warning);
  });

  // The order here is the order of --help.
  const std::vector<Command> commands = {
      add_synth_command(app),       add_quantize_command(app),   add_verify_command(app),
      add_status_command(app),      add_retry_command(app),      add_check_config_command(app),
      add_sync_command(app, hooks), add_run_command(app, hooks), add_demo_command(app, hooks),
      add_serve_command(app),       add_fetch_command(app),      add_publish_command(app)};

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "loftqd: %s\n", e.what());
    std::fprintf(stderr, "Run with --help for more information.\n");
    return kExitUsage;
  }

  set_log_format("text");  // run and sync switch to the config's log_format
  try {
    for (const auto& c : commands)
      if (*c.app) return c.run();
  } catch (const model::FormatError& e) {
    std::fprintf(stderr, "loftqd: error: %s\n", e.what());
    return kExitRuntime;
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "loftqd: error: %s\n", e.what());
    return kExitUsage;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "loftqd: error: %s\n", e.what());
    return kExitRuntime;
  }
  return kExitUsage;
}

}  // namespace loftqd::daemon
