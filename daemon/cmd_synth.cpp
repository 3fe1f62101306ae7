// `loftqd synth OUT_DIR`: a deterministic synthetic checkpoint.
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "daemon/commands.h"
#include "model/registry.h"
#include "model/synth.h"

namespace loftqd::daemon {

namespace {

struct SynthArgs {
  model::SynthOptions opt;
  std::string dtype = "bf16";
  std::string out;
};

model::DType parse_dtype_flag(const std::string& s) {
  if (s == "bf16" || s == "bfloat16") return model::DType::BF16;
  if (s == "f16" || s == "fp16" || s == "float16") return model::DType::F16;
  if (s == "f32" || s == "fp32" || s == "float32") return model::DType::F32;
  throw std::invalid_argument("--dtype must be bf16, f16 or f32 (got '" + s + "')");
}

int synth(SynthArgs& a) {
  a.opt.dtype = parse_dtype_flag(a.dtype);
  model::synth_checkpoint(a.opt, a.out);
  std::printf("wrote synthetic %s checkpoint to %s\n", a.opt.arch.c_str(), a.out.c_str());
  return kExitOk;
}

}  // namespace

Command add_synth_command(CLI::App& app) {
  auto a = std::make_shared<SynthArgs>();
  auto* c = app.add_subcommand("synth", "write a deterministic synthetic checkpoint");
  std::vector<std::string> types;
  for (const auto& arch : model::architectures()) types.push_back(arch.model_type);
  c->add_option("--arch", a->opt.arch, "a registry model_type: " + model::known_model_types())
      ->check(CLI::IsMember(types));
  c->add_option("--layers", a->opt.layers, "number of layers (the encoder's for encoder-decoders)");
  c->add_option("--decoder-layers", a->opt.decoder_layers,
                "encoder-decoders: the decoder's layers (0 = --layers)");
  c->add_option("--experts", a->opt.experts, "MoE architectures: experts per block");
  c->add_flag("--base-class", a->opt.base_class,
              "save as the base class (LlamaModel, ...): keys without the task prefix, no head");
  c->add_option("--name-or-path", a->opt.name_or_path, "config.json _name_or_path");
  c->add_option("--hidden", a->opt.hidden, "hidden size");
  c->add_option("--intermediate", a->opt.intermediate, "MLP size");
  c->add_option("--heads", a->opt.heads, "attention heads");
  c->add_option("--kv-heads", a->opt.kv_heads, "key/value heads (llama-like; 0 = heads)");
  c->add_option("--vocab", a->opt.vocab, "vocabulary size");
  c->add_option("--dtype", a->dtype, "bf16 | f16 | f32");
  c->add_option("--shards", a->opt.shards, "number of safetensors shards");
  c->add_option("--seed", a->opt.seed, "random seed");
  c->add_option("OUT_DIR", a->out, "output directory (must not exist or be empty)")->required();
  return {c, [a] { return synth(*a); }};
}

}  // namespace loftqd::daemon
