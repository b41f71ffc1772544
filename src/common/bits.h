// Bit-width helpers shared by the coders and the methods.
#pragma once
#include <cstdint>

namespace bb {

// ceil(log2 v), 0 for v <= 1: the bits of a fixed-width index into v values (a k-entry codebook,
// a v-letter alphabet). Exact integer arithmetic.
constexpr int ceil_log2(uint64_t v) { return v <= 1 ? 0 : 64 - __builtin_clzll(v - 1); }

}  // namespace bb
