// `loftqd verify OUT_DIR --original DIR`: checks a LoftQ layout against its checkpoint.
#include <cstdio>
#include <memory>
#include <string>

#include "convert/verify.h"
#include "daemon/commands.h"
#include "quant/device.h"

namespace loftqd::daemon {

namespace {

struct VerifyArgs {
  std::string out, original, device = "cpu";
  int threads = 0;
};

int verify(const VerifyArgs& a) {
  auto backend = quant::make_backend(a.device, a.threads);
  auto rep = convert::verify_layout(a.out, a.original, *backend);
  std::fputs(convert::verify_table(rep).c_str(), stdout);
  for (const auto& p : rep.problems) std::fprintf(stderr, "verify: %s\n", p.c_str());
  if (!rep.ok()) {
    std::fprintf(stderr, "verify: %zu problem(s) in %s\n", rep.problems.size(), a.out.c_str());
    return kExitRuntime;
  }
  std::printf("verify: %s is a valid LoftQ layout of %s (%zu layers)\n", a.out.c_str(),
              a.original.c_str(), rep.layers.size());
  return kExitOk;
}

}  // namespace

Command add_verify_command(CLI::App& app) {
  auto a = std::make_shared<VerifyArgs>();
  auto* c = app.add_subcommand("verify", "check a LoftQ layout against its original checkpoint");
  c->add_option("OUT_DIR", a->out, "directory written by loftqd quantize")->required();
  c->add_option("--original", a->original, "the original checkpoint directory")->required();
  c->add_option("--threads", a->threads, "CPU threads (0 = all cores)");
  c->add_option("--device", a->device, "auto | cpu | cuda | cuda:N")->capture_default_str();
  return {c, [a] { return verify(*a); }};
}

}  // namespace loftqd::daemon
