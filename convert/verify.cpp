#include "convert/verify.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>
#include <sstream>

#include "common/fs.h"
#include "model/naming.h"
#include "model/safetensors.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace loftqd::convert {

using namespace loftqd::model;  // NOLINT: safetensors, dtypes, naming
using namespace loftqd::quant;  // NOLINT: quantizers, bit plans, LoftQ, backends

using common::read_file;

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

// verify_layout() as named steps over one output directory and its original.
class Verifier {
 public:
  Verifier(const fs::path& out_dir, const fs::path& original_dir, Backend& be)
      : out_dir(out_dir), original_dir(original_dir), be(be) {}

  VerifyReport run() {
    read_records();
    check_adapter_config();
    Checkpoint orig = Checkpoint::open(original_dir);
    Checkpoint out = Checkpoint::open(out_dir);
    if (orig.shard_names() != out.shard_names())
      problem(out_dir.string() + ": shard files differ from the original's");
    adapter = SafetensorsFile::open(out_dir / "loftq_init" / "adapter_model.safetensors");
    std::map<std::string, std::pair<size_t, const TensorInfo*>> out_tensors;
    for (const auto& [s, t] : out.all_tensors()) out_tensors[t->name] = {s, t};
    for (const auto& [s, t] : orig.all_tensors()) {
      auto it = out_tensors.find(t->name);
      if (it == out_tensors.end()) {
        problem("tensor '" + t->name + "' is missing from the output");
        continue;
      }
      check_tensor(orig.shard(s), *t, out.shard(it->second.first), *it->second.second);
    }
    if (out_tensors.size() != orig.all_tensors().size())
      problem(out_dir.string() + ": the output has extra tensors");
    check_leftovers();
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
  }

  // The adapter config against PEFT's fields and loftq.json.
  void check_adapter_config() {
    auto expect = [&](const char* key, const json& want) {
      if (!acfg.contains(key) || acfg[key] != want)
        problem(acfg_path.string() + ": field '" + key + "' is " +
                (acfg.contains(key) ? acfg[key].dump() : "missing") + ", expected " + want.dump());
    };
    expect("peft_type", "LORA");
    expect("r", r);
    expect("init_lora_weights", true);
    expect("bias", "none");
    expect("fan_in_fan_out", false);
    expect("target_modules", lj.at("target_modules"));
    if (!acfg.contains("lora_alpha") || !acfg["lora_alpha"].is_number() ||
        acfg["lora_alpha"].get<double>() != alpha)
      problem(acfg_path.string() + ": field 'lora_alpha' does not match loftq.json (" +
              std::to_string(alpha) + ")");
    static const std::set<std::string> kTasks = {"CAUSAL_LM", "SEQ_2_SEQ_LM", "SEQ_CLS",
                                                 "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION"};
    if (!acfg.contains("task_type") || !acfg["task_type"].is_string() ||
        !kTasks.count(acfg["task_type"].get<std::string>()))
      problem(acfg_path.string() + ": field 'task_type' is missing or unknown");
    if (!acfg.contains("base_model_name_or_path") || !acfg["base_model_name_or_path"].is_string())
      problem(acfg_path.string() + ": field 'base_model_name_or_path' is missing");
  }

  // One tensor of the original against the output: non-targets byte for byte, targets through
  // their effective weight.
  void check_tensor(const SafetensorsFile& in, const TensorInfo& t, const SafetensorsFile& of,
                    const TensorInfo& ot) {
    const std::string where = of.path().string() + ": tensor '" + t.name + "'";
    if (ot.dtype != t.dtype || ot.shape != t.shape) {
      problem(where + ": dtype/shape differ from the original");
      return;
    }
    auto rec = recorded.find(t.name);
    if (rec == recorded.end()) {
      const auto a = in.bytes(t), b = of.bytes(ot);
      if (!std::equal(a.begin(), a.end(), b.begin(), b.end()))
        problem(where + ": not a target, but bytes differ");
    } else {
      check_target(in, t, of, ot, rec->second, where);
    }
    in.release(t);
    of.release(ot);
  }

  void check_target(const SafetensorsFile& in, const TensorInfo& t, const SafetensorsFile& of,
                    const TensorInfo& ot, const json& rec, const std::string& where) {
    // A target: recompute the effective weight.
    const int m = static_cast<int>(t.shape[0]), n = static_cast<int>(t.shape[1]);
    const size_t mn = size_t(m) * n;
    const int bits = rec.at("bits").get<int>();
    const QuantSpec spec{method, bits, block};
    VerifyLayer vl;
    vl.report.tensor = t.name;
    vl.report.layer = layer_index(t.name);
    vl.report.module = module_leaf(t.name);
    vl.report.quant = spec_name(spec);
    vl.report.bits = bits;
    vl.report.out_features = m;
    vl.report.in_features = n;
    vl.report.qlora_error = rec.at("qlora_error").get<double>();
    vl.report.best_iter = rec.at("best_iter").get<int>();
    vl.recorded_error = rec.at("loftq_error").get<double>();
    const auto* ta = adapter->find(lora_a_key(t.name));
    const auto* tb = adapter->find(lora_b_key(t.name));
    if (!ta || !tb) {
      problem(adapter->path().string() + ": no lora_A/lora_B for '" + t.name + "'");
      return;
    }
    seen_adapter.insert(ta->name);
    seen_adapter.insert(tb->name);
    if (ta->shape != std::vector<int64_t>{r, n} || tb->shape != std::vector<int64_t>{m, r} ||
        ta->dtype != t.dtype || tb->dtype != t.dtype) {
      problem(adapter->path().string() + ": lora_A/lora_B of '" + t.name +
              "' have the wrong shape or dtype");
      return;
    }
    std::vector<float> w = in.read_f32(t), q = of.read_f32(ot);
    std::vector<float> a = adapter->read_f32(*ta), b = adapter->read_f32(*tb);
    const auto table = code_table(method, bits);
    for (size_t blk = 0; blk + block <= mn && vl.representable; blk += block)
      vl.representable =
          block_representable(q.data() + blk, block, table, t.dtype, method == QuantMethod::NF);
    if (!vl.representable) problem(where + ": a block is not representable in " + spec_name(spec));

    auto bw = be.alloc(mn), bq = be.alloc(mn), ba = be.alloc(size_t(r) * n),
         bb = be.alloc(size_t(m) * r);
    be.upload(*bw, w.data(), mn);
    be.upload(*ba, a.data(), a.size());
    be.upload(*bb, b.data(), b.size());
    const double wn = std::sqrt(std::max(be.sq_norm(*bw, mn), 1e-300));
    const float sc = static_cast<float>(alpha / r);
    auto eff_err = [&](const std::vector<float>& qv) {
      be.upload(*bq, qv.data(), mn);
      be.gemm(false, false, m, n, r, sc, *bb, *ba, 1.0f, *bq);  // Q + (alpha/r) B A
      return std::sqrt(be.sq_dist(*bw, *bq, mn)) / wn;
    };
    vl.effective_error = eff_err(q);
    std::vector<float> q4(mn);
    quant_dequant(QuantSpec{QuantMethod::NF, 4, 64}, q.data(), mn, q4.data(), 1);
    round_to_dtype(t.dtype, q4.data(), mn);
    vl.nf4_reload_error = eff_err(q4);
    // The files may only lose what the dtype's rounding costs.
    const double tol = t.dtype == DType::F32 ? 1e-5 : t.dtype == DType::F16 ? 2e-3 : 8e-3;
    if (vl.effective_error > vl.recorded_error + tol)
      problem(where + ": effective error " + std::to_string(vl.effective_error) +
              " exceeds the recorded " + std::to_string(vl.recorded_error));
    if (vl.recorded_error > vl.report.qlora_error + 1e-9)
      problem(where + ": recorded LoftQ error is above the QLoRA error");
    vl.report.loftq_error = vl.effective_error;
    rep.layers.push_back(vl);
  }

  // Records without a tensor, adapter tensors without a target, files not copied.
  void check_leftovers() {
    for (const auto& entry : recorded) {
      const std::string& name = entry.first;  // (clang 14 cannot capture a structured binding)
      if (!std::any_of(rep.layers.begin(), rep.layers.end(),
                       [&](const VerifyLayer& v) { return v.report.tensor == name; }))
        if (!std::any_of(rep.problems.begin(), rep.problems.end(),
                         [&](const std::string& p) { return p.find(name) != std::string::npos; }))
          problem("loftq.json lists '" + name + "', which is not a weight of the original");
    }
    for (const auto& t : adapter->tensors())
      if (!seen_adapter.count(t.name))
        problem(adapter->path().string() + ": unexpected tensor '" + t.name + "'");
    for (const auto& name : passthrough_files(original_dir)) {
      if (!fs::exists(out_dir / name)) {
        problem(out_dir.string() + ": file '" + name + "' was not copied");
      } else if (read_file(out_dir / name) != read_file(original_dir / name)) {
        problem(out_dir.string() + ": file '" + name + "' differs from the original");
      }
    }
    if (!fs::exists(out_dir / "README.md"))
      problem(out_dir.string() + ": README.md (model card) is missing");
  }

  const fs::path& out_dir;
  const fs::path& original_dir;
  Backend& be;
  VerifyReport rep;
  json lj, acfg;
  fs::path acfg_path;
  int r = 0, block = 0;
  double alpha = 0;
  QuantMethod method = QuantMethod::NF;
  std::map<std::string, json> recorded;
  std::unique_ptr<SafetensorsFile> adapter;
  std::set<std::string> seen_adapter;
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
