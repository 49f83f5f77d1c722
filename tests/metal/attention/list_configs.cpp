// Configure-time tool (tests/metal/attention/CMakeLists.txt, try_run): asks
// the planner which kernel specialisations the test grid needs and prints
// one line per distinct specialisation: "<library name> NAME=VALUE ...".
// The test binary then compiles exactly those defines for the emulator, and
// the test looks each case's library up by the key the planner computes
// from the validated call.
#include <stdio.h>
#include <string.h>

#include <set>
#include <string>

#include "metal/plan.h"
#include "metal_grid.h"

using namespace fsdpa;
using namespace fsdpa_metal_test;

int main(int argc, char** argv) {
  const bool reduced = argc > 1 && strcmp(argv[1], "reduced") == 0;
  static const float dummy = 0;
  static const int32_t cu[2] = {0, 0};
  std::set<std::string> seen;
  for (const MCase& c : metal_grid(reduced)) {
    // The fields of a validated AttnParams that the key depends on
    // (core/validate.cpp folds causal into window_right = 0).
    AttnParams p{};
    p.dtype = c.dt == 0 ? DType::f32 : c.dt == 1 ? DType::f16 : DType::bf16;
    p.head_dim = c.D;
    p.head_dim_v = c.Dv;
    p.window_left = c.wl;
    p.window_right = c.causal ? 0 : c.wr;
    p.softcap = c.softcap;
    p.dropout_p = c.dropout;
    p.alibi = c.alibi ? &dummy : nullptr;
    p.cu_seqlens_q = p.cu_seqlens_k = c.varlen ? cu : nullptr;
    if (c.mask != Mask::none) {
      p.mask = &dummy;
      const bool additive = c.mask == Mask::additive || c.mask == Mask::additive_qdtype ||
                            c.mask == Mask::finfo_min_rows;
      p.mask_kind = additive ? MaskKind::additive : MaskKind::boolean;
      p.mask_dtype = !additive ? DType::u8 : c.mask == Mask::additive_qdtype ? p.dtype : DType::f32;
    }
    const metal::KernelConfig cfg =
        metal::kernel_config(metal::make_key(p, static_cast<metal::GpuFamily>(c.family)));
    const std::string name = "mtl_" + metal::key_name(cfg.key);
    if (!seen.insert(name).second) continue;
    printf("%s", name.c_str());
    for (const auto& [k, v] : metal::kernel_defines(cfg)) printf(" %s=%s", k.c_str(), v.c_str());
    printf("\n");
  }
  return 0;
}
