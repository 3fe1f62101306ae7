// Model naming conventions: module paths from tensor names, PEFT's target matching rule, and
// the registry's default targets and task types by config.json model_type (model/registry.h).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace loftqd::model {

// Layer index parsed from a tensor name: the number after the first `layers.`, `layer.`,
// `h.`, `block.` or `blocks.` component (model.layers.3., model.decoder.layers.3.,
// encoder.layer.3., encoder.block.3.layer.0., transformer.h.3.). nullopt when there is none.
// This is the index within one stack; the bit plan's numbering over several stacks comes from
// the registry (model::locate_layer).
std::optional<int> layer_index(std::string_view tensor_name);

// "model.layers.3.self_attn.q_proj.weight" -> "model.layers.3.self_attn.q_proj".
std::string module_path(std::string_view tensor_name);
// Last dotted component of the module path ("q_proj").
std::string module_leaf(std::string_view tensor_name);

// The registry's default target modules for a model_type (every linear of the blocks); empty if
// the model_type is not registered.
std::vector<std::string> default_target_modules(std::string_view model_type);
// PEFT task_type for a model_type: CAUSAL_LM, SEQ_2_SEQ_LM or SEQ_CLS (CAUSAL_LM if unknown).
std::string default_task_type(std::string_view model_type);
// Is this tensor the weight of a target module? (PEFT's rule: the module path equals a target
// or ends with "." + target.)
bool is_target_weight(std::string_view tensor_name, const std::vector<std::string>& targets);

}  // namespace loftqd::model
