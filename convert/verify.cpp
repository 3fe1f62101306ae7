#include "convert/verify.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>
#include <sstream>

#include "common/fs.h"
#include "common/ids.h"
#include "model/naming.h"
#include "model/registry.h"
#include "model/safetensors.h"
#include "quant/loftq.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace loftqd::convert {

using namespace loftqd::model;  // NOLINT: safetensors, dtypes, naming
using namespace loftqd::quant;  // NOLINT: quantizers, bit plans, LoftQ, backends

using common::read_file;
using common::repo_id_problem;

namespace {

// Distance from |x| to the next value up in dtype.
float ulp(float x, DType dt) {
  x = std::fabs(x);
  switch (dt) {
    case DType::BF16: {
      const uint16_t h = f32_to_bf16(x);
      return bf16_to_f32(static_cast<uint16_t>(h + 1)) - bf16_to_f32(h);
    }
    case DType::F16: {
      const uint16_t h = f32_to_f16(x);
      if (h >= 0x7BFF) return 32.0f;
      return f16_to_f32(static_cast<uint16_t>(h + 1)) - f16_to_f32(h);
    }
    default:
      return std::nextafter(x, INFINITY) - x;
  }
}

float nearest(std::span<const float> table, float y) {
  auto it = std::lower_bound(table.begin(), table.end(), y);
  if (it == table.begin()) return *it;
  if (it == table.end()) return table.back();
  return (y - *(it - 1)) <= (*it - y) ? *(it - 1) : *it;
}

}  // namespace

bool block_representable(const float* q, size_t n, std::span<const float> table, DType dtype,
                         bool absmax_scaled) {
  float qmax = 0;
  for (size_t i = 0; i < n; ++i) qmax = std::max(qmax, std::fabs(q[i]));
  if (qmax == 0) return true;
  const float eps = ulp(1.0f, dtype);
  // q_i = round(t_i * s). A scale recovered from the block's largest value is off by at most
  // the dtype's relative rounding, so each value may miss t_i * s by about one ulp of itself
  // plus eps * |q_i|; twice that is the tolerance.
  auto fits = [&](float s) {
    for (size_t i = 0; i < n; ++i) {
      const float t = nearest(table, q[i] / s);
      const float tol = 2.0f * (ulp(q[i], dtype) + eps * std::fabs(q[i]));
      if (std::fabs(q[i] - t * s) > tol) return false;
    }
    return true;
  };
  // Absmax scaling puts the largest value on +-1; a uniform scale can put it on any positive
  // entry (the tables are symmetric, so the sign of s does not matter).
  if (absmax_scaled) return fits(qmax);
  for (float tk : table)
    if (tk > 0 && fits(qmax / tk)) return true;
  return false;
}

namespace {

// ---------------------------------------------------------------------------------------------
// The loading rules verify re-derives on its own (not through the writer's code): how
// transformers names the checkpoint's keys in the task class, which modules PEFT wraps, the
// keys and shapes of the LoRA tensors it builds, and what bitsandbytes keeps in full precision.

// transformers' modeling_utils: a checkpoint none of whose keys starts with the task class's
// base_model_prefix is a base-class save, loaded with the prefix put in front of every key.
std::string task_prefix_of(const Architecture& a) {
  return a.task_nests_base ? a.base_model_prefix : std::string();
}

// PEFT's check_target_module_exists for a list: the module's full name equals an entry or ends
// with "." + entry.
bool peft_matches(const std::string& module, const json& targets) {
  for (const auto& t : targets) {
    if (!t.is_string()) continue;
    const std::string k = t.get<std::string>();
    if (module == k || (module.size() > k.size() && module.ends_with("." + k))) return true;
  }
  return false;
}

// bitsandbytes (transformers' _replace_with_bnb_linear): a module stays unquantized when its
// own name is listed, or a listed key followed by "." occurs in its full name, or equals it.
bool bnb_skips(const std::string& module, const std::vector<std::string>& skip) {
  const size_t dot = module.rfind('.');
  const std::string leaf = dot == std::string::npos ? module : module.substr(dot + 1);
  for (const auto& k : skip)
    if (leaf == k || module == k || module.find(k + ".") != std::string::npos) return true;
  return false;
}

// PEFT's names for the LoRA factors of a module, as saved (adapter name removed).
std::string lora_key(const std::string& module, const char* factor) {
  return "base_model.model." + module + "." + factor + ".weight";
}

std::string shape_text(const std::vector<int64_t>& s) {
  std::string o = "[";
  for (size_t i = 0; i < s.size(); ++i) o += (i ? ", " : "") + std::to_string(s[i]);
  return o + "]";
}

std::string py_list(const std::vector<std::string>& v) {
  std::string o = "[";
  for (size_t i = 0; i < v.size(); ++i) o += (i ? ", " : "") + ("\"" + v[i] + "\"");
  return o + "]";
}

std::vector<std::string> strings_of(const json& j) {
  std::vector<std::string> out;
  if (j.is_array())
    for (const auto& x : j)
      if (x.is_string()) out.push_back(x.get<std::string>());
  return out;
}

// One module PEFT wraps, with what it builds for it.
struct Wrapped {
  std::string module;  // task-class name
  bool conv1d = false;
  int64_t out_features = 0, in_features = 0;
};

// A weight of the original as the task class sees it.
struct Weight {
  size_t shard;
  const TensorInfo* t;
  std::string module;
};

// verify_layout() as named steps over one output directory and its original.
class Verifier {
 public:
  Verifier(const fs::path& out_dir, const fs::path& original_dir, Backend& be)
      : out_dir(out_dir), original_dir(original_dir), be(be) {}

  VerifyReport run() {
    read_records();
    Checkpoint orig = Checkpoint::open(original_dir);
    Checkpoint out = Checkpoint::open(out_dir);
    read_model(orig);
    if (orig.shard_names() != out.shard_names())
      problem(out_dir.string() + ": shard files differ from the original's");
    adapter = SafetensorsFile::open(out_dir / "loftq_init" / "adapter_model.safetensors");
    derive_wrapped(orig);
    check_adapter_config();
    check_numbering();
    std::map<std::string, std::pair<size_t, const TensorInfo*>> out_tensors;
    for (const auto& [s, t] : out.all_tensors()) out_tensors[t->name] = {s, t};
    for (const auto& w : weights) {
      auto it = out_tensors.find(w.t->name);
      if (it == out_tensors.end()) {
        problem("tensor '" + w.t->name + "' is missing from the output");
        continue;
      }
      check_tensor(orig.shard(w.shard), *w.t, out.shard(it->second.first), *it->second.second);
    }
    if (out_tensors.size() != weights.size())
      problem(out_dir.string() + ": the output has extra tensors");
    check_adapter_keys();
    check_coverage();
    check_records();
    check_card();
    check_files();
    return std::move(rep);
  }

 private:
  void problem(const std::string& s) { rep.problems.push_back(s); }

  // loftq.json and adapter_config.json.
  void read_records() {
    lj = json::parse(read_file(out_dir / "loftq.json"));
    acfg_path = out_dir / "loftq_init" / "adapter_config.json";
    acfg = json::parse(read_file(acfg_path));
    r = lj.at("rank").get<int>();
    alpha = lj.at("lora_alpha").get<double>();
    block = lj.at("block_size").get<int>();
    method = parse_method(lj.at("quant").get<std::string>());
    for (const auto& l : lj.at("layers")) recorded[l.at("tensor").get<std::string>()] = l;
    if (lj.contains("left_out"))
      for (const auto& l : lj["left_out"]) left_out.insert(l.value("tensor", ""));
    skip = strings_of(lj.value("llm_int8_skip_modules", json::array()));
  }

  // The original's config.json, its architecture and the task-class name of every tensor.
  void read_model(const Checkpoint& orig) {
    const fs::path cfg_path = original_dir / "config.json";
    config = json::parse(read_file(cfg_path));
    model_type = config.value("model_type", "");
    std::vector<std::string> names;
    for (const auto& [s, t] : orig.all_tensors()) names.push_back(t->name);
    if (const Architecture* a = find_architecture(model_type)) {
      arch = *a;
    } else {
      registered = false;
      arch = generic_architecture(model_type, config, names);
    }
    const std::string prefix = task_prefix_of(arch);
    base_save = !prefix.empty() && std::none_of(names.begin(), names.end(), [&](const auto& n) {
      return n.starts_with(prefix);
    });
    for (const auto& [s, t] : orig.all_tensors()) {
      const std::string tn = base_save ? prefix + "." + t->name : t->name;
      weights.push_back({s, t, tn.substr(0, tn.rfind('.'))});
    }
  }

  // Is a module of the original an embedding (never a Linear)? From the registry; for a type
  // outside it, by name.
  bool is_embedding(const std::string& module) const {
    const NeverTarget* n = never_target(arch, module);
    if (n) return n->kind == NeverKind::Embedding;
    if (registered) return false;
    const std::string leaf = module.substr(module.rfind('.') + 1);
    return leaf.find("embed") != std::string::npos || leaf == "wte" || leaf == "wpe" ||
           leaf == "shared";
  }

  // Which modules PEFT wraps: target_modules matched against the task class's module names.
  void derive_wrapped(const Checkpoint&) {
    const json tm = acfg.value("target_modules", json());
    if (tm.is_string()) {
      problem(acfg_path.string() +
              ": target_modules is a regular expression; verify checks "
              "only a list (as loftqd writes it)");
      return;
    }
    for (const auto& w : weights) {
      if (!w.t->name.ends_with(".weight") || !peft_matches(w.module, tm)) continue;
      const NeverTarget* n = never_target(arch, w.module);
      if (n && n->kind == NeverKind::Unused) continue;  // not a module of the task class
      if (is_embedding(w.module)) {
        problem("target_modules makes PEFT wrap '" + w.module +
                "', an nn.Embedding: PEFT's embedding LoRA has lora_embedding_A/B keys, "
                "which LoftQ never initializes (the embedding is not corrected)");
        continue;
      }
      if (w.t->shape.size() != 2) {
        problem("target_modules makes PEFT wrap '" + w.module + "', which is not a Linear layer (" +
                std::to_string(w.t->shape.size()) + "-D weight)");
        continue;
      }
      Wrapped x{w.module, is_conv1d(arch, w.module), w.t->shape[0], w.t->shape[1]};
      if (x.conv1d) std::swap(x.out_features, x.in_features);  // Conv1D: weight (in, out)
      any_conv1d |= x.conv1d;
      wrapped[w.t->name] = x;
      expected_keys.insert(lora_key(x.module, "lora_A"));
      expected_keys.insert(lora_key(x.module, "lora_B"));
    }
    if (wrapped.empty()) problem(acfg_path.string() + ": target_modules wrap no module");
  }

  // The adapter config against PEFT's fields, the registry and loftq.json.
  void check_adapter_config() {
    auto expect = [&](const char* key, const json& want, const std::string& why = "") {
      if (!acfg.contains(key) || acfg[key] != want)
        problem(acfg_path.string() + ": field '" + key + "' is " +
                (acfg.contains(key) ? acfg[key].dump() : "missing") + ", expected " + want.dump() +
                why);
    };
    expect("peft_type", "LORA");
    expect("r", r);
    expect("init_lora_weights", true);
    expect("bias", "none");
    expect("use_dora", false);
    expect("layers_to_transform", nullptr);
    expect("rank_pattern", json::object());
    expect("alpha_pattern", json::object());
    expect("target_modules", lj.at("target_modules"));
    expect("fan_in_fan_out", any_conv1d,
           any_conv1d ? " (the targets include Conv1D layers, whose weight is (in, out): PEFT "
                        "uses fan_in_fan_out and computes Q + s (B A)^T for them)"
                      : " (no target is a Conv1D)");
    if (registered) expect("task_type", arch.task_type, " (" + arch.task_class + ")");
    if (!acfg.contains("lora_alpha") || !acfg["lora_alpha"].is_number() ||
        acfg["lora_alpha"].get<double>() != alpha)
      problem(acfg_path.string() + ": field 'lora_alpha' does not match loftq.json (" +
              std::to_string(alpha) + ")");
    use_rslora = acfg.value("use_rslora", false);
    check_base_model();
  }

  // base_model_name_or_path: null, or a repo id AutoPeftModel can resolve, never a folder name.
  void check_base_model() {
    if (!acfg.contains("base_model_name_or_path")) {
      problem(acfg_path.string() + ": field 'base_model_name_or_path' is missing");
      return;
    }
    const json& b = acfg["base_model_name_or_path"];
    if (b.is_null()) return;
    const std::string v = b.is_string() ? b.get<std::string>() : b.dump();
    std::string why;
    if (!b.is_string() || repo_id_problem(v))
      why = "not a repo id";
    else
      for (const fs::path& d : {out_dir, original_dir})
        if (v == fs::absolute(d).lexically_normal().filename().string())
          why = "the name of the folder '" + d.string() + "'";
    if (!why.empty())
      problem(acfg_path.string() + ": base_model_name_or_path '" + v + "' is " + why +
              ", which AutoPeftModel cannot resolve (use the repo id the layout is published "
              "to, or null)");
  }

  // The bit plan's numbering: stacks one after the other, depths from config.json.
  void check_numbering() {
    std::vector<int> depth(arch.stacks.size(), 0), first(arch.stacks.size(), 0);
    for (const auto& w : weights)
      if (auto p = locate_layer(arch, w.module))
        depth[p->stack] = std::max(depth[p->stack], p->layer + 1);
    int total = 0;
    for (size_t i = 0; i < arch.stacks.size(); ++i) {
      std::string field;
      if (auto d = config_depth(arch.stacks[i], config, &field); d && *d != depth[i])
        problem((original_dir / "config.json").string() + ": " + field + " is " +
                std::to_string(*d) + " but the tensors under '" + arch.stacks[i].path + "' hold " +
                std::to_string(depth[i]) + " layer(s)");
      first[i] = total;
      total += depth[i];
    }
    if (lj.value("num_layers", -1) != total)
      problem("loftq.json: num_layers is " + lj.value("num_layers", json()).dump() +
              ", the model has " + std::to_string(total) + " layers in its stacks");
    for (const auto& w : weights) {
      auto rec = recorded.find(w.t->name);
      if (rec == recorded.end()) continue;
      const auto p = locate_layer(arch, w.module);
      const json want = p ? json(first[p->stack] + p->layer) : json(nullptr);
      if (rec->second.value("layer", json()) != want)
        problem("loftq.json numbers '" + w.t->name + "' as layer " +
                rec->second.value("layer", json()).dump() + ", expected " + want.dump() +
                (p ? " (layer " + std::to_string(p->layer) + " of stack '" +
                         arch.stacks[p->stack].name + "', which starts at " +
                         std::to_string(first[p->stack]) + ")"
                   : ""));
    }
    check_average();
  }

  // --avg-bits: the recorded bits average, weighted by parameters, is what loftq.json says
  // and (without --override rules) within 0.05 bits of the request, or of one module group.
  void check_average() {
    if (!lj.contains("avg_bits")) return;
    double sum = 0, params = 0, largest = 0;
    std::map<std::pair<int, std::string>, double> groups;
    for (const auto& [name, l] : recorded) {
      const auto sh = l.value("shape", json::array());
      if (sh.size() != 2) continue;
      const double n = sh[0].get<double>() * sh[1].get<double>();
      sum += l.value("bits", 0) * n;
      params += n;
      if (l.value("layer", json()).is_number())
        largest = std::max(largest, groups[{l["layer"].get<int>(), l.value("module", "")}] += n);
    }
    if (params <= 0) return;
    const double got = sum / params, asked = lj["avg_bits"].value("requested", 0.0);
    if (std::fabs(got - lj["avg_bits"].value("achieved", -1.0)) > 1e-6)
      problem("loftq.json: avg_bits.achieved is " +
              lj["avg_bits"].value("achieved", json()).dump() + ", the layers average " +
              std::to_string(got) + " bits");
    const double bound = std::max(0.05, largest / params) + 1e-6;
    if (!lj["avg_bits"].value("overrides", false) && std::fabs(got - asked) > bound)
      problem("loftq.json: --avg-bits " + std::to_string(asked) + " gave " + std::to_string(got) +
              " bits on average (weighted by parameters)");
  }

  // One tensor of the original against the output: what PEFT does not wrap byte for byte,
  // what it wraps through its effective weight.
  void check_tensor(const SafetensorsFile& in, const TensorInfo& t, const SafetensorsFile& of,
                    const TensorInfo& ot) {
    const std::string where = of.path().string() + ": tensor '" + t.name + "'";
    if (ot.dtype != t.dtype || ot.shape != t.shape) {
      problem(where + ": dtype/shape differ from the original");
      return;
    }
    auto w = wrapped.find(t.name);
    if (w == wrapped.end()) {
      const auto a = in.bytes(t), b = of.bytes(ot);
      if (!std::equal(a.begin(), a.end(), b.begin(), b.end()))
        problem(where +
                ": PEFT does not wrap it (target_modules), but its bytes differ from "
                "the original's");
    } else {
      check_target(in, t, of, ot, w->second, where);
    }
    in.release(t);
    of.release(ot);
  }

  // The LoRA tensors PEFT will load into a wrapped module: keys and shapes.
  std::pair<const TensorInfo*, const TensorInfo*> factors_of(const Wrapped& w,
                                                             const TensorInfo& t) {
    const TensorInfo* ta = adapter->find(lora_key(w.module, "lora_A"));
    const TensorInfo* tb = adapter->find(lora_key(w.module, "lora_B"));
    if (!ta || !tb) {
      problem(adapter->path().string() + ": PEFT wraps '" + w.module + "' and loads '" +
              lora_key(w.module, ta ? "lora_B" : "lora_A") +
              "', which is missing: its LoftQ correction would not be loaded");
      return {nullptr, nullptr};
    }
    seen_adapter.insert(ta->name);
    seen_adapter.insert(tb->name);
    const std::vector<int64_t> want_a{r, w.in_features}, want_b{w.out_features, r};
    if (ta->shape != want_a || tb->shape != want_b || ta->dtype != t.dtype ||
        tb->dtype != t.dtype) {
      problem(adapter->path().string() + ": PEFT builds lora_A " + shape_text(want_a) +
              " and lora_B " + shape_text(want_b) + " (" + std::string(dtype_name(t.dtype)) +
              ") for '" + w.module + "'" +
              (w.conv1d ? " (a Conv1D, weight stored (in, out))" : "") + "; the adapter has " +
              shape_text(ta->shape) + " and " + shape_text(tb->shape));
      return {nullptr, nullptr};
    }
    return {ta, tb};
  }

  void check_target(const SafetensorsFile& in, const TensorInfo& t, const SafetensorsFile& of,
                    const TensorInfo& ot, const Wrapped& wr, const std::string& where) {
    auto rec_it = recorded.find(t.name);
    if (rec_it == recorded.end()) {
      problem(where + ": PEFT wraps '" + wr.module + "' but loftq.json has no record of it");
      return;
    }
    const json& rec = rec_it->second;
    const auto [ta, tb] = factors_of(wr, t);
    if (!ta) return;
    const int m = static_cast<int>(wr.out_features), n = static_cast<int>(wr.in_features);
    const size_t mn = size_t(m) * n;
    const int bits = rec.at("bits").get<int>();
    const QuantSpec spec{method, bits, block};
    VerifyLayer vl;
    vl.report.tensor = t.name;
    vl.report.layer = rec.value("layer", json()).is_number()
                          ? std::optional<int>(rec["layer"].get<int>())
                          : std::nullopt;
    vl.report.module = module_leaf(t.name);
    vl.report.module_path = wr.module;
    vl.report.conv1d = wr.conv1d;
    vl.report.quant = spec_name(spec);
    vl.report.bits = bits;
    vl.report.out_features = m;
    vl.report.in_features = n;
    vl.report.qlora_error = rec.at("qlora_error").get<double>();
    vl.report.best_iter = rec.at("best_iter").get<int>();
    vl.recorded_error = rec.at("loftq_error").get<double>();
    // In PEFT's and bitsandbytes' orientation (out, in): a Conv1D's stored (in, out) weight and
    // Q transposed, so the effective weight is W' = Q + s B A there, i.e. Q + s (B A)^T as stored.
    std::vector<float> w = in.read_f32(t), q = of.read_f32(ot);
    if (wr.conv1d) {
      w = quant::transposed(w, size_t(n), size_t(m));
      q = quant::transposed(q, size_t(n), size_t(m));
    }
    const auto table = code_table(method, bits);
    for (size_t blk = 0; blk + block <= mn && vl.representable; blk += block)
      vl.representable =
          block_representable(q.data() + blk, block, table, t.dtype, method == QuantMethod::NF);
    if (!vl.representable) problem(where + ": a block is not representable in " + spec_name(spec));
    effective_errors(vl, w, q, *ta, *tb, t.dtype);
    const double tol = t.dtype == DType::F32 ? 1e-5 : t.dtype == DType::F16 ? 2e-3 : 8e-3;
    if (vl.effective_error > vl.recorded_error + tol)
      problem(where + ": the effective weight PEFT computes (Q + s B A" +
              (wr.conv1d ? std::string(", transposed for Conv1D") : "") + ") has error " +
              std::to_string(vl.effective_error) + ", which exceeds the recorded " +
              std::to_string(vl.recorded_error));
    if (vl.recorded_error > vl.report.qlora_error + 1e-9)
      problem(where + ": recorded LoftQ error is above the QLoRA error");
    vl.report.loftq_error = vl.effective_error;
    rep.layers.push_back(vl);
  }

  // ||W - (Q + s B A)|| / ||W|| from the files, and the same after an NF4 round trip of Q.
  void effective_errors(VerifyLayer& vl, const std::vector<float>& w, const std::vector<float>& q,
                        const TensorInfo& ta, const TensorInfo& tb, DType dtype) {
    const int m = vl.report.out_features, n = vl.report.in_features;
    const size_t mn = size_t(m) * n;
    std::vector<float> a = adapter->read_f32(ta), b = adapter->read_f32(tb);
    auto bw = be.alloc(mn), bq = be.alloc(mn), ba = be.alloc(size_t(r) * n),
         bb = be.alloc(size_t(m) * r);
    be.upload(*bw, w.data(), mn);
    be.upload(*ba, a.data(), a.size());
    be.upload(*bb, b.data(), b.size());
    const double wn = std::sqrt(std::max(be.sq_norm(*bw, mn), 1e-300));
    const float sc = static_cast<float>(use_rslora ? alpha / std::sqrt(double(r)) : alpha / r);
    auto eff_err = [&](const std::vector<float>& qv) {
      be.upload(*bq, qv.data(), mn);
      be.gemm(false, false, m, n, r, sc, *bb, *ba, 1.0f, *bq);  // Q + s B A
      return std::sqrt(be.sq_dist(*bw, *bq, mn)) / wn;
    };
    vl.effective_error = eff_err(q);
    std::vector<float> q4(mn);
    quant_dequant(QuantSpec{QuantMethod::NF, 4, 64}, q.data(), mn, q4.data(), 1);
    round_to_dtype(dtype, q4.data(), mn);
    vl.nf4_reload_error = eff_err(q4);
  }

  // Adapter tensors PEFT would not load anywhere (it ignores them, with a warning).
  void check_adapter_keys() {
    const std::string prefix = task_prefix_of(arch);
    for (const auto& t : adapter->tensors()) {
      if (seen_adapter.count(t.name)) continue;
      std::string hint;
      constexpr std::string_view kBase = "base_model.model.";
      if (!prefix.empty() && t.name.starts_with(kBase)) {
        const std::string with = std::string(kBase) + prefix + "." + t.name.substr(kBase.size());
        if (expected_keys.count(with))
          hint = " (PEFT's key is '" + with + "': the task class names the module with the '" +
                 prefix + ".' prefix)";
      }
      if (t.name.find("lora_embedding") != std::string::npos)
        hint = " (an embedding LoRA, which LoftQ never initializes)";
      problem(adapter->path().string() + ": tensor '" + t.name +
              "' names no module PEFT wraps, so it would not be loaded" + hint);
    }
  }

  // Every weight the loader quantizes (bitsandbytes load_in_4bit: each Linear and Conv1D but
  // what llm_int8_skip_modules, or by default the head, and _keep_in_fp32_modules keep) has a
  // LoftQ correction; what the skip list keeps in full precision is recorded as left out.
  void check_coverage() {
    std::vector<std::string> keep = skip;
    if (keep.empty())
      for (const auto& n : arch.never)
        if (n.kind == NeverKind::Head) keep.push_back(n.module);
    for (const auto& k : arch.keep_fp32) keep.push_back(k);
    for (const auto& w : weights) {
      if (!w.t->name.ends_with(".weight") || w.t->shape.size() != 2) continue;
      if (wrapped.count(w.t->name) || is_embedding(w.module)) continue;
      const NeverTarget* n = never_target(arch, w.module);
      if (n && n->kind == NeverKind::Unused) continue;
      if (!bnb_skips(w.module, keep)) {
        problem("'" + w.t->name + "' (" + w.module +
                ") is quantized by the loader but carries no LoftQ correction and is not left "
                "out (llm_int8_skip_modules)" +
                (n ? std::string(" [") + std::string(never_kind_name(n->kind)) + "]" : ""));
      } else if (!left_out.count(w.t->name) && !(n && n->kind == NeverKind::Head) &&
                 !bnb_skips(w.module, arch.keep_fp32)) {
        problem("'" + w.t->name +
                "' is kept in full precision without a LoftQ correction but "
                "loftq.json does not list it under left_out");
      }
    }
    for (const auto& name : left_out)
      if (wrapped.count(name))
        problem("loftq.json lists '" + name + "' as left out, but PEFT wraps it");
  }

  // loftq.json's layers are exactly what PEFT wraps.
  void check_records() {
    for (const auto& [name, l] : recorded)
      if (!wrapped.count(name))
        problem("loftq.json lists '" + name + "', which PEFT does not wrap (target_modules)");
  }

  // The card loads the task's class, with the skip list, and cites LoftQ.
  void check_card() {
    const fs::path card = out_dir / "README.md";
    if (!fs::exists(card)) {
      problem(out_dir.string() + ": README.md (model card) is missing");
      return;
    }
    const std::string text = read_file(card);
    const std::string cls = auto_class_for(arch.task_type);
    if (text.find(cls + ".from_pretrained(") == std::string::npos)
      problem(card.string() + ": the loading snippet does not use " + cls + " (task class " +
              arch.task_class + ")");
    if (!skip.empty() && text.find("llm_int8_skip_modules=" + py_list(skip)) == std::string::npos)
      problem(card.string() +
              ": the loading snippet does not pass llm_int8_skip_modules=" + py_list(skip));
    for (const char* need : {"2310.08659", "library_name: peft"})
      if (text.find(need) == std::string::npos)
        problem(card.string() + ": missing '" + std::string(need) + "'");
  }

  // Files of the original that must be copied unchanged.
  void check_files() {
    for (const auto& name : passthrough_files(original_dir)) {
      if (!fs::exists(out_dir / name)) {
        problem(out_dir.string() + ": file '" + name + "' was not copied");
      } else if (read_file(out_dir / name) != read_file(original_dir / name)) {
        problem(out_dir.string() + ": file '" + name + "' differs from the original");
      }
    }
  }

  const fs::path& out_dir;
  const fs::path& original_dir;
  Backend& be;
  VerifyReport rep;
  json lj, acfg, config;
  fs::path acfg_path;
  int r = 0, block = 0;
  double alpha = 0;
  bool use_rslora = false;
  QuantMethod method = QuantMethod::NF;
  std::map<std::string, json> recorded;
  std::set<std::string> left_out;
  std::vector<std::string> skip;
  std::string model_type;
  Architecture arch;
  bool registered = true, base_save = false, any_conv1d = false;
  std::vector<Weight> weights;
  std::map<std::string, Wrapped> wrapped;  // by original tensor name
  std::unique_ptr<SafetensorsFile> adapter;
  std::set<std::string> seen_adapter, expected_keys;
};

}  // namespace

VerifyReport verify_layout(const fs::path& out_dir, const fs::path& original_dir, Backend& be) {
  return Verifier(out_dir, original_dir, be).run();
}

std::string verify_table(const VerifyReport& r) {
  std::ostringstream o;
  size_t w = 6;
  for (const auto& l : r.layers) w = std::max(w, l.report.tensor.size());
  char buf[512];
  std::snprintf(buf, sizeof buf, "%-*s %5s %-9s %11s %11s %11s %11s %5s\n", int(w), "tensor",
                "layer", "quant", "qlora_err", "recorded", "effective", "nf4_reload", "repr");
  o << buf;
  for (const auto& l : r.layers) {
    const std::string layer = l.report.layer ? std::to_string(*l.report.layer) : "-";
    std::snprintf(buf, sizeof buf, "%-*s %5s %-9s %11.6f %11.6f %11.6f %11.6f %5s\n", int(w),
                  l.report.tensor.c_str(), layer.c_str(), l.report.quant.c_str(),
                  l.report.qlora_error, l.recorded_error, l.effective_error, l.nf4_reload_error,
                  l.representable ? "ok" : "NO");
    o << buf;
  }
  return o.str();
}

}  // namespace loftqd::convert
