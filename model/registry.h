// The architecture registry: one table, per config.json model_type, of how transformers names
// and loads a checkpoint and what LoftQ does with each of its weights (docs/compatibility.md).
//
// The rule it serves: the published backbone is loaded by a quantizing loader (bitsandbytes
// load_in_4bit: every nn.Linear and Conv1D except the modules it keeps), so every weight that
// loader quantizes must carry a LoftQ correction or be listed as left out (loftq.json, the card
// and llm_int8_skip_modules in the loading snippet).
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace loftqd::model {

// One stack of repeated blocks: layer i is the module PATH.i (task-class naming).
struct LayerStack {
  std::string name;  // "layers", "encoder", "decoder"
  std::string path;  // "model.layers", "model.decoder.layers", "encoder.block"
  std::vector<std::string>
      count_fields;  // config.json fields giving its depth; first non-null wins
};

// Why a module is never a LoftQ target.
enum class NeverKind {
  Embedding,  // nn.Embedding: the loader does not quantize it; PEFT's embedding LoRA has other keys
  Head,       // the output head: the loader keeps it in full precision by default
  Router,     // an MoE router: left in full precision (listed in llm_int8_skip_modules)
  TaskExtra,  // a task-class module the loader would quantize but LoftQ never corrects (listed)
  Unused,     // in the checkpoint but not in the task class (a pretraining head): not loaded
};
std::string_view never_kind_name(NeverKind k);  // "embedding", "head", ...

struct NeverTarget {
  NeverKind kind;
  // Embedding, Router: a module leaf name ("embed_tokens", "gate"). Head, TaskExtra, Unused: a
  // task-class module path, matching itself and everything below it ("lm_head", "cls").
  std::string module;
  std::string reason;
};

struct Architecture {
  std::string model_type;         // config.json model_type
  std::string models;             // published models of this type (for the docs)
  std::string task_type;          // PEFT task_type: CAUSAL_LM, SEQ_2_SEQ_LM or SEQ_CLS
  std::string task_class;         // the class the model card loads ("LlamaForCausalLM")
  std::string base_class;         // the headless base class ("LlamaModel")
  std::string base_model_prefix;  // transformers' PreTrainedModel.base_model_prefix
  // Whether the task class holds the base model under base_model_prefix (false for T5, whose
  // task class has shared/encoder/decoder at its top level).
  bool task_nests_base = true;
  std::vector<LayerStack> stacks;    // in numbering order (encoder before decoder)
  std::vector<std::string> targets;  // default target_modules: every linear of the blocks
  std::vector<std::string> conv1d;  // leaves that are transformers Conv1D (weight stored (in, out))
  std::vector<NeverTarget> never;
  std::vector<std::string> keep_fp32;  // _keep_in_fp32_modules: leaves the loader never quantizes
};

// Every registered architecture, sorted by model_type.
const std::vector<Architecture>& architectures();
// The entry for a model_type, or null.
const Architecture* find_architecture(std::string_view model_type);
// "bart, bert, deberta-v2, ..." for messages.
std::string known_model_types();

// The transformers Auto class of a PEFT task type ("AutoModelForCausalLM", ...) and the Hub
// pipeline tag ("text-generation", ...).
std::string auto_class_for(std::string_view task_type);
std::string pipeline_tag_for(std::string_view task_type);

// For a model_type outside the registry (used only with explicit --target-modules): the task
// type and class from config.json "architectures", no prefix, and one stack per distinct module
// path in front of a layer index (layers./layer./h./block./blocks.), counted from the tensors
// (or num_hidden_layers when there is a single stack).
Architecture generic_architecture(const std::string& model_type, const nlohmann::json& config,
                                  const std::vector<std::string>& tensor_names);

// The task class's name prefix ("model", "transformer", ...; "" when it does not nest the base).
std::string task_prefix(const Architecture& a);
// transformers' rule: a checkpoint none of whose keys starts with the prefix is a base-class save,
// and loading it into the task class puts every key under "PREFIX.".
bool is_base_class_save(const Architecture& a, const std::vector<std::string>& tensor_names);
// A checkpoint key as the task class names it.
std::string task_name(const Architecture& a, bool base_class_save, std::string_view key);

// Position of a task-class module path in the layer stacks: the stack (index into stacks) and
// the layer within it. nullopt outside the stacks.
struct LayerPos {
  size_t stack = 0;
  int layer = 0;
};
std::optional<LayerPos> locate_layer(const Architecture& a, std::string_view task_module);

// A stack's depth from config.json (the first of count_fields that is an integer), and which
// field gave it.
std::optional<int> config_depth(const LayerStack& s, const nlohmann::json& config,
                                std::string* field = nullptr);

// The never-target entry that covers a task-class module path, or null.
const NeverTarget* never_target(const Architecture& a, std::string_view task_module);
// Is this module a Conv1D (by its leaf)?
bool is_conv1d(const Architecture& a, std::string_view task_module);

}  // namespace loftqd::model
