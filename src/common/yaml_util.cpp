#include "common/yaml_util.h"

#include "common/error.h"

#include <filesystem>
#include <map>

namespace bb {

std::string yaml_at(const std::string& file, const YAML::Node& n) {
  if (!n.IsDefined() || n.Mark().line < 0) return file;
  return file + ":" + std::to_string(n.Mark().line + 1);
}

void yaml_check_unique_keys(const std::string& file, const YAML::Node& n) {
  if (n.IsSequence()) {
    for (const auto& e : n) yaml_check_unique_keys(file, e);
  } else if (n.IsMap()) {
    std::map<std::string, YAML::Mark> seen;
    for (auto it = n.begin(); it != n.end(); ++it) {
      if (it->first.IsScalar()) {
        auto [prev, fresh] = seen.emplace(it->first.Scalar(), it->first.Mark());
        BB_CHECK(fresh, yaml_at(file, it->first), ": duplicate key '", it->first.Scalar(), "' (first at line ",
                 prev->second.line + 1, ")");
      }
      yaml_check_unique_keys(file, it->second);
    }
  }
}

YAML::Node yaml_load_map(const std::string& path, const std::string& what) {
  namespace fs = std::filesystem;
  BB_CHECK(fs::exists(path), what, " '", path, "' does not exist");
  BB_CHECK(!fs::is_directory(path), "'", path, "' is a directory; give a YAML file");
  BB_CHECK(fs::is_regular_file(path), what, " '", path, "' is not a regular file");
  YAML::Node n;
  try {
    n = YAML::LoadFile(path);
  } catch (const YAML::ParserException& e) {
    BB_THROW(path, ":", e.mark.line + 1, ":", e.mark.column + 1, ": malformed YAML: ", e.msg);
  } catch (const YAML::BadFile&) {
    BB_THROW("cannot read ", what, " '", path, "'");
  }
  BB_CHECK(n.IsMap(), path, ": top level must be a mapping");
  yaml_check_unique_keys(path, n);
  return n;
}

void yaml_check_keys(const std::string& file, const YAML::Node& map, const std::vector<std::string>& allowed,
                     const std::string& ctx) {
  BB_CHECK(map.IsMap(), yaml_at(file, map), ": ", ctx, " must be a mapping");
  for (auto it = map.begin(); it != map.end(); ++it) {
    BB_CHECK(it->first.IsScalar(), yaml_at(file, it->first), ": keys of ", ctx, " must be plain names");
    const std::string k = it->first.Scalar();
    bool ok = false;
    for (auto& a : allowed) ok = ok || a == k;
    if (ok) continue;
    std::string list;
    for (auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
    BB_THROW(yaml_at(file, it->first), ": unknown key '", k, "' in ", ctx, " (allowed: ", list, ")");
  }
}

}  // namespace bb
