# Run at every build (target bitbench_git_info): writes OUT with the source tree's commit and
# whether tracked files differ from it. The file is rewritten only when that changes, so a new
# commit recompiles src/common/runtime.cpp alone and results never carry a stale commit.
#   cmake -DSRC=<source dir> -DOUT=<header> -P git_info.cmake
execute_process(COMMAND git -C "${SRC}" rev-parse --short=12 HEAD
                OUTPUT_VARIABLE commit OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
if(NOT commit)
  set(commit "unknown")
endif()
execute_process(COMMAND git -C "${SRC}" status --porcelain --untracked-files=no
                OUTPUT_VARIABLE changes ERROR_QUIET)
if(changes)
  set(dirty "true")
else()
  set(dirty "false")
endif()
set(content "#pragma once\n#define BITBENCH_GIT_COMMIT \"${commit}\"\n#define BITBENCH_GIT_DIRTY ${dirty}\n")
if(EXISTS "${OUT}")
  file(READ "${OUT}" old)
  if(old STREQUAL content)
    return()
  endif()
endif()
file(WRITE "${OUT}" "${content}")
