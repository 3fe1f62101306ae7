// An upstream Hub for daemon tests: the built-in mirror over its own store, in this process,
// holding one synthetic llama repo "up/tiny".
#pragma once

#include <atomic>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "hub/hub.h"
#include "mirror/mirror.h"
#include "model/synth.h"
#include "support/test_util.h"

namespace loftqd::testing {

class Upstream {
 public:
  static constexpr const char* kToken = "hf_sync_test_write_token";
  struct Request {
    std::string method, path;
    int status;
  };

  // `rate`: bytes per second per file body (0 = unthrottled).
  explicit Upstream(const std::filesystem::path& dir, uint64_t rate = 0,
                    model::SynthOptions so = small()) {
    loftqd::mirror::MirrorOptions mo;
    mo.store = dir / "upstream-store";
    mo.port = 0;
    mo.write_token = kToken;
    mo.max_bytes_per_s = rate;
    mo.on_request = [this](const std::string& m, const std::string& p, int st) {
      std::lock_guard g(mu_);
      requests_.push_back({m, p, st});
    };
    store_ = mo.store;
    mirror_ = std::make_unique<loftqd::mirror::Mirror>(mo);
    mirror_->start();
    src_ = dir / "src";
    model::synth_checkpoint(so, src_);
    commit_ = publish();
  }
  ~Upstream() { mirror_->stop(); }
  static model::SynthOptions small() {
    model::SynthOptions so;
    so.layers = 2;
    so.hidden = 128;
    so.intermediate = 256;
    so.heads = 4;
    so.vocab = 256;
    return so;
  }
  std::string url() const { return mirror_->url(); }
  const std::string& commit() const { return commit_; }
  const std::filesystem::path& store() const { return store_; }
  std::vector<Request> requests() const {
    std::lock_guard g(mu_);
    return requests_;
  }
  // A new upstream commit: a changed (or new) NOTE.txt.
  std::string publish(const std::string& note = "") {
    if (!note.empty()) spit(src_ / "NOTE.txt", note);
    loftqd::hub::ClientOptions o;
    o.endpoint = url();
    o.token = kToken;
    loftqd::hub::Client c(o);
    loftqd::hub::PublishRequest pr;
    pr.dir = src_;
    pr.repo = "up/tiny";
    auto r = c.upload_folder(pr);
    if (!r) throw std::runtime_error(r.error().message);
    commit_ = r.value().commit_oid;
    return commit_;
  }

 private:
  std::unique_ptr<loftqd::mirror::Mirror> mirror_;
  std::filesystem::path src_, store_;
  std::string commit_;
  mutable std::mutex mu_;
  std::vector<Request> requests_;
};

}  // namespace loftqd::testing
