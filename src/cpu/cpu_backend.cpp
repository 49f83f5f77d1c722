#include "cpu/cpu_backend.h"

#include "core/backend.h"

namespace fsdpa {
namespace {
bool cpu_available() { return true; }
fsdpa_status cpu_forward(const AttnParams& p, void*) { return cpu::forward(p); }
fsdpa_status cpu_backward(const AttnParams& p, void*) { return cpu::backward(p); }
fsdpa_status cpu_merge(const MergeParams& m, void*) { return cpu::merge(m); }
}  // namespace

extern const Backend kCpuBackend;
const Backend kCpuBackend = {"cpu", kDLCPU, cpu_available, cpu_forward, cpu_backward,
                          cpu_merge};

}  // namespace fsdpa
