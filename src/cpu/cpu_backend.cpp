#include "cpu/cpu_backend.h"

#include <stdio.h>
#include <string.h>

#include "core/backend.h"
#include "cpu/heuristics.h"
#include "cpu/tiles.h"
#include "core/settings.h"

namespace fsdpa {
namespace {
bool cpu_available() { return true; }
fsdpa_status cpu_forward(const AttnParams& p, void*) { return cpu::forward(p); }
fsdpa_status cpu_backward(const AttnParams& p, void*) { return cpu::backward(p); }
fsdpa_status cpu_merge(const MergeParams& m, void*) { return cpu::merge(m); }

// The CPU backend has one kernel family (tiles of kBlockQ queries x kBlockK
// keys, Highway SIMD, its own thread pool); its plan names it and the units
// that multiply (cpu::uses_amx decides).
fsdpa_status cpu_explain(const AttnParams& p, bool backward, char* buf, size_t size) {
  if (size == 0) return FSDPA_OK;
  const bool amx = cpu::uses_amx(p);
  snprintf(buf, size,
           "backend cpu, %s: family tiles, %d query rows x %d keys per tile, %d threads, "
           "workspace per thread\n"
           "family tiles: the CPU backend's only kernel family (Highway SIMD, any dtype, every "
           "semantic)\n"
           "products: %s%s\n",
           backward ? "backward" : "forward", cpu::kBlockQ, cpu::kBlockK, cpu_thread_count(),
           amx ? "AMX-BF16 tiles (bf16 prefill on a CPU with AMX: P and dS rounded to bf16, "
                 "fp32 accumulation)"
               : "fp32 SIMD, ",
           amx ? "" : cpu::simd_target_name());
  if (p.sparse) {
    const size_t n = strlen(buf);
    snprintf(buf + n, size - n,
             "block-sparse: %lldx%lld-block lists mapped onto the tiles; tiles no list names "
             "are skipped (%s)\n",
             (long long)p.sparse_block_q, (long long)p.sparse_block_k,
             backward ? "transposed lists per key block, built per call"
                      : "row lists read per query tile");
  }
  return FSDPA_OK;
}
}  // namespace

extern const Backend kCpuBackend;
const Backend kCpuBackend = {"cpu",        kDLCPU,     cpu_available, cpu_forward, cpu_backward,
                             cpu_merge,    cpu_explain, /*block_sparse=*/true};

}  // namespace fsdpa
