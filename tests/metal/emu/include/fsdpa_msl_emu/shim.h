// The MSL shim: `-include`d into every .metal source compiled as C++ by
// fsdpa_add_msl_kernel_library(). It provides the subset of the Metal
// Shading Language our kernels may use -- and nothing else, so a kernel that
// uses anything outside the subset fails to compile here rather than
// silently behaving differently. The subset is listed in
// docs/metal-emulation.md.
//
// Only kernel translation units include this header: it defines the macros
// `device`, `constant`, `thread`, `threadgroup` and `kernel`.
#ifndef FSDPA_MSL_EMU_SHIM_H
#define FSDPA_MSL_EMU_SHIM_H

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <limits>
#include <source_location>
#include <string>
#include <type_traits>
#include <typeinfo>

#include "fsdpa_msl_emu/detail.h"
#include "fsdpa_msl_emu/types.h"

// ======================================================================
// Scalar and vector types are global in MSL.
using fsdpa_emu::msl::bfloat;
using fsdpa_emu::msl::half;
using fsdpa_emu::msl::uchar;
using fsdpa_emu::msl::uint;
using fsdpa_emu::msl::ulong;
using fsdpa_emu::msl::ushort;
#define FSDPA_EMU_USING_VEC(T) \
  using fsdpa_emu::msl::T##2;  \
  using fsdpa_emu::msl::T##3;  \
  using fsdpa_emu::msl::T##4;
FSDPA_EMU_USING_VEC(float)
FSDPA_EMU_USING_VEC(half)
FSDPA_EMU_USING_VEC(bfloat)
FSDPA_EMU_USING_VEC(int)
FSDPA_EMU_USING_VEC(uint)
FSDPA_EMU_USING_VEC(short)
FSDPA_EMU_USING_VEC(ushort)
FSDPA_EMU_USING_VEC(bool)
FSDPA_EMU_USING_VEC(ulong)
#undef FSDPA_EMU_USING_VEC

// ======================================================================
// Threadgroup memory: checked arrays, pointers and element references.
namespace fsdpa_emu {

namespace detail {
[[noreturn]] inline void tg_oob(const TgBlock* b, std::ptrdiff_t i) {
  fail("out-of-bounds threadgroup memory access " + std::string(b->name) + "[" + std::to_string(i) +
       "] (array has " + std::to_string(b->count) + " elements)");
}
inline void tg_check(const TgBlock* b, std::ptrdiff_t i) {
  if (i < 0 || static_cast<std::size_t>(i) >= b->count) tg_oob(b, i);
}
template <class T>
T tg_load(const TgBlock* b, std::ptrdiff_t i) {
  preemption_point();
  tg_check(b, i);
  if (!b->written[i])
    fail("read of uninitialised threadgroup memory " + std::string(b->name) + "[" + std::to_string(i) +
         "] (never written in this threadgroup)");
  tg_check_read(const_cast<TgBlock*>(b), static_cast<std::size_t>(i));
  T v;
  std::memcpy(&v, b->data + static_cast<std::size_t>(i) * sizeof(T), sizeof(T));
  return v;
}
template <class T>
void tg_store(TgBlock* b, std::ptrdiff_t i, const T& v) {
  preemption_point();
  tg_check(b, i);
  tg_check_write(b, static_cast<std::size_t>(i));
  std::memcpy(b->data + static_cast<std::size_t>(i) * sizeof(T), &v, sizeof(T));
  b->written[i] = 1;
}
}  // namespace detail

// Reference to one element of threadgroup memory. It only works as a
// temporary (all operations are &&-qualified): `auto x = tile[i]; use(x);`
// does not compile -- write `float x = tile[i];` -- because a named proxy
// would read memory at each use instead of once.
template <class T>
class tg_ref {
  using V = std::remove_const_t<T>;

 public:
  tg_ref(detail::TgBlock* b, std::ptrdiff_t i) : b_(b), i_(i) { detail::tg_check(b, i); }
  operator V() const&& { return detail::tg_load<V>(b_, i_); }
  V get() const&& { return detail::tg_load<V>(b_, i_); }
  const tg_ref&& operator=(const V& v) const&& {
    static_assert(!std::is_const_v<T>, "store through a pointer to const threadgroup memory");
    detail::tg_store<V>(b_, i_, v);
    return std::move(*this);
  }
  const tg_ref&& operator=(tg_ref&& o) const&& { return std::move(*this) = std::move(o).get(); }
#define FSDPA_EMU_TG_COMPOUND(OP)                                       \
  template <class O>                                                    \
  const tg_ref&& operator OP##=(const O& o) const&& {                   \
    return std::move(*this) = static_cast<V>(std::move(*this).get() OP o); \
  }
  FSDPA_EMU_TG_COMPOUND(+)
  FSDPA_EMU_TG_COMPOUND(-)
  FSDPA_EMU_TG_COMPOUND(*)
  FSDPA_EMU_TG_COMPOUND(/)
  FSDPA_EMU_TG_COMPOUND(|)
  FSDPA_EMU_TG_COMPOUND(&)
  FSDPA_EMU_TG_COMPOUND(^)
#undef FSDPA_EMU_TG_COMPOUND
  tg_ref(const tg_ref&) = delete;
  tg_ref& operator=(const tg_ref&) = delete;

 private:
  detail::TgBlock* b_;
  std::ptrdiff_t i_;
};

// Pointer into threadgroup memory (what `threadgroup T*` is in the
// emulation; spell it FSDPA_TG_PTR(T) in kernels). No conversion to a raw
// pointer exists, so every access stays checked.
template <class T>
class tg_ptr {
 public:
  using element_type = T;
  tg_ptr() = default;
  tg_ptr(detail::TgBlock* b, std::ptrdiff_t off) : b_(b), off_(off) {}
  template <class U>
    requires(std::is_same_v<const U, T> && !std::is_same_v<U, T>)
  tg_ptr(const tg_ptr<U>& o) : b_(o.block()), off_(o.offset()) {}

  tg_ref<T> operator[](std::ptrdiff_t i) const { return tg_ref<T>(b_, off_ + i); }
  tg_ref<T> operator*() const { return tg_ref<T>(b_, off_); }
  tg_ptr operator+(std::ptrdiff_t i) const { return tg_ptr(b_, off_ + i); }
  tg_ptr operator-(std::ptrdiff_t i) const { return tg_ptr(b_, off_ - i); }
  std::ptrdiff_t operator-(const tg_ptr& o) const { return off_ - o.off_; }
  tg_ptr& operator+=(std::ptrdiff_t i) { off_ += i; return *this; }
  tg_ptr& operator-=(std::ptrdiff_t i) { off_ -= i; return *this; }
  tg_ptr& operator++() { ++off_; return *this; }
  tg_ptr& operator--() { --off_; return *this; }
  tg_ptr operator++(int) { tg_ptr t = *this; ++off_; return t; }
  tg_ptr operator--(int) { tg_ptr t = *this; --off_; return t; }
  bool operator==(const tg_ptr& o) const { return b_ == o.b_ && off_ == o.off_; }
  auto operator<=>(const tg_ptr& o) const { return off_ <=> o.off_; }

  detail::TgBlock* block() const { return b_; }
  std::ptrdiff_t offset() const { return off_; }

 private:
  detail::TgBlock* b_ = nullptr;
  std::ptrdiff_t off_ = 0;
};
template <class T>
tg_ptr<T> operator+(std::ptrdiff_t i, const tg_ptr<T>& p) { return p + i; }

// `threadgroup T name[N]`, declared with FSDPA_THREADGROUP(T, name, N).
template <class T, std::size_t N>
class tg_array {
 public:
  using element_type = T;
  explicit tg_array(detail::TgBlock* b) : b_(b) {}
  tg_ref<T> operator[](std::ptrdiff_t i) const { return tg_ref<T>(b_, i); }
  tg_ptr<T> operator+(std::ptrdiff_t i) const { return tg_ptr<T>(b_, i); }
  operator tg_ptr<T>() const { return tg_ptr<T>(b_, 0); }
  operator tg_ptr<const T>() const { return tg_ptr<const T>(b_, 0); }
  static constexpr std::size_t size() { return N; }
  detail::TgBlock* block() const { return b_; }

 private:
  detail::TgBlock* b_;
};

namespace detail {
// Binders used by the generated adapters to pass [[buffer(n)]] and builtin
// arguments to a kernel.
struct BufferBinder {
  uint32_t index;
  template <class T>
  operator T*() const {
    return static_cast<T*>(buffer_pointer(index, 0, typeid(T).name()));
  }
  template <class T>
    requires(!std::is_pointer_v<T>)
  operator T&() const {
    return *static_cast<T*>(buffer_pointer(index, sizeof(T), typeid(T).name()));
  }
};

struct BuiltinBinder {
  Builtin which;
  template <class V>
  operator V() const {
    uint32_t v[3];
    builtin_value(which, v);
    if constexpr (msl::is_vec_v<V>) {
      V r;
      using E = std::remove_cvref_t<decltype(r.x)>;
      static_assert(std::is_integral_v<E>, "builtin parameters are integer (vector) types");
      for (int i = 0; i < V::size; ++i) {
        if (v[i] > std::numeric_limits<E>::max()) fail("builtin value does not fit the parameter type");
        r[i] = static_cast<E>(v[i]);
      }
      return r;
    } else {
      static_assert(std::is_integral_v<V>, "builtin parameters are integer (vector) types");
      if (v[0] > std::numeric_limits<V>::max()) fail("builtin value does not fit the parameter type");
      return static_cast<V>(v[0]);
    }
  }
};

// Normalised view of a simdgroup_load/store source/destination.
template <class T>
struct MemRef {
  TgBlock* tg = nullptr;  // threadgroup memory, else raw device/constant pointer
  std::ptrdiff_t off = 0;
  T* raw = nullptr;
  const void* id() const { return tg ? static_cast<const void*>(tg) : static_cast<const void*>(raw); }
};
template <class T, class P>
MemRef<T> mem_ref(const P& p) {
  using U = std::remove_const_t<T>;
  if constexpr (std::is_pointer_v<P>) {
    static_assert(std::is_same_v<std::remove_cv_t<std::remove_pointer_t<P>>, U>,
                  "simdgroup_load/store: pointer element type must match the matrix type");
    return MemRef<T>{nullptr, 0, const_cast<U*>(p)};
  } else {
    static_assert(std::is_same_v<std::remove_const_t<typename P::element_type>, U>,
                  "simdgroup_load/store: threadgroup element type must match the matrix type");
    if constexpr (requires { p.offset(); })
      return MemRef<T>{p.block(), p.offset(), nullptr};
    else
      return MemRef<T>{p.block(), 0, nullptr};
  }
}
}  // namespace detail
}  // namespace fsdpa_emu

// ======================================================================
namespace metal {

using fsdpa_emu::msl::vec;

// ---------------------------------------------------------------- math
#define FSDPA_EMU_UNARY(NAME, EXPR)                                      \
  inline float NAME(float x) { return (EXPR); }                          \
  inline half NAME(half h) {                                             \
    const float x = float(h);                                            \
    return half(EXPR);                                                   \
  }                                                                      \
  inline bfloat NAME(bfloat h) {                                         \
    const float x = float(h);                                            \
    return bfloat(EXPR);                                                 \
  }                                                                      \
  template <class T, int N>                                              \
  vec<T, N> NAME(const vec<T, N>& v) {                                   \
    vec<T, N> r;                                                         \
    for (int i = 0; i < N; ++i) r[i] = NAME(v[i]);                       \
    return r;                                                            \
  }

FSDPA_EMU_UNARY(exp, std::exp(x))
FSDPA_EMU_UNARY(exp2, std::exp2(x))
FSDPA_EMU_UNARY(exp10, std::pow(10.0f, x))
FSDPA_EMU_UNARY(log, std::log(x))
FSDPA_EMU_UNARY(log2, std::log2(x))
FSDPA_EMU_UNARY(log10, std::log10(x))
FSDPA_EMU_UNARY(sqrt, std::sqrt(x))
FSDPA_EMU_UNARY(rsqrt, 1.0f / std::sqrt(x))
FSDPA_EMU_UNARY(sin, std::sin(x))
FSDPA_EMU_UNARY(cos, std::cos(x))
FSDPA_EMU_UNARY(tanh, std::tanh(x))
FSDPA_EMU_UNARY(floor, std::floor(x))
FSDPA_EMU_UNARY(ceil, std::ceil(x))
FSDPA_EMU_UNARY(round, std::round(x))
FSDPA_EMU_UNARY(trunc, std::trunc(x))
FSDPA_EMU_UNARY(rint, std::nearbyint(x))
FSDPA_EMU_UNARY(fabs, std::fabs(x))
FSDPA_EMU_UNARY(abs, std::fabs(x))
FSDPA_EMU_UNARY(fract, std::fmin(x - std::floor(x), 0x1.fffffep-1f))
FSDPA_EMU_UNARY(saturate, std::fmin(std::fmax(x, 0.0f), 1.0f))
FSDPA_EMU_UNARY(sign, (x > 0.0f ? 1.0f : x < 0.0f ? -1.0f : x))
#undef FSDPA_EMU_UNARY

#define FSDPA_EMU_BINARY(NAME, EXPR)                                     \
  inline float NAME(float x, float y) { return (EXPR); }                 \
  inline half NAME(half hx, half hy) {                                   \
    const float x = float(hx), y = float(hy);                            \
    return half(EXPR);                                                   \
  }                                                                      \
  inline bfloat NAME(bfloat hx, bfloat hy) {                             \
    const float x = float(hx), y = float(hy);                            \
    return bfloat(EXPR);                                                 \
  }                                                                      \
  template <class T, int N>                                              \
  vec<T, N> NAME(const vec<T, N>& a, const vec<T, N>& b) {               \
    vec<T, N> r;                                                         \
    for (int i = 0; i < N; ++i) r[i] = NAME(a[i], b[i]);                 \
    return r;                                                            \
  }

// MSL fmax/fmin/max/min on floats: IEEE maxNum semantics (a NaN operand is ignored).
FSDPA_EMU_BINARY(pow, std::pow(x, y))
FSDPA_EMU_BINARY(powr, std::pow(x, y))
FSDPA_EMU_BINARY(fmax, std::fmax(x, y))
FSDPA_EMU_BINARY(fmin, std::fmin(x, y))
FSDPA_EMU_BINARY(max, std::fmax(x, y))
FSDPA_EMU_BINARY(min, std::fmin(x, y))
FSDPA_EMU_BINARY(fmod, std::fmod(x, y))
FSDPA_EMU_BINARY(atan2, std::atan2(x, y))
FSDPA_EMU_BINARY(copysign, std::copysign(x, y))
FSDPA_EMU_BINARY(step, (y < x ? 0.0f : 1.0f))
#undef FSDPA_EMU_BINARY

// Integer max/min (same-type operands only, as in MSL).
#define FSDPA_EMU_INT_MINMAX(T)                           \
  inline T max(T a, T b) { return a > b ? a : b; }        \
  inline T min(T a, T b) { return a < b ? a : b; }        \
  inline T clamp(T x, T lo, T hi) { return min(max(x, lo), hi); }
FSDPA_EMU_INT_MINMAX(int)
FSDPA_EMU_INT_MINMAX(uint)
FSDPA_EMU_INT_MINMAX(short)
FSDPA_EMU_INT_MINMAX(ushort)
FSDPA_EMU_INT_MINMAX(ulong)
#undef FSDPA_EMU_INT_MINMAX

#define FSDPA_EMU_TERNARY(T)                                                              \
  inline T fma(T a, T b, T c) { return T(static_cast<float>(std::fma(double(a), double(b), double(c)))); } \
  inline T clamp(T x, T lo, T hi) { return min(max(x, lo), hi); }                         \
  inline T mix(T x, T y, T a) { return T(float(x) + (float(y) - float(x)) * float(a)); }
FSDPA_EMU_TERNARY(half)
FSDPA_EMU_TERNARY(bfloat)
#undef FSDPA_EMU_TERNARY
inline float fma(float a, float b, float c) { return std::fma(a, b, c); }
inline float clamp(float x, float lo, float hi) { return fmin(fmax(x, lo), hi); }
inline float mix(float x, float y, float a) { return x + (y - x) * a; }
template <class T, int N>
vec<T, N> fma(const vec<T, N>& a, const vec<T, N>& b, const vec<T, N>& c) {
  vec<T, N> r;
  for (int i = 0; i < N; ++i) r[i] = fma(a[i], b[i], c[i]);
  return r;
}
template <class T, int N>
vec<T, N> clamp(const vec<T, N>& x, const vec<T, N>& lo, const vec<T, N>& hi) {
  vec<T, N> r;
  for (int i = 0; i < N; ++i) r[i] = clamp(x[i], lo[i], hi[i]);
  return r;
}
template <class T, int N>
vec<T, N> mix(const vec<T, N>& x, const vec<T, N>& y, const vec<T, N>& a) {
  vec<T, N> r;
  for (int i = 0; i < N; ++i) r[i] = mix(x[i], y[i], a[i]);
  return r;
}

#define FSDPA_EMU_PRED(NAME, EXPR)                                   \
  inline bool NAME(float x) { return (EXPR); }                       \
  inline bool NAME(half h) { const float x = float(h); return (EXPR); }   \
  inline bool NAME(bfloat h) { const float x = float(h); return (EXPR); } \
  template <class T, int N>                                          \
  vec<bool, N> NAME(const vec<T, N>& v) {                            \
    vec<bool, N> r;                                                  \
    for (int i = 0; i < N; ++i) r[i] = NAME(v[i]);                   \
    return r;                                                        \
  }
FSDPA_EMU_PRED(isinf, std::isinf(x))
FSDPA_EMU_PRED(isnan, std::isnan(x))
FSDPA_EMU_PRED(isfinite, std::isfinite(x))
FSDPA_EMU_PRED(signbit, std::signbit(x))
#undef FSDPA_EMU_PRED

// select(a, b, c): c ? b : a (componentwise for vectors).
template <class T>
  requires fsdpa_emu::msl::is_scalar_v<T>
T select(T a, T b, bool c) { return c ? b : a; }
template <class T, int N>
vec<T, N> select(const vec<T, N>& a, const vec<T, N>& b, const vec<bool, N>& c) {
  vec<T, N> r;
  for (int i = 0; i < N; ++i) r[i] = c[i] ? b[i] : a[i];
  return r;
}
template <class T, int N>
vec<T, N> select(const vec<T, N>& a, const vec<T, N>& b, bool c) { return c ? b : a; }

template <int N>
bool all(const vec<bool, N>& v) {
  for (int i = 0; i < N; ++i)
    if (!v[i]) return false;
  return true;
}
template <int N>
bool any(const vec<bool, N>& v) {
  for (int i = 0; i < N; ++i)
    if (v[i]) return true;
  return false;
}
inline bool all(bool b) { return b; }
inline bool any(bool b) { return b; }

template <class T, int N>
T dot(const vec<T, N>& a, const vec<T, N>& b) {
  float s = 0.0f;
  for (int i = 0; i < N; ++i) s += float(a[i]) * float(b[i]);
  return T(s);
}

template <class To, class From>
To as_type(const From& f) {
  static_assert(sizeof(To) == sizeof(From), "as_type: sizes differ");
  return std::bit_cast<To>(f);
}

// numeric_limits: std's for built-in types, binary16/bfloat16 values for ours.
template <class T>
struct numeric_limits : std::numeric_limits<T> {};
#define FSDPA_EMU_F16_LIMITS(T, MAXB, MINB, EPSB, LOWB)                                   \
  template <>                                                                             \
  struct numeric_limits<T> {                                                              \
    static constexpr bool is_specialized = true;                                          \
    static constexpr T max() { return T::from_bits(MAXB); }                               \
    static constexpr T min() { return T::from_bits(MINB); }                               \
    static constexpr T lowest() { return T::from_bits(LOWB); }                            \
    static constexpr T epsilon() { return T::from_bits(EPSB); }                           \
    static constexpr T infinity() { return T(std::numeric_limits<float>::infinity()); }                  \
    static constexpr T quiet_NaN() { return T(std::numeric_limits<float>::quiet_NaN()); } \
  };
FSDPA_EMU_F16_LIMITS(half, 0x7bff, 0x0400, 0x1400, 0xfbff)
FSDPA_EMU_F16_LIMITS(bfloat, 0x7f7f, 0x0080, 0x3c00, 0xff7f)
#undef FSDPA_EMU_F16_LIMITS

// ---------------------------------------------------------------- synchronisation
enum class mem_flags : unsigned {
  mem_none = 0,
  mem_device = 1,
  mem_threadgroup = 2,
  mem_texture = 4,
  mem_threadgroup_imageblock = 8,
};
constexpr mem_flags operator|(mem_flags a, mem_flags b) { return mem_flags(unsigned(a) | unsigned(b)); }

inline void threadgroup_barrier(mem_flags flags, std::source_location loc = std::source_location::current()) {
  fsdpa_emu::detail::threadgroup_barrier(unsigned(flags), loc);
}
inline void simdgroup_barrier(mem_flags, std::source_location loc = std::source_location::current()) {
  fsdpa_emu::detail::simd_collective("simdgroup_barrier", loc, nullptr, [](void* const*, unsigned) {});
}

// ---------------------------------------------------------------- SIMD-group functions
// Reductions combine lanes 0, 1, ..., n-1 in this order in T's arithmetic
// (the GPU's order is unspecified).
namespace emu_detail {
template <class T>
struct Slot {
  T in;
  T out;
  uint32_t arg;
};
template <class T>
inline constexpr bool valid_simd_type =
    fsdpa_emu::msl::is_scalar_v<T> || fsdpa_emu::msl::is_vec_v<T>;
template <class T>
T add(const T& a, const T& b) { return static_cast<T>(a + b); }
template <class T>
T vmax(const T& a, const T& b) {
  if constexpr (fsdpa_emu::msl::is_vec_v<T> || std::is_floating_point_v<T> || fsdpa_emu::msl::is_f16_v<T>)
    return max(a, b);
  else
    return a > b ? a : b;
}
template <class T>
T vmin(const T& a, const T& b) {
  if constexpr (fsdpa_emu::msl::is_vec_v<T> || std::is_floating_point_v<T> || fsdpa_emu::msl::is_f16_v<T>)
    return min(a, b);
  else
    return a < b ? a : b;
}
template <class T>
T zero() {
  if constexpr (fsdpa_emu::msl::is_vec_v<T>) return T(decltype(T{}.x)(0));
  else return T(0);
}
template <class T>
Slot<T>& slot(void* const* s, unsigned i) { return *static_cast<Slot<T>*>(s[i]); }
}  // namespace emu_detail

#define FSDPA_EMU_SIMD_REDUCE(NAME, FN)                                                    \
  template <class T>                                                                       \
    requires emu_detail::valid_simd_type<T>                                                \
  T NAME(T x, std::source_location loc = std::source_location::current()) {               \
    emu_detail::Slot<T> s{x, x, 0};                                                        \
    fsdpa_emu::detail::simd_collective(#NAME, loc, &s, [](void* const* sl, unsigned n) {   \
      T acc = emu_detail::slot<T>(sl, 0).in;                                               \
      for (unsigned i = 1; i < n; ++i) acc = emu_detail::FN(acc, emu_detail::slot<T>(sl, i).in); \
      for (unsigned i = 0; i < n; ++i) emu_detail::slot<T>(sl, i).out = acc;               \
    });                                                                                    \
    return s.out;                                                                          \
  }
FSDPA_EMU_SIMD_REDUCE(simd_sum, add)
FSDPA_EMU_SIMD_REDUCE(simd_max, vmax)
FSDPA_EMU_SIMD_REDUCE(simd_min, vmin)
#undef FSDPA_EMU_SIMD_REDUCE

template <class T>
  requires emu_detail::valid_simd_type<T>
T simd_prefix_exclusive_sum(T x, std::source_location loc = std::source_location::current()) {
  emu_detail::Slot<T> s{x, x, 0};
  fsdpa_emu::detail::simd_collective("simd_prefix_exclusive_sum", loc, &s, [](void* const* sl, unsigned n) {
    T acc = emu_detail::zero<T>();
    for (unsigned i = 0; i < n; ++i) {
      emu_detail::slot<T>(sl, i).out = acc;
      acc = emu_detail::add(acc, emu_detail::slot<T>(sl, i).in);
    }
  });
  return s.out;
}
template <class T>
  requires emu_detail::valid_simd_type<T>
T simd_prefix_inclusive_sum(T x, std::source_location loc = std::source_location::current()) {
  emu_detail::Slot<T> s{x, x, 0};
  fsdpa_emu::detail::simd_collective("simd_prefix_inclusive_sum", loc, &s, [](void* const* sl, unsigned n) {
    T acc = emu_detail::slot<T>(sl, 0).in;
    emu_detail::slot<T>(sl, 0).out = acc;
    for (unsigned i = 1; i < n; ++i) {
      acc = emu_detail::add(acc, emu_detail::slot<T>(sl, i).in);
      emu_detail::slot<T>(sl, i).out = acc;
    }
  });
  return s.out;
}

// Shuffles. `mode`: 0 = from lane arg, 1 = xor arg, 2 = down by arg, 3 = up by arg, 4 = broadcast.
namespace emu_detail {
// MSL requires the mask / delta / broadcast lane to be the same for all
// threads of the SIMD group (only simd_shuffle's lane may vary).
template <class T, int Mode>
void shuffle_fn(void* const* sl, unsigned n) {
  if constexpr (Mode != 0) {
    static const char* const names[] = {"", "simd_shuffle_xor", "simd_shuffle_down", "simd_shuffle_up", "simd_broadcast"};
    for (unsigned i = 1; i < n; ++i)
      if (slot<T>(sl, i).arg != slot<T>(sl, 0).arg)
        fsdpa_emu::detail::fail(std::string(names[Mode]) + ": the mask/delta/lane argument must be the same for all lanes; lane 0 passes " +
                                std::to_string(slot<T>(sl, 0).arg) + ", lane " + std::to_string(i) + " passes " +
                                std::to_string(slot<T>(sl, i).arg));
  }
  for (unsigned i = 0; i < n; ++i) {
    const uint32_t a = slot<T>(sl, i).arg;
    long src = Mode == 0 || Mode == 4 ? long(a) : Mode == 1 ? long(i ^ a) : Mode == 2 ? long(i) + a : long(i) - long(a);
    if (Mode == 2 || Mode == 3) {
      if (src < 0 || src >= 32) src = i;  // lanes shifted in from outside keep their value
    }
    if (src < 0 || src >= long(n))
      fsdpa_emu::detail::fail("SIMD shuffle: lane " + std::to_string(i) + " reads lane " + std::to_string(src) +
                              ", which is not an active lane of this simdgroup (" + std::to_string(n) + " active)");
    slot<T>(sl, i).out = slot<T>(sl, unsigned(src)).in;
  }
}
}  // namespace emu_detail

#define FSDPA_EMU_SIMD_SHUFFLE(NAME, MODE)                                                  \
  template <class T>                                                                        \
    requires emu_detail::valid_simd_type<T>                                                 \
  T NAME(T x, ushort arg, std::source_location loc = std::source_location::current()) {     \
    emu_detail::Slot<T> s{x, x, arg};                                                       \
    fsdpa_emu::detail::simd_collective(#NAME, loc, &s, &emu_detail::shuffle_fn<T, MODE>);   \
    return s.out;                                                                           \
  }
FSDPA_EMU_SIMD_SHUFFLE(simd_shuffle, 0)
FSDPA_EMU_SIMD_SHUFFLE(simd_shuffle_xor, 1)
FSDPA_EMU_SIMD_SHUFFLE(simd_shuffle_down, 2)
FSDPA_EMU_SIMD_SHUFFLE(simd_shuffle_up, 3)
FSDPA_EMU_SIMD_SHUFFLE(simd_broadcast, 4)
#undef FSDPA_EMU_SIMD_SHUFFLE

inline bool simd_all(bool x, std::source_location loc = std::source_location::current()) {
  emu_detail::Slot<bool> s{x, x, 0};
  fsdpa_emu::detail::simd_collective("simd_all", loc, &s, [](void* const* sl, unsigned n) {
    bool r = true;
    for (unsigned i = 0; i < n; ++i) r = r && emu_detail::slot<bool>(sl, i).in;
    for (unsigned i = 0; i < n; ++i) emu_detail::slot<bool>(sl, i).out = r;
  });
  return s.out;
}
inline bool simd_any(bool x, std::source_location loc = std::source_location::current()) {
  emu_detail::Slot<bool> s{x, x, 0};
  fsdpa_emu::detail::simd_collective("simd_any", loc, &s, [](void* const* sl, unsigned n) {
    bool r = false;
    for (unsigned i = 0; i < n; ++i) r = r || emu_detail::slot<bool>(sl, i).in;
    for (unsigned i = 0; i < n; ++i) emu_detail::slot<bool>(sl, i).out = r;
  });
  return s.out;
}

// ---------------------------------------------------------------- simdgroup_matrix
// Each lane holds two elements of the 8x8 matrix (thread_elements()).
// Lane-to-element layout of Apple GPUs as published by metal-flash-attention
// (Philip Turner, https://github.com/philipturner/metal-flash-attention,
// Sources/metal_simdgroup_matrix_storage, simdgroup_matrix_storage::offset(),
// which cites https://patents.google.com/patent/US11256518B2): lane l holds
// row  M = (l / 16) * 4 + (l / 2) % 4,
// cols N, N + 1 with N = ((l / 4) & 2) * 2 + (l % 2) * 2.
inline void simdgroup_matrix_lane_position(unsigned lane, unsigned& row, unsigned& col) {
  const unsigned quad = lane / 4;
  row = (quad / 4) * 4 + (lane / 2) % 4;
  col = (quad & 2) * 2 + (lane % 2) * 2;
}

template <class T, int Rows, int Cols>
struct simdgroup_matrix {
  static_assert(Rows == 8 && Cols == 8, "only 8x8 simdgroup matrices are in the subset");
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, half> || std::is_same_v<T, bfloat>,
                "simdgroup_matrix element type must be float, half or bfloat");
  vec<T, 2> elements;
  simdgroup_matrix() = default;
  vec<T, 2>& thread_elements() { return elements; }
  const vec<T, 2>& thread_elements() const { return elements; }
};
using simdgroup_float8x8 = simdgroup_matrix<float, 8, 8>;
using simdgroup_half8x8 = simdgroup_matrix<half, 8, 8>;
using simdgroup_bfloat8x8 = simdgroup_matrix<bfloat, 8, 8>;

namespace emu_detail {
inline void require_full_simdgroup(unsigned n, const char* op) {
  if (n != 32)
    fsdpa_emu::detail::fail(std::string(op) + " needs all 32 lanes of the simdgroup; only " + std::to_string(n) +
                            " are active (threads per threadgroup not a multiple of 32?)");
}
struct LoadStoreSlot {
  const void* id;
  std::ptrdiff_t off;
  ulong stride;
  ulong ox, oy;
  bool transpose;
  bool operator==(const LoadStoreSlot&) const = default;
};
inline void uniform_ls(void* const* sl, unsigned n, const char* op) {
  require_full_simdgroup(n, op);
  const auto& a = *static_cast<const LoadStoreSlot*>(sl[0]);
  for (unsigned i = 1; i < n; ++i)
    if (!(*static_cast<const LoadStoreSlot*>(sl[i]) == a))
      fsdpa_emu::detail::fail(std::string(op) + ": arguments (pointer, elements_per_row, matrix_origin, transpose) differ between lane 0 and lane " +
                              std::to_string(i));
}
inline std::ptrdiff_t ls_index(const LoadStoreSlot& s, unsigned r, unsigned c) {
  return s.transpose ? std::ptrdiff_t((s.ox + c) * s.stride + (s.oy + r)) : std::ptrdiff_t((s.oy + r) * s.stride + (s.ox + c));
}
}  // namespace emu_detail

// matrix_origin is (column, row) of the matrix's top-left element; with
// transpose_matrix the memory holds the transpose (element (r, c) of the
// matrix is read from memory row origin.x + c, column origin.y + r), as in
// metal-flash-attention's apply_offset.
template <class T, class P>
void simdgroup_load(simdgroup_matrix<T, 8, 8>& d, const P& src, ulong elements_per_row = 8,
                    vec<ulong, 2> matrix_origin = vec<ulong, 2>(0), bool transpose_matrix = false,
                    std::source_location loc = std::source_location::current()) {
  const auto m = fsdpa_emu::detail::mem_ref<T>(src);
  emu_detail::LoadStoreSlot s{m.id(), m.off, elements_per_row, matrix_origin.x, matrix_origin.y, transpose_matrix};
  fsdpa_emu::detail::simd_collective("simdgroup_load", loc, &s,
                                     [](void* const* sl, unsigned n) { emu_detail::uniform_ls(sl, n, "simdgroup_load"); });
  unsigned r, c;
  simdgroup_matrix_lane_position(fsdpa_emu::detail::this_thread().lane, r, c);
  for (unsigned e = 0; e < 2; ++e) {
    const std::ptrdiff_t i = emu_detail::ls_index(s, r, c + e);
    if (m.tg)
      d.elements[e] = fsdpa_emu::detail::tg_load<T>(m.tg, m.off + i);
    else
      d.elements[e] = m.raw[i];
  }
}

template <class T, class P>
void simdgroup_store(const simdgroup_matrix<T, 8, 8>& a, const P& dst, ulong elements_per_row = 8,
                     vec<ulong, 2> matrix_origin = vec<ulong, 2>(0), bool transpose_matrix = false,
                     std::source_location loc = std::source_location::current()) {
  const auto m = fsdpa_emu::detail::mem_ref<T>(dst);
  emu_detail::LoadStoreSlot s{m.id(), m.off, elements_per_row, matrix_origin.x, matrix_origin.y, transpose_matrix};
  fsdpa_emu::detail::simd_collective("simdgroup_store", loc, &s,
                                     [](void* const* sl, unsigned n) { emu_detail::uniform_ls(sl, n, "simdgroup_store"); });
  unsigned r, c;
  simdgroup_matrix_lane_position(fsdpa_emu::detail::this_thread().lane, r, c);
  for (unsigned e = 0; e < 2; ++e) {
    const std::ptrdiff_t i = emu_detail::ls_index(s, r, c + e);
    if (m.tg)
      fsdpa_emu::detail::tg_store<T>(m.tg, m.off + i, a.elements[e]);
    else
      m.raw[i] = a.elements[e];
  }
}

// D = A * B + C. Products and sums in float (k = 0..7 in order, fused
// multiply-add), rounded once to D's element type.
template <class TD, class TA, class TB, class TC>
void simdgroup_multiply_accumulate(simdgroup_matrix<TD, 8, 8>& d, const simdgroup_matrix<TA, 8, 8>& a,
                                   const simdgroup_matrix<TB, 8, 8>& b, const simdgroup_matrix<TC, 8, 8>& c,
                                   std::source_location loc = std::source_location::current()) {
  struct S {
    simdgroup_matrix<TD, 8, 8>* d;
    const simdgroup_matrix<TA, 8, 8>* a;
    const simdgroup_matrix<TB, 8, 8>* b;
    const simdgroup_matrix<TC, 8, 8>* c;
  } s{&d, &a, &b, &c};
  fsdpa_emu::detail::simd_collective("simdgroup_multiply_accumulate", loc, &s, [](void* const* sl, unsigned n) {
    emu_detail::require_full_simdgroup(n, "simdgroup_multiply_accumulate");
    float A[8][8], B[8][8], C[8][8];
    for (unsigned l = 0; l < 32; ++l) {
      const S& x = *static_cast<const S*>(sl[l]);
      unsigned r, col;
      simdgroup_matrix_lane_position(l, r, col);
      for (unsigned e = 0; e < 2; ++e) {
        A[r][col + e] = float(x.a->elements[e]);
        B[r][col + e] = float(x.b->elements[e]);
        C[r][col + e] = float(x.c->elements[e]);
      }
    }
    for (unsigned l = 0; l < 32; ++l) {
      const S& x = *static_cast<const S*>(sl[l]);
      unsigned r, col;
      simdgroup_matrix_lane_position(l, r, col);
      for (unsigned e = 0; e < 2; ++e) {
        float acc = C[r][col + e];
        for (unsigned k = 0; k < 8; ++k) acc = std::fma(A[r][k], B[k][col + e], acc);
        x.d->elements[e] = TD(acc);
      }
    }
  });
}

template <class TD, class TA, class TB>
void simdgroup_multiply(simdgroup_matrix<TD, 8, 8>& d, const simdgroup_matrix<TA, 8, 8>& a,
                        const simdgroup_matrix<TB, 8, 8>& b, std::source_location loc = std::source_location::current()) {
  simdgroup_matrix<TD, 8, 8> zero;
  zero.elements = vec<TD, 2>(TD(0.0f));
  simdgroup_multiply_accumulate(d, a, b, zero, loc);
}

template <class T, int Rows, int Cols>
simdgroup_matrix<T, Rows, Cols> make_filled_simdgroup_matrix(T value,
                                                             std::source_location loc = std::source_location::current()) {
  fsdpa_emu::detail::simd_collective("make_filled_simdgroup_matrix", loc, nullptr, [](void* const*, unsigned) {});
  simdgroup_matrix<T, Rows, Cols> m;
  m.elements = vec<T, 2>(value);
  return m;
}

}  // namespace metal

// MSL's fast:: and precise:: variants: computed here at full float precision
// (the GPU's fast:: functions are less accurate; see docs/metal-emulation.md).
namespace metal::fast {
using metal::cos;
using metal::exp;
using metal::exp2;
using metal::log;
using metal::log2;
using metal::max;
using metal::min;
using metal::pow;
using metal::powr;
using metal::rsqrt;
using metal::sin;
using metal::sqrt;
using metal::tanh;
}  // namespace metal::fast
namespace metal::precise {
using metal::cos;
using metal::exp;
using metal::exp2;
using metal::log;
using metal::log2;
using metal::max;
using metal::min;
using metal::pow;
using metal::powr;
using metal::rsqrt;
using metal::sin;
using metal::sqrt;
using metal::tanh;
}  // namespace metal::precise

// ======================================================================
// Macros. Defined last so that nothing above is affected.
#define FSDPA_MSL_EMULATION 1
#ifndef __METAL_VERSION__
#define __METAL_VERSION__ 310
#endif
#define __HAVE_SIMDGROUP_MATRIX__ 1
#define __HAVE_BFLOAT__ 1
#define METAL_FUNC inline

#define device
#define constant const
#define thread
#define kernel
// A plain `threadgroup` declaration would silently become per-thread storage
// here; make it a compile error that says what to write instead.
#define threadgroup use_FSDPA_THREADGROUP_or_FSDPA_TG_PTR_from_fsdpa_metal_compat_h_instead_of_threadgroup

// Threadgroup memory (see src/metal/kernels/fsdpa_metal_compat.h for the
// Metal expansion). Each threadgroup gets its own poisoned block; accesses
// are bounds checked, reads of never-written elements fail.
#define FSDPA_THREADGROUP(T, name, N)                                  \
  static constexpr char fsdpa_emu_tg_key_##name = 0;                   \
  const ::fsdpa_emu::tg_array<T, (N)> name {                           \
    ::fsdpa_emu::detail::threadgroup_block(&fsdpa_emu_tg_key_##name, #name, sizeof(T), alignof(T), (N)) \
  }
#define FSDPA_TG_PTR(T) ::fsdpa_emu::tg_ptr<T>

#endif  // FSDPA_MSL_EMU_SHIM_H
