// Model naming conventions: layer indices and module paths from tensor names, default LoftQ
// targets and PEFT task types by config.json model_type (DESIGN §3.2, §4 "Bit plan").
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace loftqd::model {

// Layer index parsed from a tensor name: the number after the first `layers.`, `layer.`,
// `h.`, `block.` or `blocks.` component (model.layers.3., model.decoder.layers.3.,
// encoder.layer.3., encoder.block.3.layer.0., transformer.h.3.). nullopt when there is none.
std::optional<int> layer_index(std::string_view tensor_name);

// "model.layers.3.self_attn.q_proj.weight" -> "model.layers.3.self_attn.q_proj".
std::string module_path(std::string_view tensor_name);
// Last dotted component of the module path ("q_proj").
std::string module_leaf(std::string_view tensor_name);

// Target modules as the LoftQ authors use them, by config.json model_type; empty if unknown.
std::vector<std::string> default_target_modules(std::string_view model_type);
// PEFT task_type for a model_type: CAUSAL_LM, SEQ_2_SEQ_LM or SEQ_CLS.
std::string default_task_type(std::string_view model_type);
// Is this tensor the weight of a target module? (PEFT's rule: the module path equals a target
// or ends with "." + target.)
bool is_target_weight(std::string_view tensor_name, const std::vector<std::string>& targets);

}  // namespace loftqd::model
