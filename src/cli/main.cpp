// bitbench: the command-line entry point. Subcommands live in src/cli/cmd_*.cpp and register
// themselves; this file only dispatches and turns errors into a message and a non-zero exit.
#include "cli/args.h"
#include "common/error.h"
#include "common/runtime.h"

#include <cstdio>
#include <cstring>
#include <exception>

int main(int argc, char** argv) {
  bb::pin_blas_environment(argv);  // first: it may re-execute the program
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    std::fputs(bb::commands_help().c_str(), argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  if (!std::strcmp(argv[1], "--version")) {
    std::printf("bitbench %s (%s)\n", bb::bitbench_version().c_str(), bb::git_commit().c_str());
    return 0;
  }
  try {
    bb::init_runtime();
    return bb::run_command(argv[1], argc - 2, argv + 2);
  } catch (const bb::Error& e) {
    std::fprintf(stderr, "bitbench: error: %s\n", e.what());
    return 1;
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "bitbench: error (libtorch): %s\n", e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bitbench: error: %s\n", e.what());
    return 1;
  }
}
