// check_finite on CPU-readable Metal memory (see finite.h). Separate from
// plan.cpp, which must link without the rest of the library.
#include <cmath>

#include "core/dtype.h"
#include "core/error.h"
#include "metal/finite.h"
#include "metal/kernels/fsdpa_metal_args.h"

namespace fsdpa::metal {

fsdpa_status check_finite_input(const AttnParams& p, int which, const void* data) {
  const bool varlen = p.cu_seqlens_q != nullptr;
  const bool kside = which == FSDPA_BUF_K || which == FSDPA_BUF_V;
  const int64_t* st = which == FSDPA_BUF_Q ? p.q_stride : which == FSDPA_BUF_K ? p.k_stride
                      : which == FSDPA_BUF_V ? p.v_stride : p.dout_stride;
  const char* name = which == FSDPA_BUF_Q ? "q" : which == FSDPA_BUF_K ? "k" : which == FSDPA_BUF_V ? "v" : "dout";
  const int64_t nb = varlen ? 1 : p.batch, nh = kside ? p.heads_k : p.heads_q;
  const int64_t ns = varlen ? (kside ? p.total_k : p.total_q) : (kside ? p.seqlen_k : p.seqlen_q);
  const int64_t nd = (which == FSDPA_BUF_V || which == FSDPA_BUF_DOUT) ? p.head_dim_v : p.head_dim;
  for (int64_t b = 0; b < nb; ++b)
    for (int64_t h = 0; h < nh; ++h)
      for (int64_t s = 0; s < ns; ++s)
        for (int64_t d = 0; d < nd; ++d) {
          const double x = load_as_double(data, b * st[0] + h * st[1] + s * st[2] + d * st[3], p.dtype);
          if (!std::isfinite(x)) {
            // indices in the tensor's own layout: [B, H, S, D] or varlen [T, H, D]
            if (varlen)
              return set_error(FSDPA_ERROR_NONFINITE_INPUT,
                               "%s: contains a non-finite value (%s) at index [%lld, %lld, %lld]", name,
                               std::isnan(x) ? "NaN" : "Inf", (long long)s, (long long)h, (long long)d);
            return set_error(FSDPA_ERROR_NONFINITE_INPUT,
                             "%s: contains a non-finite value (%s) at index [%lld, %lld, %lld, %lld]", name,
                             std::isnan(x) ? "NaN" : "Inf", (long long)b, (long long)h, (long long)s, (long long)d);
          }
        }
  return FSDPA_OK;
}

}  // namespace fsdpa::metal
