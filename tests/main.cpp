#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include "common/runtime.h"

int main(int argc, char* argv[]) {
  bb::init_runtime();
  return Catch::Session().run(argc, argv);
}
