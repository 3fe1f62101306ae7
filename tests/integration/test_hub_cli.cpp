// loftqd serve / fetch / publish through the real binary, and conformance with the official JS
// client (@huggingface/hub, installed into tests/js by scripts/setup).
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "hub/hub.h"
#include "mirror/mirror.h"
#include "storage/store.h"
#include "support/test_util.h"

namespace fs = std::filesystem;
using loftqd::testing::run_loftqd;
using loftqd::testing::ServeProcess;
using loftqd::testing::slurp;
using loftqd::testing::spit;
using loftqd::testing::TempDir;
using ::testing::HasSubstr;
using ::testing::Not;

namespace {

constexpr const char* kToken = "hf_cli_write_token_0042";

// Sets an environment variable for the scope of a test.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::optional<std::string>& value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value)
      ::setenv(name, value->c_str(), 1);
    else
      ::unsetenv(name);
  }
  ~ScopedEnv() {
    if (old_)
      ::setenv(name_, old_->c_str(), 1);
    else
      ::unsetenv(name_);
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

std::map<std::string, std::string> read_tree(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (auto it = fs::recursive_directory_iterator(dir); it != fs::end(it); ++it) {
    auto rel = it->path().lexically_relative(dir).generic_string();
    if (rel == ".cache") {
      it.disable_recursion_pending();
      continue;
    }
    if (fs::is_regular_file(it->path())) out[rel] = slurp(it->path());
  }
  return out;
}

// A small LoftQ layout written by the real `loftqd synth` + `loftqd quantize`.
void make_layout(const fs::path& tmp, const fs::path& out) {
  auto s = run_loftqd({"synth", "--arch", "llama", "--layers", "2", "--hidden", "64",
                       "--intermediate", "128", "--heads", "4", "--vocab", "128", "--dtype", "bf16",
                       "--seed", "3", (tmp / "model").string()});
  ASSERT_EQ(s.exit_code, 0) << s.out;
  auto q = run_loftqd({"quantize", (tmp / "model").string(), out.string(), "--rank", "4", "--iters",
                       "1", "--threads", "1", "--repo-id", "org/tiny-loftq"});
  ASSERT_EQ(q.exit_code, 0) << q.out;
}

}  // namespace

TEST(HubCli, PublishAQuantizedLayoutThenFetchItBackByteForByte) {
  TempDir tmp;
  ScopedEnv home("HF_HOME", (tmp / "hf-home").string());
  ScopedEnv endpoint("HF_ENDPOINT", std::nullopt);
  ScopedEnv offline("HF_HUB_OFFLINE", std::nullopt);
  make_layout(tmp.path(), tmp / "out");
  spit(tmp / "token", std::string(kToken) + "\n");
  ServeProcess serve(tmp / "store", tmp / "token", tmp.path(),
                     {"--multipart-threshold", "1M", "--multipart-chunk", "1M"});
  ASSERT_GT(serve.port(), 0) << serve.log();

  {
    ScopedEnv token("HF_TOKEN", std::nullopt);  // publishing needs a token
    auto p = run_loftqd(
        {"publish", (tmp / "out").string(), "org/tiny-loftq", "--endpoint", serve.url()});
    EXPECT_EQ(p.exit_code, 1) << p.out;
    EXPECT_THAT(p.out, HasSubstr("needs a token"));
  }
  ScopedEnv token("HF_TOKEN", std::string(kToken));
  auto p =
      run_loftqd({"publish", (tmp / "out").string(), "org/tiny-loftq", "--endpoint", serve.url()});
  ASSERT_EQ(p.exit_code, 0) << p.out;
  EXPECT_THAT(p.out, HasSubstr("published"));
  EXPECT_THAT(p.out, Not(HasSubstr(kToken)));

  // Anonymous fetch through HF_ENDPOINT, as plain files and into a store.
  ScopedEnv anon("HF_TOKEN", std::nullopt);
  ScopedEnv ep("HF_ENDPOINT", serve.url());
  auto f = run_loftqd({"fetch", "org/tiny-loftq", "--local-dir", (tmp / "back").string()});
  ASSERT_EQ(f.exit_code, 0) << f.out;
  auto want = read_tree(tmp / "out");
  EXPECT_EQ(read_tree(tmp / "back"), want);
  EXPECT_TRUE(want.count("loftq_init/adapter_model.safetensors"));
  auto s = run_loftqd({"fetch", "org/tiny-loftq", "--store", (tmp / "cache").string(), "--include",
                       "*.json", "--include", "*.safetensors"});
  ASSERT_EQ(s.exit_code, 0) << s.out;
  auto commit = slurp(tmp / "cache/models--org--tiny-loftq/refs/main");
  auto snap = read_tree(tmp / "cache/models--org--tiny-loftq/snapshots" / commit);
  for (const auto& [path, bytes] : want) {
    bool selected = path.ends_with(".json") || path.ends_with(".safetensors");
    EXPECT_EQ(snap.count(path), selected ? 1u : 0u) << path;
    if (selected) {
      EXPECT_EQ(snap[path], bytes) << path;
    }
  }
  EXPECT_EQ(serve.stop(), 0) << serve.log();
  EXPECT_THAT(serve.log(), Not(HasSubstr(kToken)));
}

TEST(HubCli, FetchErrorsAndUsage) {
  TempDir tmp;
  ScopedEnv home("HF_HOME", (tmp / "hf-home").string());
  ScopedEnv token("HF_TOKEN", std::string(kToken));
  spit(tmp / "token", std::string(kToken) + "\n");
  ServeProcess serve(tmp / "store", tmp / "token", tmp.path(),
                     {"--multipart-threshold", "1M", "--multipart-chunk", "1M"});
  ASSERT_GT(serve.port(), 0) << serve.log();
  auto nf = run_loftqd({"fetch", "org/nope", "--endpoint", serve.url(), "--store",
                        (tmp / "cache").string(), "--max-retries", "0"});
  EXPECT_EQ(nf.exit_code, 1);
  EXPECT_THAT(nf.out, HasSubstr("repository 'org/nope' not found"));
  EXPECT_THAT(nf.out, HasSubstr("RepoNotFound"));
  EXPECT_THAT(nf.out, Not(HasSubstr(kToken)));
  auto usage = run_loftqd({"fetch", "org/nope", "--endpoint", serve.url()});
  EXPECT_EQ(usage.exit_code, 2) << usage.out;
  auto both = run_loftqd({"fetch", "org/nope", "--store", "a", "--local-dir", "b"});
  EXPECT_EQ(both.exit_code, 2) << both.out;
  auto bad_id = run_loftqd({"fetch", "../x", "--store", (tmp / "c").string()});
  EXPECT_EQ(bad_id.exit_code, 2) << bad_id.out;
  auto listen = run_loftqd({"serve", "--store", (tmp / "s").string(), "--listen", "nope"});
  EXPECT_EQ(listen.exit_code, 2) << listen.out;
  ScopedEnv off("HF_HUB_OFFLINE", std::string("1"));
  auto offline = run_loftqd(
      {"fetch", "org/x", "--endpoint", serve.url(), "--store", (tmp / "cache").string()});
  EXPECT_EQ(offline.exit_code, 1);
  EXPECT_THAT(offline.out, HasSubstr("HF_HUB_OFFLINE"));
}

TEST(HubJs, OfficialClientReadsAndWritesTheMirror) {
  const fs::path js = LOFTQD_JS_DIR;
  if (std::system("node --version > /dev/null 2>&1") != 0) GTEST_SKIP() << "node is not installed";
  if (!fs::exists(js / "node_modules/@huggingface/hub/package.json"))
    GTEST_SKIP() << "@huggingface/hub is not installed in tests/js (run scripts/setup)";
  TempDir tmp;
  loftqd::mirror::MirrorOptions o;
  o.store = tmp / "store";
  o.port = 0;
  o.write_token = kToken;
  o.multipart_threshold = 1 << 20;
  o.multipart_chunk = 1 << 20;
  o.keep_alive_timeout_s = 1;
  loftqd::mirror::Mirror mirror(o);
  mirror.start();

  // A layout published by loftqd for the JS client to read.
  fs::path pub = tmp / "pub";
  fs::create_directories(pub / "loftq_init");
  spit(pub / "config.json", "{\"model_type\": \"llama\"}\n");
  std::string weights(200000, '\0');
  for (size_t i = 0; i < weights.size(); ++i)
    weights[i] = static_cast<char>((i * 2654435761u) >> 13);
  spit(pub / "model.safetensors", weights);
  spit(pub / "loftq_init/adapter_config.json", "{\"r\": 4}\n");
  loftqd::hub::ClientOptions co;
  co.endpoint = mirror.url();
  co.token = kToken;
  co.disk_reserve = 0;
  loftqd::hub::Client client(co);
  loftqd::hub::PublishRequest pr;
  pr.dir = pub;
  pr.repo = "org/published";
  auto r = client.upload_folder(pr);
  ASSERT_TRUE(r.ok()) << r.error().message;

  spit(tmp / "token", kToken);
  std::string cmd = "cd '" + js.string() + "' && node conformance.mjs '" + mirror.url() + "' '" +
                    (tmp / "token").string() + "' org/published '" + pub.string() + "' '" +
                    (tmp / "js-out").string() + "' 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int status = ::pclose(p);
  ASSERT_EQ(WEXITSTATUS(status), 0) << out;
  EXPECT_THAT(out, HasSubstr("\"uploaded\":4"));
  // Every other route the JS client has, each checked by the script (see conformance.mjs).
  EXPECT_THAT(out, HasSubstr("\"commits\":5"));
  EXPECT_THAT(out, HasSubstr("\"routes\":[\"whoAmI\",\"listCommits\",\"tag\",\"fileExists\","
                             "\"folderDelete\",\"cardData\",\"listModels\",\"deleteRepo\"]"));

  // What the JS client uploaded, fetched back by loftqd fetch, byte for byte.
  {
    ScopedEnv ep("HF_ENDPOINT", mirror.url());
    auto f = run_loftqd({"fetch", "js-org/uploaded", "--local-dir", (tmp / "fetched").string()});
    ASSERT_EQ(f.exit_code, 0) << f.out;
  }
  EXPECT_EQ(read_tree(tmp / "fetched"), read_tree(tmp / "js-out"));
  EXPECT_EQ(read_tree(tmp / "fetched").size(), 4u);
  mirror.stop();
}

TEST(HubCli, FetchKilledMidFileResumesWithRange) {
  TempDir tmp;
  ScopedEnv home("HF_HOME", (tmp / "hf-home").string());
  ScopedEnv token("HF_TOKEN", std::nullopt);
  // An 8 MiB LFS file in the mirror's store.
  std::string data(8 << 20, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>((i * 2654435761u) >> 11);
  loftqd::storage::Store store(tmp / "store");
  auto sha = loftqd::storage::sha256_hex(data);
  ASSERT_TRUE(store.put_blob("org/big", data, loftqd::storage::Digest::lfs(sha, data.size())).ok());
  ASSERT_TRUE(
      store.commit_snapshot("org/big", "main", {{"w.safetensors", sha}}, std::nullopt).ok());
  loftqd::mirror::MirrorOptions o;
  o.store = tmp / "store";
  o.port = 0;
  o.keep_alive_timeout_s = 1;
  auto ranges = std::make_shared<std::atomic<int>>(0);
  o.on_request = [ranges](const std::string& m, const std::string& path, int status) {
    if (m == "GET" && path.find("/resolve/") != std::string::npos && status == 206) ++*ranges;
  };
  loftqd::mirror::Mirror mirror(o);
  mirror.start();

  // A throttled fetch, killed (SIGKILL: no cleanup at all) once part of the file is in.
  fs::path cache = tmp / "cache";
  auto partial = cache / "models--org--big/blobs" / (sha + ".incomplete");
  pid_t pid = ::fork();
  if (pid == 0) {
    std::vector<std::string> args = {
        LOFTQD_BINARY,  "fetch",        "org/big", "--endpoint",     mirror.url(), "--store",
        cache.string(), "--limit-rate", "2M",      "--disk-reserve", "0"};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    int devnull = ::open("/dev/null", O_WRONLY);
    ::dup2(devnull, 1);
    ::dup2(devnull, 2);
    ::execv(argv[0], argv.data());
    _exit(127);
  }
  uint64_t seen = 0;
  for (int i = 0; i < 2000 && seen < (1u << 20); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    std::error_code ec;
    const uint64_t size = fs::file_size(partial, ec);  // all ones, with ec, when absent
    seen = ec ? 0 : size;
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  uint64_t cut_at = fs::file_size(partial);
  ASSERT_GT(cut_at, 0u);
  ASSERT_LT(cut_at, data.size());
  EXPECT_FALSE(fs::exists(cache / "models--org--big/snapshots"));

  auto r = run_loftqd({"fetch", "org/big", "--endpoint", mirror.url(), "--store", cache.string(),
                       "--disk-reserve", "0"});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(ranges->load(), 1);  // the second run asked only for the rest
  EXPECT_FALSE(fs::exists(partial));
  EXPECT_EQ(slurp(cache / "models--org--big/snapshots" /
                  slurp(cache / "models--org--big/refs/main") / "w.safetensors"),
            data);
  mirror.stop();
}
