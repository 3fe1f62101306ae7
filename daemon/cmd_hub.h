// `loftqd serve`, `loftqd fetch` and `loftqd publish`: the Hub-facing subcommands.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <optional>

namespace loftqd::daemon {
struct HubCommands;  // the parsed flags; owned by the caller
}  // namespace loftqd::daemon

// Out-of-line deleter so that std::unique_ptr<HubCommands> works where the type is incomplete.
namespace std {
template <>
struct default_delete<loftqd::daemon::HubCommands> {
  void operator()(loftqd::daemon::HubCommands* p) const;
};
}  // namespace std

namespace loftqd::daemon {

// Registers the serve, fetch and publish subcommands on `app`.
std::unique_ptr<HubCommands> add_hub_commands(CLI::App& app);
// Runs the selected one after app.parse(): nullopt when none of them was selected, else the exit
// code (0 ok, 1 runtime failure, 2 usage). std::invalid_argument escapes for usage errors.
std::optional<int> run_hub_commands(HubCommands& h);

}  // namespace loftqd::daemon
