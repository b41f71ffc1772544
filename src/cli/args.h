// Minimal flag parser for the subcommands: declared flags only (an unknown flag is an error),
// every flag may fall back to an environment variable (Google Benchmark style), repeatable flags
// collect all values, and positional arguments are kept in order.
#pragma once
#include <map>
#include <string>
#include <vector>

namespace bb {

struct FlagSpec {
  std::string name;        // "--model"
  bool takes_value = true;
  std::string env;         // fallback environment variable ("" = none)
  bool repeated = false;
  std::string help;
};

class Args {
 public:
  Args(std::string command, std::vector<FlagSpec> specs) : command_(std::move(command)), specs_(std::move(specs)) {}
  void parse(int argc, char** argv);  // argv excludes the program and subcommand names
  bool has(const std::string& flag) const;
  std::string get(const std::string& flag, const std::string& def = "") const;
  std::string require(const std::string& flag) const;  // error naming the flag if absent
  long get_int(const std::string& flag, long def) const;
  std::vector<std::string> all(const std::string& flag) const;
  const std::vector<std::string>& positional() const { return positional_; }
  std::string usage() const;

 private:
  const FlagSpec* find(const std::string& name) const;
  std::string command_;
  std::vector<FlagSpec> specs_;
  std::map<std::string, std::vector<std::string>> values_;
  std::vector<std::string> positional_;
};

// Subcommand registry: each src/cli/cmd_*.cpp registers itself.
using CommandFn = int (*)(int argc, char** argv);
bool register_command(const std::string& name, CommandFn fn, const std::string& summary);
int run_command(const std::string& name, int argc, char** argv);
std::string commands_help();

}  // namespace bb
