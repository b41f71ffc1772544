#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include "common/runtime.h"

int main(int argc, char* argv[]) {
  bb::pin_blas_environment(argv);  // first: it may re-execute the program
  bb::init_runtime();
  return Catch::Session().run(argc, argv);
}
