// Smoke settings: per registered method, parameters that make it compress cifar_resnet20 in
// seconds while still running its own code path (calibration, search, coding). Used wherever
// every method must produce a real file cheaply: the golden bytes per method
// (tests/test_golden.cpp), the hostile-input tests and `bitbench fuzz-bbz`.
#pragma once
#include <map>
#include <string>

namespace bb {

// Throws bb::Error naming the method when it has no smoke settings (a new method adds them here).
const std::map<std::string, std::string>& smoke_params(const std::string& method);

}  // namespace bb
