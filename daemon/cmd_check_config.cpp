// `loftqd check-config --config F`: validates the configuration as `run` would at start-up
// (every problem with its JSON path, the listen address, every secret file readable) and prints,
// per target, what the daemon would do with it: when the upstream answers, its commit, the
// files and bytes to download, the target modules and the bits of every layer (from its
// config.json and the architecture registry). Exit 0 when `run` would start and every target
// can be built, 2 otherwise; an upstream that cannot be reached is said, not a problem.
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/fs.h"
#include "common/strings.h"
#include "config/config.h"
#include "daemon/commands.h"
#include "daemon/hub_options.h"
#include "hub/hub.h"
#include "mirror/mirror.h"
#include "model/registry.h"
#include "quant/quantizer.h"
#include "storage/store.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace loftqd::daemon {

namespace {

std::string gib(uint64_t b) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", b / (1024.0 * 1024 * 1024));
  return buf;
}

// Errors that say the entry is wrong (not that the Hub is out of reach).
bool entry_problem(hub::ErrorKind k) {
  using K = hub::ErrorKind;
  return k == K::RepoNotFound || k == K::RevisionNotFound || k == K::GatedRepo ||
         k == K::Unauthorized || k == K::Forbidden || k == K::BadRequest;
}

// The selected files of the commit and how much of them the store lacks.
void print_download(const config::RepoConfig& r, const std::vector<hub::TreeEntry>& tree,
                    const storage::Store& store, std::vector<std::string>& problems) {
  uint64_t total = 0, have = 0;
  size_t files = 0, weights = 0;
  for (const auto& e : tree) {
    if (e.type != "file" || !storage::path_selected(e.path, r.allow_patterns, r.ignore_patterns))
      continue;
    ++files;
    total += e.size;
    if (e.path.ends_with(".safetensors")) ++weights;
    if (store.has_repo(r.repo) && store.has_blob(r.repo, e.etag())) have += e.size;
  }
  std::printf("  download: %zu files, %llu bytes (%s), %llu bytes of them in the store already\n",
              files, static_cast<unsigned long long>(total - have), gib(total - have).c_str(),
              static_cast<unsigned long long>(have));
  if (weights == 0)
    problems.push_back(r.repo +
                       ": no .safetensors file is selected (allow_patterns/ignore_patterns)");
}

// Layers [a, b] with the same bits per module, as "0-15: 4 bits" or "12: q_proj 4, v_proj 8".
void print_bits(const quant::BitPlan& plan, int layers, const std::vector<std::string>& modules) {
  auto describe = [&](int layer) {
    std::map<int, std::vector<std::string>> by_bits;
    for (const auto& m : modules) by_bits[plan.bits_for(layer, m).value_or(0)].push_back(m);
    auto text = [](int b) { return b ? std::to_string(b) + " bits" : std::string("none"); };
    if (by_bits.size() == 1) return text(by_bits.begin()->first);
    std::string s;
    for (const auto& [bits, ms] : by_bits)
      s += (s.empty() ? "" : ", ") + common::join(ms, "+") + " " + text(bits);
    return s;
  };
  for (int a = 0; a < layers;) {
    int b = a;
    const std::string d = describe(a);
    while (b + 1 < layers && describe(b + 1) == d) ++b;
    std::printf("    layers %s: %s\n",
                (a == b ? std::to_string(a) : std::to_string(a) + "-" + std::to_string(b)).c_str(),
                d.c_str());
    a = b + 1;
  }
}

// Targets and per-layer bits from the upstream's config.json and the registry.
void print_plan(const config::RepoConfig& r, const json& mc, std::vector<std::string>& problems) {
  const std::string type = mc.value("model_type", "");
  const model::Architecture* arch = model::find_architecture(type);
  if (!arch && r.loftq.target_modules.empty())
    return problems.push_back(r.repo + ": model_type '" + type +
                              "' is not in the architecture registry (known: " +
                              model::known_model_types() + "); set loftq.target_modules");
  const auto& modules = r.loftq.target_modules.empty() ? arch->targets : r.loftq.target_modules;
  std::printf("  model: %s%s; target modules: %s\n", type.c_str(),
              arch ? (" (" + arch->task_class + ")").c_str() : " (not in the registry)",
              common::join(modules, " ").c_str());
  int layers = 0;
  if (arch)
    for (const auto& st : arch->stacks) {
      std::string field;
      if (auto n = model::config_depth(st, mc, &field)) {
        layers += *n;
        std::printf("  stack %s: %d layers (config.json %s)\n", st.name.c_str(), *n, field.c_str());
      } else {
        problems.push_back(r.repo + ": config.json gives no depth for the " + st.name + " stack (" +
                           common::join(st.count_fields, ", ") + ")");
      }
    }
  if (!arch) layers = mc.value("num_hidden_layers", 0);
  quant::BitPlan plan = r.loftq.plan;
  if (auto avg = plan.average_bits())
    // resolve() makes the LoftQ authors' whole-layer split; the job balances by parameter
    // count (convert/targets.cpp), which is the same split on equal layers.
    std::printf(
        "  bits (avg_bits %g; exact for equal layers, else the job balances the boundary"
        " layer by parameter count):\n",
        *avg);
  else
    std::printf("  bits (%s):\n", plan.to_string().c_str());
  try {
    plan.resolve(layers, quant::supported_bits(r.loftq.quant));
  } catch (const std::invalid_argument& e) {
    return problems.push_back(r.repo + ": the bit plan does not fit its " + std::to_string(layers) +
                              " layers: " + e.what());
  }
  print_bits(plan, layers, modules);
  for (int l = 0; l < layers; ++l)
    for (const auto& m : modules)
      if (!plan.bits_for(l, m))
        return problems.push_back(r.repo + ": bit plan '" + plan.to_string() +
                                  "' gives no bits for layer " + std::to_string(l) + " (" + m +
                                  ")");
}

// What the upstream says about one entry; problems only for what would make its job fail.
void print_upstream(const config::Config& cfg, const config::RepoConfig& r,
                    std::vector<std::string>& problems) {
  hub::ClientOptions o = upstream_client_options(cfg);
  if (o.offline) return (void)std::printf("  upstream: not asked (HF_HUB_OFFLINE is set)\n");
  o.max_retries = 0;
  o.connect_timeout_s = 5;
  hub::Client client(o);
  auto unreachable = [&](const hub::Error& err) {
    if (entry_problem(err.kind)) return problems.push_back(r.repo + ": " + err.message);
    std::printf("  upstream: not reachable (%s); bytes to download, targets and bits unknown\n",
                err.message.c_str());
  };
  auto info = client.repo_info(r.repo, r.revision);
  if (!info) return unreachable(info.error());
  auto tree = client.list_tree(r.repo, info.value().sha);
  if (!tree) return unreachable(tree.error());
  std::printf("  upstream: %s@%s is commit %s%s\n", r.repo.c_str(), r.revision.c_str(),
              info.value().sha.c_str(),
              info.value().is_private || info.value().gated ? " (private or gated)" : "");
  print_download(r, tree.value(), storage::Store(cfg.store), problems);
  // config.json alone, into a temp dir (checking writes nothing in the store).
  struct Scratch {
    fs::path dir = fs::temp_directory_path() / ("loftqd-check-config-" + common::random_hex(8));
    ~Scratch() {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  } tmp;
  hub::SnapshotRequest sr;
  sr.repo = r.repo;
  sr.revision = info.value().sha;
  sr.allow = {"config.json"};
  sr.local_dir = tmp.dir;
  auto got = client.snapshot_download(sr);
  if (!got || !fs::exists(tmp.dir / "config.json"))
    return problems.push_back(r.repo + ": no config.json at " + info.value().sha +
                              (got ? std::string() : ": " + got.error().message));
  json mc = json::parse(common::read_file(tmp.dir / "config.json"), nullptr, false);
  if (!mc.is_object())
    return problems.push_back(r.repo + ": config.json at " + info.value().sha + " is not JSON");
  print_plan(r, mc, problems);
}

int check_config(const std::string& path) {
  auto cfg = config::load_config(path);  // ConfigError (exit 2) listing every problem
  config::apply_env(cfg);
  if (cfg.mirror.enabled) mirror::parse_listen(cfg.mirror.listen);
  upstream_client_options(cfg);  // hub.token_file
  read_secret(cfg.mirror.write_token_file, "mirror.write_token_file");
  read_secret(cfg.mirror.webhook_secret_file, "mirror.webhook_secret_file");
  const char* visibility = cfg.publish.visibility == config::Visibility::Private  ? "private"
                           : cfg.publish.visibility == config::Visibility::Public ? "public"
                                                                                  : "inherit";
  std::printf("%s: valid; store %s, state db %s, %zu targets, publish to %s%s%s (visibility %s)\n",
              path.c_str(), cfg.store.c_str(), cfg.state_db.c_str(), cfg.repos.size(),
              cfg.publish.mirror ? "the mirror" : "",
              cfg.publish.mirror && cfg.publish.hub_org ? " and " : "",
              cfg.publish.hub_org ? ("the Hub as " + *cfg.publish.hub_org).c_str() : "",
              visibility);
  std::vector<std::string> problems;
  for (const auto& r : cfg.repos) {
    const std::string target = config::render_publish_as(r.publish_as, r, cfg.publish.hub_org);
    std::printf("\n%s@%s -> %s (config %s)\n", r.repo.c_str(), r.revision.c_str(), target.c_str(),
                config::config_hash(r, cfg.publish.hub_org).c_str());
    std::printf("  loftq: %s\n", r.loftq.to_json().dump().c_str());
    std::printf("  files: allow [%s] ignore [%s]\n", common::join(r.allow_patterns, " ").c_str(),
                common::join(r.ignore_patterns, " ").c_str());
    print_upstream(cfg, r, problems);
  }
  std::fflush(stdout);
  if (problems.empty()) return kExitOk;
  std::fprintf(stderr, "\n%s: %zu problem%s:\n", path.c_str(), problems.size(),
               problems.size() == 1 ? "" : "s");
  for (const auto& p : problems) std::fprintf(stderr, "  %s\n", p.c_str());
  return kExitUsage;
}

}  // namespace

Command add_check_config_command(CLI::App& app) {
  auto path = std::make_shared<std::string>();
  auto* c = app.add_subcommand(
      "check-config", "validate a daemon configuration (exit 2 on problems) and print its targets");
  c->add_option("--config", *path, "daemon configuration file")->required();
  return {c, [path] { return check_config(*path); }};
}

}  // namespace loftqd::daemon
