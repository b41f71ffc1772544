#include "coding/record.h"
#include "common/error.h"

namespace bb {

const char* component_name(Component c) {
  switch (c) {
    case Component::indices: return "indices";
    case Component::codebook: return "codebook";
    case Component::side: return "side";
  }
  return "unknown";
}

const Section& LayerRecord::section(const std::string& name) const {
  for (const Section& s : sections)
    if (s.name == name) return s;
  std::string have;
  for (const Section& s : sections) have += (have.empty() ? "" : ", ") + printable(s.name);
  BB_THROW("layer '", printable(layer), "' (method '", printable(method), "') has no section '", name, "' (has: ",
           have.empty() ? "none" : have, ")");
}

Section& LayerRecord::add(const std::string& name, Component c, std::vector<uint8_t> bytes) {
  for (const Section& s : sections)
    BB_CHECK(s.name != name, "layer '", layer, "': section '", name, "' added twice");
  sections.push_back(Section{name, c, std::move(bytes)});
  return sections.back();
}

}  // namespace bb
