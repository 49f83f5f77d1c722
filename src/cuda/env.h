// Environment switches of the CUDA backend (FLASHSDPA_CUDA_*: kernel
// variants for A/B runs and fallbacks; read on every call, so a benchmark
// can flip one between calls).
#pragma once

#include <stdlib.h>
#include <string.h>

namespace fsdpa {
namespace cuda {

// Set to anything but "" or "0".
inline bool env_flag(const char* name) {
  const char* v = getenv(name);
  return v != nullptr && *v != '\0' && strcmp(v, "0") != 0;
}

// Its integer value, or def when unset or empty.
inline int env_int(const char* name, int def) {
  const char* v = getenv(name);
  return v != nullptr && *v != '\0' ? atoi(v) : def;
}

}  // namespace cuda
}  // namespace fsdpa
