#include "fault/fault_server.h"

#include <httplib.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <thread>

#include "storage/store.h"

using nlohmann::json;
namespace st = loftqd::storage;

namespace loftqd::testing {

struct Fault {
  enum Kind { Fail, Drop, Truncate, Corrupt, Stall, IgnoreRange } kind = Fail;
  std::string path_part;
  int times = 1;
  int status = 500;
  size_t bytes = 0;
  int seconds = 0;
  std::map<std::string, std::string> headers;
};

struct FaultServer::Impl {
  FaultServer* owner;
  size_t page_size;
  httplib::Server svr;
  std::thread thread;
  int port = 0;
  mutable std::mutex mu;
  std::vector<Fault> faults;
  std::vector<SeenRequest> seen;
  std::vector<std::string> extra_tree;
  std::string redirect_base;
  bool relative = false;

  // Takes the first matching fault (decrementing it).
  std::optional<Fault> take(const std::string& path, bool fail_only = false) {
    std::lock_guard<std::mutex> g(mu);
    for (auto& f : faults) {
      if (fail_only && f.kind != Fault::Fail) continue;
      if (f.times > 0 && path.find(f.path_part) != std::string::npos) {
        --f.times;
        return f;
      }
    }
    return std::nullopt;
  }

  void serve_file(const httplib::Request& req, httplib::Response& res, const std::string& path,
                  bool with_headers) {
    auto it = owner->files_.find(path);
    if (it == owner->files_.end()) {
      res.status = 404;
      res.set_header("X-Error-Code", "EntryNotFound");
      res.set_content("{\"error\":\"Entry not found\"}", "application/json");
      return;
    }
    const std::string& content = it->second.content;
    if (with_headers) {
      std::string etag = it->second.lfs ? st::sha256_hex(content) : st::git_blob_sha1(content);
      res.set_header("ETag", "\"" + etag + "\"");
      res.set_header("X-Repo-Commit", owner->commit_);
      if (it->second.lfs) {
        res.set_header("X-Linked-Etag", "\"" + etag + "\"");
        res.set_header("X-Linked-Size", std::to_string(content.size()));
      }
    }
    res.set_header("Accept-Ranges", "bytes");
    auto fault = req.method == "HEAD" ? std::nullopt : take(req.path);
    if (fault && fault->kind == Fault::Fail) {
      res.status = fault->status;
      for (auto& [k, v] : fault->headers) res.set_header(k, v);
      res.set_content("{\"error\":\"injected\"}", "application/json");
      return;
    }
    if (fault && fault->kind == Fault::Truncate) {
      res.set_content(content.substr(0, std::min(fault->bytes, content.size())),
                      "application/octet-stream");
      return;
    }
    if (fault && fault->kind == Fault::IgnoreRange) {  // 200, chunked, the whole file
      auto whole = std::make_shared<std::string>(content);
      res.set_chunked_content_provider(
          "application/octet-stream", [whole](size_t offset, httplib::DataSink& sink) {
            if (offset >= whole->size()) {
              sink.done();
              return true;
            }
            const size_t n = std::min<size_t>(whole->size() - offset, 4096);
            return sink.write(whole->data() + offset, n);
          });
      return;
    }
    std::string body = content;
    if (fault && fault->kind == Fault::Corrupt)
      for (size_t i = 0; i < body.size(); i += 7) body[i] = static_cast<char>(body[i] ^ 0x5a);
    auto data = std::make_shared<std::string>(std::move(body));
    std::optional<Fault> f = fault;
    res.set_content_provider(
        data->size(), "application/octet-stream",
        [data, f](size_t offset, size_t length, httplib::DataSink& sink) {
          size_t sent = 0;
          while (sent < length) {
            size_t n = std::min<size_t>(length - sent, 4096);
            if (f && (f->kind == Fault::Drop || f->kind == Fault::Stall) && sent + n > f->bytes) {
              n = f->bytes > sent ? f->bytes - sent : 0;
              if (n) sink.write(data->data() + offset + sent, n);
              if (f->kind == Fault::Drop) return false;  // closes the connection mid-body
              std::this_thread::sleep_for(std::chrono::seconds(f->seconds));
              return false;
            }
            if (!sink.write(data->data() + offset + sent, n)) return false;
            sent += n;
          }
          return true;
        });
  }
};

FaultServer::FaultServer(std::string repo, size_t page_size)
    : repo_(std::move(repo)),
      commit_(st::sha1_hex("fault-server-commit")),
      impl_(std::make_unique<Impl>()) {
  auto& i = *impl_;
  i.owner = this;
  i.page_size = page_size;
  i.svr.set_keep_alive_timeout(0);  // stop() must not wait for idle keep-alive connections
  const std::string api = "/api/models/" + repo_;
  i.svr.Get(".*", [this, api](const httplib::Request& req, httplib::Response& res) {
    auto& im = *impl_;
    const std::string& p = req.path;
    {
      std::lock_guard<std::mutex> g(im.mu);
      im.seen.push_back({req.method, req.path, req.get_header_value("Authorization"),
                         req.get_header_value("Range")});
    }
    if (p.rfind("/cdn/", 0) == 0) return im.serve_file(req, res, p.substr(5), false);
    if (auto f = im.take(p, true)) {
      res.status = f->status;
      for (auto& [k, v] : f->headers) res.set_header(k, v);
      res.set_content("{\"error\":\"injected\"}", "application/json");
      return;
    }
    if (p == api + "/revision/main" || p == api + "/revision/" + commit_ || p == api) {
      json sib = json::array();
      for (auto& [path, f] : files_) sib.push_back({{"rfilename", path}});
      res.set_content(json{{"id", repo_},
                           {"sha", commit_},
                           {"private", false},
                           {"gated", false},
                           {"siblings", sib}}
                          .dump(),
                      "application/json");
      return;
    }
    if (p.rfind(api + "/revision/", 0) == 0) {
      res.status = 404;
      res.set_header("X-Error-Code", "RevisionNotFound");
      res.set_content("{\"error\":\"Invalid rev id\"}", "application/json");
      return;
    }
    if (p == api + "/tree/" + commit_ || p == api + "/tree/main") {
      json all = json::array();
      for (auto& [path, f] : files_) {
        json e = {{"type", "file"}, {"path", path}, {"size", f.content.size()}};
        if (f.lfs) {
          auto sha = st::sha256_hex(f.content);
          e["oid"] = st::git_blob_sha1(st::lfs_pointer(sha, f.content.size()));
          e["lfs"] = {{"oid", sha}, {"size", f.content.size()}, {"pointerSize", 130}};
        } else {
          e["oid"] = st::git_blob_sha1(f.content);
        }
        all.push_back(e);
      }
      for (auto& x : im.extra_tree)
        all.push_back(
            {{"type", "file"}, {"path", x}, {"size", 1}, {"oid", st::git_blob_sha1("x")}});
      size_t cursor = req.has_param("cursor") ? std::stoul(req.get_param_value("cursor")) : 0;
      json page = json::array();
      for (size_t k = cursor; k < all.size() && k < cursor + im.page_size; ++k)
        page.push_back(all[k]);
      if (cursor + im.page_size < all.size())
        res.set_header("Link", "<" + url() + p + "?recursive=true&cursor=" +
                                   std::to_string(cursor + im.page_size) + ">; rel=\"next\"");
      res.set_content(page.dump(), "application/json");
      return;
    }
    const std::string resolve = "/" + repo_ + "/resolve/";
    const std::string alias = "/alias/" + repo_ + "/resolve/";
    bool is_alias = p.rfind(alias, 0) == 0;
    if (p.rfind(resolve, 0) == 0 || is_alias) {
      std::string rest = p.substr(is_alias ? alias.size() : resolve.size());
      auto slash = rest.find('/');
      std::string rev = rest.substr(0, slash), path = rest.substr(slash + 1);
      if (rev != commit_ && rev != "main") {
        res.status = 404;
        res.set_header("X-Error-Code", "RevisionNotFound");
        return;
      }
      std::string redirect_base;
      bool relative;
      {
        std::lock_guard<std::mutex> g(im.mu);
        redirect_base = im.redirect_base;
        relative = im.relative;
      }
      if (relative && !is_alias) {
        res.status = 307;
        res.set_header("Location", "/alias" + p);
        res.set_header("X-Repo-Commit", commit_);
        return;
      }
      if (!redirect_base.empty()) {
        auto it = files_.find(path);
        if (it != files_.end()) {
          std::string etag = it->second.lfs ? st::sha256_hex(it->second.content)
                                            : st::git_blob_sha1(it->second.content);
          res.set_header("X-Repo-Commit", commit_);
          res.set_header("X-Linked-Etag", "\"" + etag + "\"");
          res.set_header("X-Linked-Size", std::to_string(it->second.content.size()));
          res.set_header("ETag", "\"pointer\"");
        }
        res.status = 302;
        res.set_header("Location", redirect_base + "/cdn/" + path);
        return;
      }
      return im.serve_file(req, res, path, true);
    }
    res.status = 404;
    res.set_header("X-Error-Code", "RepoNotFound");
    res.set_content("{\"error\":\"Repository not found\"}", "application/json");
  });
  i.port = i.svr.bind_to_any_port("127.0.0.1");
  i.thread = std::thread([this] { impl_->svr.listen_after_bind(); });
  while (!i.svr.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

FaultServer::~FaultServer() {
  impl_->svr.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

std::string FaultServer::url() const {
  return "http://127.0.0.1:" + std::to_string(impl_->port);
}

void FaultServer::add_file(const std::string& path, const std::string& content, bool lfs) {
  files_[path] = {content, lfs};
}

void FaultServer::add_tree_entry(const std::string& path) {
  std::lock_guard<std::mutex> g(impl_->mu);
  impl_->extra_tree.push_back(path);
}

void FaultServer::fail(const std::string& part, int status, int times,
                       std::map<std::string, std::string> headers) {
  std::lock_guard<std::mutex> g(impl_->mu);
  Fault f;
  f.kind = Fault::Fail;
  f.path_part = part;
  f.times = times;
  f.status = status;
  f.headers = std::move(headers);
  impl_->faults.push_back(f);
}

void FaultServer::drop_after(const std::string& part, size_t bytes, int times) {
  std::lock_guard<std::mutex> g(impl_->mu);
  Fault f;
  f.kind = Fault::Drop;
  f.path_part = part;
  f.times = times;
  f.bytes = bytes;
  impl_->faults.push_back(f);
}

void FaultServer::ignore_range(const std::string& part, int times) {
  std::lock_guard<std::mutex> g(impl_->mu);
  Fault f;
  f.kind = Fault::IgnoreRange;
  f.path_part = part;
  f.times = times;
  impl_->faults.push_back(f);
}

void FaultServer::truncate(const std::string& part, size_t bytes, int times) {
  std::lock_guard<std::mutex> g(impl_->mu);
  Fault f;
  f.kind = Fault::Truncate;
  f.path_part = part;
  f.times = times;
  f.bytes = bytes;
  impl_->faults.push_back(f);
}

void FaultServer::corrupt(const std::string& part, int times) {
  std::lock_guard<std::mutex> g(impl_->mu);
  Fault f;
  f.kind = Fault::Corrupt;
  f.path_part = part;
  f.times = times;
  impl_->faults.push_back(f);
}

void FaultServer::stall(const std::string& part, size_t bytes, int seconds, int times) {
  std::lock_guard<std::mutex> g(impl_->mu);
  Fault f;
  f.kind = Fault::Stall;
  f.path_part = part;
  f.times = times;
  f.bytes = bytes;
  f.seconds = seconds;
  impl_->faults.push_back(f);
}

void FaultServer::redirect_resolve_to(const std::string& base) {
  std::lock_guard<std::mutex> g(impl_->mu);
  impl_->redirect_base = base;
}

void FaultServer::relative_redirects(bool on) {
  std::lock_guard<std::mutex> g(impl_->mu);
  impl_->relative = on;
}

std::vector<SeenRequest> FaultServer::requests() const {
  std::lock_guard<std::mutex> g(impl_->mu);
  return impl_->seen;
}

size_t FaultServer::count(const std::string& method, const std::string& part) const {
  size_t n = 0;
  for (const auto& r : requests())
    if (r.method == method && r.path.find(part) != std::string::npos) ++n;
  return n;
}

}  // namespace loftqd::testing
