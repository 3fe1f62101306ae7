// `loftqd sync --config F --once` and `loftqd demo`: a full pass of the daemon loop, with the
// built-in mirror started in-process as the publish target.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

namespace loftqd::daemon {

// One pass over every watched repo. Returns the exit code: 0 when every job succeeded.
int sync_once_command(const std::string& config_path, int threads);

// The embedded default: a synthetic upstream repo in a mirror under `workdir`, one sync that
// downloads it over HTTP, LoftQ with the mixed 4/2-bit plan, publish back, verify, print.
int demo_command(const std::filesystem::path& workdir, int threads);

}  // namespace loftqd::daemon
