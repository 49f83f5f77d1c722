/* Calls flashsdpa through its C ABI on plain C arrays (causal attention,
 * B=1, H=2, S=37, D=16, fp32), checks the result against a direct
 * computation in double, and exits non-zero if they disagree. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "flashsdpa/flashsdpa.h"

enum { B = 1, H = 2, S = 37, D = 16 };

static DLTensor tensor(float* data, int64_t* shape, int ndim) {
  DLTensor t = {0};
  t.data = data;
  t.device.device_type = kDLCPU;
  t.ndim = ndim;
  t.dtype.code = kDLFloat;
  t.dtype.bits = 32;
  t.dtype.lanes = 1;
  t.shape = shape;
  t.strides = NULL; /* compact row-major */
  return t;
}

int main(void) {
  static float q[B * H * S * D], k[B * H * S * D], v[B * H * S * D], out[B * H * S * D];
  static float lse[B * H * S];
  unsigned state = 12345u;
  for (int i = 0; i < B * H * S * D; ++i) {
    state = state * 1664525u + 1013904223u; q[i] = (float)((state >> 8) % 2001) / 1000.0f - 1.0f;
    state = state * 1664525u + 1013904223u; k[i] = (float)((state >> 8) % 2001) / 1000.0f - 1.0f;
    state = state * 1664525u + 1013904223u; v[i] = (float)((state >> 8) % 2001) / 1000.0f - 1.0f;
  }
  int64_t shape4[4] = {B, H, S, D}, shape3[3] = {B, H, S};
  DLTensor tq = tensor(q, shape4, 4), tk = tensor(k, shape4, 4), tv = tensor(v, shape4, 4);
  DLTensor tout = tensor(out, shape4, 4), tlse = tensor(lse, shape3, 3);

  fsdpa_params p;
  fsdpa_params_init(&p);
  p.causal = 1;
  if (fsdpa_forward(&p, &tq, &tk, &tv, &tout, &tlse, NULL) != FSDPA_OK) {
    fprintf(stderr, "fsdpa_forward failed: %s\n", fsdpa_last_error());
    return 1;
  }

  double max_err = 0.0;
  const double scale = 1.0 / sqrt((double)D);
  for (int h = 0; h < H; ++h)
    for (int i = 0; i < S; ++i) {
      const float* qi = q + (h * S + i) * D;
      double w[S], mx = -INFINITY, sum = 0.0;
      for (int j = 0; j <= i; ++j) {
        double dot = 0.0;
        for (int d = 0; d < D; ++d) dot += (double)qi[d] * k[(h * S + j) * D + d];
        w[j] = dot * scale;
        if (w[j] > mx) mx = w[j];
      }
      for (int j = 0; j <= i; ++j) sum += (w[j] = exp(w[j] - mx));
      for (int d = 0; d < D; ++d) {
        double o = 0.0;
        for (int j = 0; j <= i; ++j) o += w[j] / sum * v[(h * S + j) * D + d];
        max_err = fmax(max_err, fabs(o - out[(h * S + i) * D + d]));
      }
      max_err = fmax(max_err, fabs(mx + log(sum) - lse[h * S + i]));
    }
  printf("flashsdpa %s (backends: %s): causal forward max error %.3g\n", fsdpa_version(),
         fsdpa_backends(), max_err);
  /* Bad input gives a status and a message, not a crash. */
  p.window_left = -7;
  if (fsdpa_forward(&p, &tq, &tk, &tv, &tout, NULL, NULL) != FSDPA_ERROR_INVALID_ARGUMENT) return 1;
  printf("bad window rejected: %s\n", fsdpa_last_error());
  return max_err < 1e-5 ? 0 : 1;
}
