#include "cli/args.h"
#include "common/error.h"

#include <cstdlib>

namespace bb {

const FlagSpec* Args::find(const std::string& name) const {
  for (auto& s : specs_)
    if (s.name == name) return &s;
  return nullptr;
}

void Args::parse(int argc, char** argv) {
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if (a.size() > 2 && a.rfind("--", 0) == 0) {
      std::string name = a, value;
      bool inline_value = false;
      if (auto eq = a.find('='); eq != std::string::npos) {
        name = a.substr(0, eq);
        value = a.substr(eq + 1);
        inline_value = true;
      }
      const FlagSpec* s = find(name);
      BB_CHECK(s, "bitbench ", command_, ": unknown flag '", name, "'\n", usage());
      if (s->takes_value && !inline_value) {
        BB_CHECK(i + 1 < argc, "bitbench ", command_, ": flag ", name, " needs a value");
        value = argv[++i];
      }
      if (!s->takes_value) {
        BB_CHECK(!inline_value, "bitbench ", command_, ": flag ", name, " takes no value");
        value = "1";
      }
      if (!s->repeated) values_[name].clear();
      values_[name].push_back(value);
    } else {
      positional_.push_back(a);
    }
  }
  for (auto& s : specs_) {
    if (values_.count(s.name) || s.env.empty()) continue;
    if (const char* e = std::getenv(s.env.c_str()); e && *e) values_[s.name].push_back(e);
  }
}

bool Args::has(const std::string& flag) const { return values_.count(flag) > 0; }

std::string Args::get(const std::string& flag, const std::string& def) const {
  auto it = values_.find(flag);
  return it == values_.end() ? def : it->second.back();
}

std::string Args::require(const std::string& flag) const {
  BB_CHECK(has(flag), "bitbench ", command_, ": missing required flag ", flag, "\n", usage());
  return get(flag);
}

long Args::get_int(const std::string& flag, long def) const {
  if (!has(flag)) return def;
  std::string v = get(flag);
  char* end = nullptr;
  long x = std::strtol(v.c_str(), &end, 10);
  BB_CHECK(end && *end == 0 && !v.empty(), "bitbench ", command_, ": ", flag, " expects an integer, got '", v, "'");
  return x;
}

std::vector<std::string> Args::all(const std::string& flag) const {
  auto it = values_.find(flag);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

std::string Args::usage() const {
  std::string u = "usage: bitbench " + command_ + " [flags]\n";
  for (auto& s : specs_) {
    u += "  " + s.name + (s.takes_value ? " VALUE" : "") + "\t" + s.help;
    if (!s.env.empty()) u += " (env " + s.env + ")";
    u += "\n";
  }
  return u;
}

namespace {
struct Cmd {
  CommandFn fn;
  std::string summary;
};
std::map<std::string, Cmd>& commands() {
  static std::map<std::string, Cmd> c;
  return c;
}
}  // namespace

bool register_command(const std::string& name, CommandFn fn, const std::string& summary) {
  commands()[name] = Cmd{fn, summary};
  return true;
}

int run_command(const std::string& name, int argc, char** argv) {
  auto it = commands().find(name);
  BB_CHECK(it != commands().end(), "unknown command '", name, "'\n", commands_help());
  return it->second.fn(argc, argv);
}

std::string commands_help() {
  std::string h = "usage: bitbench COMMAND [flags]   (bitbench COMMAND --help for its flags)\ncommands:\n";
  for (auto& kv : commands()) h += "  " + kv.first + "\t" + kv.second.summary + "\n";
  return h;
}

}  // namespace bb
