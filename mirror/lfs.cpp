// The mirror's LFS endpoints: the batch API (basic, and multipart for large objects), the
// presigned upload and part URLs it hands out, multipart completion and verify.
#include <fcntl.h>
#include <openssl/hmac.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include "common/ids.h"
#include "common/strings.h"
#include "mirror/internal.h"

namespace fs = std::filesystem;
namespace st = loftqd::storage;
using nlohmann::json;

namespace loftqd::mirror {

namespace {

std::string hmac_hex(const std::string& key, const std::string& data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), out, &len);
  static const char* kHex = "0123456789abcdef";
  std::string s;
  for (unsigned i = 0; i < len; ++i) {
    s += kHex[out[i] >> 4];
    s += kHex[out[i] & 15];
  }
  return s;
}

}  // namespace

std::string Mirror::Impl::ticket(const std::string& repo, const std::string& oid,
                                 uint64_t size) const {
  return hmac_hex(secret, repo + "\n" + oid + "\n" + std::to_string(size));
}

void Mirror::Impl::lfs_batch(const Request& req, Response& res, const std::string& repo) {
  if (!require_write(req, res)) return;
  if (!check_read(req, res, repo)) return;
  json body;
  try {
    body = json::parse(req.body);
  } catch (const std::exception&) {
    return send_error(res, 400, "", "invalid JSON body");
  }
  if (body.value("operation", "") != "upload")
    return send_error(res, 400, "", "only the upload operation is supported");
  bool multipart_ok = false;
  for (const auto& tr : body.value("transfers", json::array()))
    if (tr == "multipart") multipart_ok = true;
  std::string base = base_url(req);
  json objs = json::array();
  bool any_multipart = false;
  for (const auto& o : body.value("objects", json::array())) {
    std::string oid = o.value("oid", "");
    uint64_t size = o.value("size", uint64_t{0});
    if (!common::is_sha256_hex(oid)) {
      objs.push_back(
          {{"oid", oid}, {"size", size}, {"error", {{"code", 422}, {"message", "invalid oid"}}}});
      continue;
    }
    json entry = {{"oid", oid}, {"size", size}, {"authenticated", true}};
    std::error_code ec;
    if (store.has_blob(repo, oid) && fs::file_size(store.blob_path(repo, oid), ec) == size) {
      objs.push_back(std::move(entry));  // no actions: already stored
      continue;
    }
    std::string q = "?repo=" + common::escape_segment(repo) + "&size=" + std::to_string(size) +
                    "&ticket=" + ticket(repo, oid, size);
    std::string href = base + "/api/loftqd/lfs/" + oid;
    json actions;
    if (multipart_ok && size >= opt.multipart_threshold && opt.multipart_chunk > 0) {
      any_multipart = true;
      json header = {{"chunk_size", std::to_string(opt.multipart_chunk)}};
      uint64_t parts = (size + opt.multipart_chunk - 1) / opt.multipart_chunk;
      for (uint64_t p = 1; p <= parts; ++p) {
        char num[16];
        std::snprintf(num, sizeof num, "%05llu", static_cast<unsigned long long>(p));
        header[num] = href + "/part/" + std::to_string(p) + q +
                      "&chunk=" + std::to_string(opt.multipart_chunk);
      }
      actions["upload"] = {
          {"href", href + "/complete" + q + "&chunk=" + std::to_string(opt.multipart_chunk)},
          {"header", header}};
    } else {
      actions["upload"] = {{"href", href + q}, {"header", json::object()}};
    }
    actions["verify"] = {{"href", href + "/verify" + q}, {"header", json::object()}};
    entry["actions"] = actions;
    objs.push_back(std::move(entry));
  }
  res.status = 200;
  res.set_content(json{{"transfer", any_multipart ? "multipart" : "basic"},
                       {"objects", objs},
                       {"hash_algo", "sha256"}}
                      .dump(),
                  "application/vnd.git-lfs+json");
}

bool Mirror::Impl::check_ticket(const Request& req, Response& res, const std::string& oid,
                                std::string& repo, uint64_t& size) const {
  repo = req.get_param_value("repo");
  try {
    size = std::stoull(req.get_param_value("size"));
  } catch (const std::exception&) {
    send_error(res, 401, "", "missing or invalid upload ticket");
    return false;
  }
  if (!opt.write_token || common::repo_id_problem(repo) || !common::is_sha256_hex(oid) ||
      !(st::secure_equal(req.get_param_value("ticket"), ticket(repo, oid, size)) ||
        has_write_token(req))) {
    send_error(res, 401, "", "missing or invalid upload ticket");
    return false;
  }
  return true;
}

BodyPlan Mirror::Impl::lfs_put_plan(const Request& req, const std::vector<std::string>& segs) {
  // segs: api loftqd lfs {oid} [part {n}]
  BodyPlan plan;
  plan.kind = BodyPlan::Refuse;
  plan.refusal = std::make_shared<Response>();
  Response& res = *plan.refusal;
  std::string oid = segs[3], repo;
  uint64_t size = 0;
  if (!check_ticket(req, res, oid, repo, size)) return plan;
  std::error_code ec;
  fs::create_directories(store.repo_dir(repo) / "blobs", ec);
  if (segs.size() == 4) {  // basic: a fresh temp, hashed on the way
    plan = BodyPlan::to_file(store.blob_path(repo, oid), size);
    plan.file += ".upload-" + common::random_hex(12);
    plan.hash = true;
    return plan;
  }
  if (segs.size() != 6 || segs[4] != "part") {
    send_error(res, 404, "", "Not found");
    return plan;
  }
  // PUT .../part/{n}?chunk=C: bytes [(n-1)*C, n*C) of the object into {oid}.multipart.
  uint64_t part = 0, chunk = 0;
  try {
    part = std::stoull(segs[5]);
    chunk = std::stoull(req.get_param_value("chunk"));
  } catch (const std::exception&) {
    send_error(res, 400, "", "bad part number");
    return plan;
  }
  if (part == 0 || chunk == 0 || (part - 1) * chunk >= size) {
    send_error(res, 400, "", "part number out of range");
    return plan;
  }
  plan = BodyPlan::to_file(store.blob_path(repo, oid), std::min(chunk, size - (part - 1) * chunk));
  plan.file += ".multipart";
  plan.file_offset = (part - 1) * chunk;
  plan.truncate = plan.remove_after = false;
  return plan;
}

void Mirror::Impl::lfs_put(const Request& req, Response& res,
                           const std::vector<std::string>& segs) {
  std::string oid = segs[3], repo;
  uint64_t size = 0;
  if (!check_ticket(req, res, oid, repo, size)) return;
  if (req.body_file.empty()) return send_error(res, 500, "", "upload body was not received");
  if (segs.size() == 4) {
    // Hashed while it arrived: a match is installed as it is; anything else goes through the
    // store's verification, which says what differed and removes it.
    if (req.body_size == size && req.body_sha256 == oid) {
      auto c = store.install_blob(repo, req.body_file, oid);
      if (!c) return send_error(res, 500, "", "upload not stored: " + c.error().message);
    } else {
      auto c = store.commit_blob(repo, req.body_file, st::Digest::lfs(oid, size));
      if (!c) return send_error(res, 400, "", "upload rejected: " + c.error().message);
    }
    res.status = 200;
    return;
  }
  const uint64_t part = std::stoull(segs[5]);
  const uint64_t chunk = std::stoull(req.get_param_value("chunk"));
  const uint64_t expect = std::min(chunk, size - (part - 1) * chunk);
  if (req.body_size != expect)
    return send_error(res, 400, "", "part " + std::to_string(part) + " has the wrong size");
  res.set_header("ETag", quote_etag(st::sha1_hex(oid + ":" + std::to_string(part))));
  res.status = 200;
}

void Mirror::Impl::lfs_post(const Request& req, Response& res,
                            const std::vector<std::string>& segs) {
  // segs: api loftqd lfs {oid} complete|verify
  std::string oid = segs[3], repo;
  uint64_t size = 0;
  if (!check_ticket(req, res, oid, repo, size)) return;
  if (segs[4] == "complete") {
    auto mp = store.blob_path(repo, oid);
    mp += ".multipart";
    std::error_code ec;
    if (!fs::exists(mp, ec)) {
      if (store.has_blob(repo, oid)) return send_json(res, json::object());
      return send_error(res, 400, "", "no parts uploaded");
    }
    auto c = store.commit_blob(repo, mp, st::Digest::lfs(oid, size));
    if (!c) return send_error(res, 400, "", "upload rejected: " + c.error().message);
    return send_json(res, json::object());
  }
  if (segs[4] == "verify") {
    std::error_code ec;
    if (!store.has_blob(repo, oid) || fs::file_size(store.blob_path(repo, oid), ec) != size)
      return send_error(res, 404, "", "object " + oid + " not found");
    return send_json(res, {{"message", "ok"}});
  }
  send_error(res, 404, "", "Not found");
}

}  // namespace loftqd::mirror
