// `external`: a compression method written in any language, run as two shell commands
// (docs/ADDING_A_METHOD.md, "An external method"). bitbench hands the encode command the model's
// weights (and calibration images), stores the files it writes as opaque sections of the .bbz
// (their bytes are the method's bits), and rebuilds the weights with the decode command in a
// fresh process that sees nothing but a copy of those files read back from the .bbz.
//
// The decode command is kept in the file's provenance (params.decode), so `bitbench decompress`
// of such a file runs it: a .bbz of this method runs a command on decode. Processes that decode
// files they did not write (bitbench fuzz-bbz) restrict which commands may run.
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace bb {

// The decode command a file of the external method stores ("" when the provenance is not the
// external method's or holds none).
std::string external_decode_command(const nlohmann::json& provenance);

// From now on this process runs only these decode commands (others are refused with a
// bb::Error before anything runs). Called by fuzz-bbz with the commands of its valid sources, so
// that a mutated command string is never executed.
void restrict_external_commands(const std::vector<std::string>& allowed);
void unrestrict_external_commands();  // every command may run again (tests)

// Runs `command` with /bin/sh -c (stdin /dev/null, stdout and stderr to `log_path`, its own
// process group, killed with the group after `timeout_s`). What happened, for error messages.
struct ShellResult {
  int exit_status = -1;   // 0..255 when it exited
  int signal = 0;         // the signal that ended it (not a timeout)
  bool timed_out = false;
  double seconds = 0;
  std::string log_tail;   // the last lines of its stdout+stderr
};
ShellResult run_shell(const std::string& command, const std::string& log_path, double timeout_s);

}  // namespace bb
