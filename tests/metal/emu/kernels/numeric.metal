// Test kernels: half / bfloat conversions and arithmetic.
#include <metal_stdlib>
using namespace metal;

kernel void convert(device const float* in [[buffer(0)]],
                    device ushort* half_bits [[buffer(1)]],
                    device ushort* bfloat_bits [[buffer(2)]],
                    device float* back [[buffer(3)]],
                    uint i [[thread_position_in_grid]]) {
  const half h = half(in[i]);
  const bfloat b = bfloat(in[i]);
  half_bits[i] = as_type<ushort>(h);
  bfloat_bits[i] = as_type<ushort>(b);
  back[2 * i] = float(h);
  back[2 * i + 1] = float(b);
}

kernel void half_arith(device const half* a [[buffer(0)]],
                       device const half* b [[buffer(1)]],
                       device half* out [[buffer(2)]],
                       uint i [[thread_position_in_grid]]) {
  const half x = a[i];
  const half y = b[i];
  out[6 * i + 0] = x + y;
  out[6 * i + 1] = x * y;
  out[6 * i + 2] = x - y;
  out[6 * i + 3] = x / y;
  out[6 * i + 4] = fma(x, y, x);
  out[6 * i + 5] = max(x, y);
}

kernel void math_ops(device const float* in [[buffer(0)]],
                     device float* out [[buffer(1)]],
                     uint i [[thread_position_in_grid]]) {
  const float x = in[i];
  device float* o = out + 10 * i;
  o[0] = exp(x);
  o[1] = fast::exp2(x);
  o[2] = log(fabs(x) + 1.0f);
  o[3] = tanh(x);
  o[4] = select(1.0f, 2.0f, x > 0.0f);
  o[5] = isinf(x / 0.0f) ? 1.0f : 0.0f;
  o[6] = fma(x, 2.0f, 1.0f);
  o[7] = min(x, 0.5f);
  o[8] = float(half(x) * 2);  // half op int -> half
  o[9] = rsqrt(fabs(x) + 1.0f);
}
