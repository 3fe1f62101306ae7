#include "daemon/client_flags.h"

#include <cstdio>

#include "common/parse.h"
#include "daemon/cli.h"

namespace loftqd::daemon {

void add_client_flags(CLI::App* c, ClientFlags& f) {
  c->add_option("--endpoint", f.endpoint, "Hub URL (default: HF_ENDPOINT, else huggingface.co)");
  c->add_option("--max-retries", f.max_retries, "retries for 408/429/5xx and network errors")
      ->capture_default_str();
  c->add_option("--backoff", f.backoff, "first retry delay in seconds (doubles, capped)")
      ->capture_default_str();
  c->add_option("--stall-timeout", f.stall_timeout, "seconds without a byte before a retry")
      ->capture_default_str();
  c->add_option("--connect-timeout", f.connect_timeout, "connect timeout in seconds")
      ->capture_default_str();
}

hub::Client make_client(const ClientFlags& f) {
  auto o = hub::options_from_env(f.endpoint.empty() ? std::nullopt
                                                    : std::optional<std::string>(f.endpoint));
  o.parallel = f.parallel;          // fetch: files and ranges at once
  o.parallel_uploads = f.parallel;  // publish: files hashed and LFS objects uploaded at once
  o.disk_reserve = common::parse_size_or_throw("--disk-reserve", f.disk_reserve);
  o.range_threshold = common::parse_size_or_throw("--range-threshold", f.range_threshold);
  o.max_recv_bytes_per_s = common::parse_size_or_throw("--limit-rate", f.limit_rate);
  o.max_retries = f.max_retries;
  o.backoff_base_s = f.backoff;
  o.stall_timeout_s = f.stall_timeout;
  o.connect_timeout_s = f.connect_timeout;
  if (f.parallel < 1) throw std::invalid_argument("--parallel must be >= 1");
  return hub::Client(o);
}

hub::ProgressFn ByteProgress::fn() {
  return [this](uint64_t done, uint64_t total, const std::string& file) {
    std::lock_guard<std::mutex> g(mu);
    if (!bar) bar.emplace(label, total);
    bar->update(done, file);
  };
}

void ByteProgress::finish() {
  std::lock_guard<std::mutex> g(mu);
  if (bar) bar->finish();
}

int report_error(const hub::Error& e) {
  std::fprintf(stderr, "loftqd: error: %s [%s]\n", e.message.c_str(), hub::kind_name(e.kind));
  return kExitRuntime;
}

}  // namespace loftqd::daemon
