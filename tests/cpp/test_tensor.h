// Test helpers: an owning strided host tensor exposed as a DLTensor, random
// fills, poisoning, and error metrics against the fp64 reference.
#pragma once

#include <math.h>
#include <stdint.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "flashsdpa/flashsdpa.h"

namespace fsdpa_test {

enum class DT { f32, f16, bf16, f64, u8, i32 };

inline DLDataType dl_dtype(DT t) {
  switch (t) {
    case DT::f32: return {kDLFloat, 32, 1};
    case DT::f16: return {kDLFloat, 16, 1};
    case DT::bf16: return {kDLBfloat, 16, 1};
    case DT::f64: return {kDLFloat, 64, 1};
    case DT::u8: return {FSDPA_DL_BOOL, 8, 1};
    case DT::i32: return {kDLInt, 32, 1};
  }
  return {};
}

inline size_t elem_size(DT t) {
  switch (t) {
    case DT::f32: case DT::i32: return 4;
    case DT::f16: case DT::bf16: return 2;
    case DT::f64: return 8;
    case DT::u8: return 1;
  }
  return 0;
}

inline float bits_to_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
inline uint32_t f32_to_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

// Round-to-nearest-even conversions, written independently of the library's.
inline double round_to(DT t, double x) {
  if (t == DT::f64) return x;
  const float f = static_cast<float>(x);
  if (t == DT::f32 || !std::isfinite(f)) return f;
  if (t == DT::bf16) {
    uint32_t u = f32_to_bits(f);
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000u;
    return bits_to_f32(u);
  }
  // fp16: 11 significant bits, min normal 2^-14, subnormal step 2^-24
  const double a = fabs(x);
  if (a >= 65520.0) return x > 0 ? INFINITY : -INFINITY;
  int e;
  frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
  const double step = ldexp(1.0, std::max(e - 11, -24));
  return copysign(nearbyint(a / step) * step, x);
}

struct Tensor {
  DT dtype = DT::f32;
  std::vector<int64_t> shape, strides;
  std::vector<uint8_t> bytes;
  DLTensor dl{};

  Tensor() = default;
  // Logical shape `shape`; memory laid out in the dim order `perm`
  // (outermost first), e.g. {0, 2, 1, 3} stores [B,H,S,D] as BSHD.
  Tensor(std::vector<int64_t> shape_, DT t, std::vector<int> perm = {}) : dtype(t), shape(shape_) {
    const int r = static_cast<int>(shape.size());
    if (perm.empty()) {
      perm.resize(r);
      std::iota(perm.begin(), perm.end(), 0);
    }
    strides.assign(r, 0);
    int64_t s = 1;
    for (int i = r - 1; i >= 0; --i) {
      strides[perm[i]] = s;
      s *= shape[perm[i]];
    }
    bytes.assign(static_cast<size_t>(std::max<int64_t>(s, 1)) * elem_size(t), 0);
    sync();
  }
  Tensor(const Tensor& o) : dtype(o.dtype), shape(o.shape), strides(o.strides), bytes(o.bytes) { sync(); }
  Tensor& operator=(const Tensor& o) {
    dtype = o.dtype; shape = o.shape; strides = o.strides; bytes = o.bytes;
    sync();
    return *this;
  }

  void sync() {
    dl.data = bytes.data();
    dl.device = {kDLCPU, 0};
    dl.ndim = static_cast<int32_t>(shape.size());
    dl.dtype = dl_dtype(dtype);
    dl.shape = shape.data();
    dl.strides = strides.data();
    dl.byte_offset = 0;
  }
  DLTensor* operator&() { return &dl; }

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
  }
  // Offset of the i-th element in logical row-major order.
  int64_t offset_of(int64_t flat) const {
    int64_t off = 0;
    for (int d = static_cast<int>(shape.size()) - 1; d >= 0; --d) {
      off += (flat % shape[d]) * strides[d];
      flat /= shape[d];
    }
    return off;
  }
  double get(int64_t flat) const {
    const int64_t o = offset_of(flat);
    switch (dtype) {
      case DT::f32: return reinterpret_cast<const float*>(bytes.data())[o];
      case DT::f64: return reinterpret_cast<const double*>(bytes.data())[o];
      case DT::u8: return bytes[o];
      case DT::i32: return reinterpret_cast<const int32_t*>(bytes.data())[o];
      case DT::bf16: return bits_to_f32(uint32_t(reinterpret_cast<const uint16_t*>(bytes.data())[o]) << 16);
      case DT::f16: {
        const uint16_t h = reinterpret_cast<const uint16_t*>(bytes.data())[o];
        const int e = (h >> 10) & 31, m = h & 1023;
        double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, e - 25);
        return (h & 0x8000) ? -v : v;
      }
    }
    return 0;
  }
  void set(int64_t flat, double x) {
    const int64_t o = offset_of(flat);
    switch (dtype) {
      case DT::f32: reinterpret_cast<float*>(bytes.data())[o] = static_cast<float>(x); break;
      case DT::f64: reinterpret_cast<double*>(bytes.data())[o] = x; break;
      case DT::u8: bytes[o] = x != 0; break;
      case DT::i32: reinterpret_cast<int32_t*>(bytes.data())[o] = static_cast<int32_t>(x); break;
      case DT::bf16:
        reinterpret_cast<uint16_t*>(bytes.data())[o] = static_cast<uint16_t>(f32_to_bits(static_cast<float>(round_to(DT::bf16, x))) >> 16);
        break;
      case DT::f16: {
        const double r = round_to(DT::f16, x);
        uint16_t h;
        if (std::isnan(r)) h = 0x7E00;
        else if (std::isinf(r)) h = r > 0 ? 0x7C00 : 0xFC00;
        else {
          const double a = fabs(r);
          int e;
          frexp(a, &e);
          if (a == 0) h = 0;
          else if (e - 1 < -14) h = static_cast<uint16_t>(a * 16777216.0);
          else h = static_cast<uint16_t>(((e - 1 + 15) << 10) | (static_cast<int>(ldexp(a, 11 - e)) - 1024));
          if (r < 0 || (r == 0 && std::signbit(r))) h |= 0x8000;
        }
        reinterpret_cast<uint16_t*>(bytes.data())[o] = h;
        break;
      }
    }
  }
  void fill_normal(std::mt19937& g, double sd = 1.0) {
    std::normal_distribution<double> n(0.0, sd);
    for (int64_t i = 0; i < numel(); ++i) set(i, n(g));
  }
  // NaN everywhere (0xFF bytes are NaN in every float format): any element
  // a kernel forgets to write fails the comparison.
  void poison() { std::fill(bytes.begin(), bytes.end(), 0xFF); }
};

// max |a - b| over all elements; NaN anywhere -> +inf.
inline double max_abs_diff(const Tensor& a, const Tensor& b) {
  double m = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double x = a.get(i), y = b.get(i);
    if (std::isnan(x) || std::isnan(y)) {
      if (std::isnan(x) && std::isnan(y)) continue;
      return INFINITY;
    }
    if (std::isinf(x) || std::isinf(y)) {
      if (x == y) continue;
      return INFINITY;
    }
    m = std::max(m, fabs(x - y));
  }
  return m;
}

inline double max_abs(const Tensor& a) {
  double m = 0;
  for (int64_t i = 0; i < a.numel(); ++i)
    if (std::isfinite(a.get(i))) m = std::max(m, fabs(a.get(i)));
  return m;
}

// Error a same-precision computation cannot avoid: rounding the exact
// result to `t`, plus fp32 accumulation over `reduction_len` terms.
// Tolerance = 2x this, after FlashAttention's rule (error <= 2x that of a
// same-precision reference). Gradients also carry the rounding of the stored
// `out` (read back through Delta = rowsum(dO * O)): a relative perturbation
// of one unit roundoff of `t`.
inline double unit_roundoff(DT t) {
  switch (t) {
    case DT::bf16: return ldexp(1.0, -8);
    case DT::f16: return ldexp(1.0, -11);
    case DT::f32: return ldexp(1.0, -24);
    default: return 0.0;
  }
}

inline double baseline_error(const Tensor& ref64, DT t, int64_t reduction_len,
                             bool is_gradient = false) {
  double round_err = 0;
  for (int64_t i = 0; i < ref64.numel(); ++i) {
    const double x = ref64.get(i);
    if (std::isfinite(x)) round_err = std::max(round_err, fabs(round_to(t, x) - x));
  }
  const double eps32 = ldexp(1.0, -24);
  const double accum = eps32 * sqrt(static_cast<double>(std::max<int64_t>(reduction_len, 1))) *
                       std::max(1.0, max_abs(ref64)) * 8.0;
  return round_err + accum + (is_gradient ? unit_roundoff(t) * max_abs(ref64) : 0.0);
}

}  // namespace fsdpa_test
