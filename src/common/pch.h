// Precompiled header: libtorch's headers cost ~20 s per translation unit, so every target
// shares one precompiled copy of them (and of the other heavy, stable headers).
#pragma once
#include <torch/torch.h>
#include <nlohmann/json.hpp>
#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>
