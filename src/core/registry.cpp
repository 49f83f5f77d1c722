#include "core/backend.h"

#include <string>

#include "core/error.h"

namespace fsdpa {

// One line per backend; each is compiled in by its CMake option.
#ifdef FLASHSDPA_WITH_CPU
extern const Backend kCpuBackend;
#endif
#ifdef FLASHSDPA_WITH_CUDA
extern const Backend kCudaBackend;
#endif
#ifdef FLASHSDPA_WITH_METAL
extern const Backend kMetalBackend;
#endif

namespace {
const Backend* const kBackends[] = {
#ifdef FLASHSDPA_WITH_CPU
    &kCpuBackend,
#endif
#ifdef FLASHSDPA_WITH_CUDA
    &kCudaBackend,
#endif
#ifdef FLASHSDPA_WITH_METAL
    &kMetalBackend,
#endif
    nullptr};
}  // namespace

const Backend* find_backend(int32_t device_type) {
  for (const Backend* const* b = kBackends; *b; ++b)
    if ((*b)->device_type == device_type) return *b;
  return nullptr;
}

fsdpa_status backend_supports(const Backend& be, const AttnParams& p) {
  if (p.sparse && !be.block_sparse)
    return set_error(FSDPA_ERROR_UNSUPPORTED,
                     "%s: the block-sparse mask is not supported on %s yet (the CPU backend "
                     "serves it)",
                     p.kv_num ? "kv_num_blocks" : "full_kv_num_blocks", be.name);
  return FSDPA_OK;
}

const char* backend_names() {
  static const std::string names = [] {
    std::string s;
    for (const Backend* const* b = kBackends; *b; ++b) {
      if (!s.empty()) s += ",";
      s += (*b)->name;
    }
    return s;
  }();
  return names.c_str();
}

}  // namespace fsdpa
