// fsdpa_merge_attn_states, validated and normalised: what a backend's merge
// receives. A plain struct (copyable to a GPU kernel as an argument).
//
// Every tensor is addressed as [rows0, rows1, rows2, dim] (out) or
// [rows0, rows1, rows2] (lse): the caller's leading dims, padded in front
// with size-1 dims to three.
#pragma once

#include <stdint.h>

#include "core/attn_params.h"  // DType
#include "core/semantics.h"    // FSDPA_HD

namespace fsdpa {

struct MergeParams {
  int32_t device_type, device_id;
  DType dtype;         // of out_a, out_b and out
  int64_t shape[3];    // leading dims
  int64_t dim;         // last dim of out (Dv)
  const void* out_a;   int64_t out_a_stride[4];
  const void* out_b;   int64_t out_b_stride[4];
  void* out;           int64_t out_stride[4];
  const float* lse_a;  int64_t lse_a_stride[3];
  const float* lse_b;  int64_t lse_b_stride[3];
  float* lse;          int64_t lse_stride[3];
};

// Row r = (i0, i1, i2) in row-major order of shape.
struct MergeRow {
  int64_t i[3];
};
FSDPA_HD MergeRow merge_row(const MergeParams& m, int64_t r) {
  MergeRow x;
  x.i[2] = r % m.shape[2];
  r /= m.shape[2];
  x.i[1] = r % m.shape[1];
  x.i[0] = r / m.shape[1];
  return x;
}
FSDPA_HD int64_t merge_offset(const int64_t* st, const MergeRow& x) {
  return x.i[0] * st[0] + x.i[1] * st[1] + x.i[2] * st[2];
}

}  // namespace fsdpa
