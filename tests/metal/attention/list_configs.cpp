// Configure-time tool (tests/metal/attention/CMakeLists.txt, try_run): asks
// the planner which kernel specialisations the test grid needs and prints
// one line per distinct specialisation: "<library name> NAME=VALUE ...".
// The test binary then compiles exactly those defines for the emulator, and
// the test looks each case's library up by the key the planner computes
// from the validated call.
//
// Mode "all" (.github/workflows/macos-metal.yml, Apple's compiler on a Mac)
// instead lists the specialisations of every family, dtype and head dim
// (D = Dv, and Dv = D / 2 rounded to 8), each plain, with each mask kind,
// with every feature on at once, with the KV cache, and with the
// block-sparse lists.
#include <stdio.h>
#include <string.h>

#include <set>
#include <string>

#include "metal/plan.h"
#include "metal_grid.h"

using namespace fsdpa;
using namespace fsdpa_metal_test;

namespace {
std::set<std::string> seen;

void print(const AttnParams& p, int family) {
  const metal::KernelConfig cfg = metal::kernel_config(metal::make_key(p, static_cast<metal::GpuFamily>(family)));
  const std::string name = "mtl_" + metal::key_name(cfg.key);
  if (!seen.insert(name).second) return;
  printf("%s", name.c_str());
  for (const auto& [k, v] : metal::kernel_defines(cfg)) printf(" %s=%s", k.c_str(), v.c_str());
  printf("\n");
}

void list_all() {
  static const float dummy = 0;
  static const int32_t cu[2] = {0, 0};
  const DType dtypes[] = {DType::f32, DType::f16, DType::bf16};
  for (int family : {7, 8, 9})
    for (DType dt : dtypes)
      for (int d = 8; d <= 256; d += 8)
        for (int dv : {d, (d / 2 + 7) / 8 * 8}) {
          for (int variant = 0; variant < 7; ++variant) {
            if (variant >= 5 && dv != d) continue;  // the KV-cache / block-sparse code does not depend on Dv
            AttnParams p{};
            p.dtype = dt, p.head_dim = d, p.head_dim_v = dv;
            p.window_left = p.window_right = -1;
            if (variant == 1) p.mask = &dummy, p.mask_kind = MaskKind::boolean, p.mask_dtype = DType::u8;
            if (variant == 2) p.mask = &dummy, p.mask_kind = MaskKind::additive, p.mask_dtype = DType::f32;
            if (variant == 3) p.mask = &dummy, p.mask_kind = MaskKind::additive, p.mask_dtype = dt;
            if (variant == 4) {  // everything at once
              p.mask = &dummy, p.mask_kind = MaskKind::boolean, p.mask_dtype = DType::u8;
              p.window_left = 16, p.window_right = 0, p.alibi = &dummy, p.softcap = 5.0f, p.dropout_p = 0.1f;
              p.cu_seqlens_q = p.cu_seqlens_k = cu;
            }
            if (variant == 5) p.seqused_k = cu, p.window_right = 0, p.alibi = &dummy, p.softcap = 5.0f;  // KV cache
            if (variant == 6) {  // block-sparse with every feature the backward takes
              p.sparse = 1, p.mask = &dummy, p.mask_kind = MaskKind::boolean, p.mask_dtype = DType::u8;
              p.window_left = 16, p.window_right = 0, p.alibi = &dummy, p.softcap = 5.0f, p.dropout_p = 0.1f;
            }
            print(p, family);
          }
        }
}
}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && strcmp(argv[1], "all") == 0) {
    list_all();
    return 0;
  }
  const bool reduced = argc > 1 && strcmp(argv[1], "reduced") == 0;
  static const float dummy = 0;
  static const int32_t cu[2] = {0, 0};
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
    p.sparse = c.sparse >= 0;
    if (c.mask != Mask::none) {
      p.mask = &dummy;
      const bool additive = c.mask == Mask::additive || c.mask == Mask::additive_qdtype ||
                            c.mask == Mask::finfo_min_rows;
      p.mask_kind = additive ? MaskKind::additive : MaskKind::boolean;
      p.mask_dtype = !additive ? DType::u8 : c.mask == Mask::additive_qdtype ? p.dtype : DType::f32;
    }
    print(p, c.family);
  }
  for (const KvCase& c : metal_kv_grid(reduced)) {
    AttnParams p{};
    p.dtype = c.dt == 0 ? DType::f32 : c.dt == 1 ? DType::f16 : DType::bf16;
    p.head_dim = c.D;
    p.head_dim_v = c.Dv;
    p.window_left = c.wl;
    p.window_right = c.causal ? 0 : c.wr;
    p.softcap = c.softcap;
    p.alibi = c.alibi ? &dummy : nullptr;
    p.cu_seqlens_q = p.cu_seqlens_k = c.varlen ? cu : nullptr;
    p.seqused_k = cu;  // any KV-cache parameter: the key only says "KV cache"
    print(p, c.family);
  }
  return 0;
}
