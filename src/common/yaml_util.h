// The one way bitbench reads a YAML file (experiments, model/method/dataset configs, tuned.yaml,
// published figures): errors name file:line, a repeated key anywhere is refused (yaml-cpp keeps
// both entries and node[key] silently returns the first), unknown keys list the allowed ones.
#pragma once
#include <yaml-cpp/yaml.h>

#include <string>
#include <vector>

namespace bb {

// "file:line" of a node (yaml-cpp marks are 0-based); just "file" when the node has no mark.
std::string yaml_at(const std::string& file, const YAML::Node& n);

// A key repeated in any mapping of n (at any depth) is an error naming both lines.
void yaml_check_unique_keys(const std::string& file, const YAML::Node& n);

// Loads `path`, which must be a regular file holding a mapping without repeated keys. `what`
// names the file in errors ("config file", "dataset file", ...). Parse errors give line:column.
YAML::Node yaml_load_map(const std::string& path, const std::string& what);

// Every key of `map` (which must be a mapping) is a plain name in `allowed`; else an error at the
// key's line naming `ctx` ("a run block") and the allowed keys.
void yaml_check_keys(const std::string& file, const YAML::Node& map, const std::vector<std::string>& allowed,
                     const std::string& ctx);

}  // namespace bb
