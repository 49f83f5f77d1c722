// MSL scalar and vector value types for the CPU emulation of Metal kernels.
//
// Usable from host test code (namespace fsdpa_emu::msl) and, through shim.h,
// from kernels compiled as C++ (where the names are also visible globally,
// as in MSL).
//
//  * half   : IEEE 754 binary16. Every arithmetic operation is computed in
//             float and rounded once to binary16 (round to nearest even).
//             For + - * / and sqrt this equals correctly rounded binary16
//             arithmetic because float has >= 2*11+2 significand bits.
//  * bfloat : MSL 3.1 bfloat (bfloat16), float -> bfloat rounds to nearest
//             even; arithmetic likewise in float, rounded once per operation.
//  * vec<T,N> for N = 2, 3, 4 with members x, y, z, w and operator[].
//             Size and alignment follow MSL (vec3 is padded to 4 elements).
//             No swizzles (.xy, .zyx, ...): they are outside the subset.
#pragma once

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace fsdpa_emu::msl {

// ---------------------------------------------------------------- binary16
constexpr uint16_t float_to_half_bits(float f) noexcept {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) {  // inf / nan (nan stays quiet nan, payload kept)
    if (ax == 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u);
    return static_cast<uint16_t>(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
  }
  // 65520 = 0x477ff000 is the midpoint between 65504 (max half) and 2^16;
  // ties go to even, which is 2^16 -> inf.
  if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);
  if (ax < 0x38800000u) {  // result is subnormal (or zero) in binary16
    // value / 2^-24 rounded to nearest even integer, done in integers.
    if (ax < 0x33000000u) return static_cast<uint16_t>(sign);  // < 2^-25: rounds to 0
    const uint32_t e = ax >> 23;                // biased float exponent
    const uint32_t m = (ax & 0x7fffffu) | 0x800000u;  // 24-bit significand
    // value = m * 2^(e-127-23); in units of 2^-24: m * 2^(e-126)
    const uint32_t shift = 126u - e;            // >= 1 here
    uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u);
    const uint32_t half_ulp = 1u << (shift - 1u);
    if (rem > half_ulp || (rem == half_ulp && (q & 1u))) ++q;
    return static_cast<uint16_t>(sign | q);  // q == 0x400 is the smallest normal
  }
  uint32_t h = ((((ax >> 23) - 127u + 15u) << 10) | ((ax & 0x7fffffu) >> 13));
  const uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // carry may reach inf: correct
  return static_cast<uint16_t>(sign | h);
}

constexpr float half_bits_to_float(uint16_t h) noexcept {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu;
  const uint32_t m = h & 0x3ffu;
  if (e == 0) {
    const float v = static_cast<float>(m) * 0x1p-24f;  // exact
    return sign ? -v : v;
  }
  if (e == 31) return std::bit_cast<float>(sign | 0x7f800000u | (m << 13));
  return std::bit_cast<float>(sign | ((e - 15u + 127u) << 23) | (m << 13));
}

constexpr uint16_t float_to_bfloat_bits(float f) noexcept {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet nan
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

constexpr float bfloat_bits_to_float(uint16_t b) noexcept {
  return std::bit_cast<float>(static_cast<uint32_t>(b) << 16);
}

template <class T>
concept arithmetic = std::is_arithmetic_v<T>;

// 16-bit float types: arithmetic through float with one rounding per
// operation, and MSL-like mixed-type rules:
//   F op F -> F;  F op integer -> F;  F op float/double -> float.
#define FSDPA_EMU_DEFINE_F16(NAME, TO_BITS, TO_FLOAT)                                        \
  struct NAME {                                                                              \
    uint16_t bits;                                                                           \
    NAME() = default; /* like MSL: uninitialised */                                          \
    constexpr NAME(float f) noexcept : bits(TO_BITS(f)) {}                                   \
    template <arithmetic A>                                                                  \
      requires(!std::is_same_v<A, float>)                                                    \
    constexpr NAME(A a) noexcept : bits(TO_BITS(static_cast<float>(a))) {}                   \
    constexpr operator float() const noexcept { return TO_FLOAT(bits); }                     \
    static constexpr NAME from_bits(uint16_t b) noexcept { NAME r; r.bits = b; return r; }   \
    constexpr NAME operator-() const noexcept { return from_bits(bits ^ 0x8000u); }          \
    constexpr NAME operator+() const noexcept { return *this; }                              \
    constexpr NAME& operator++() noexcept { return *this = NAME(float(*this) + 1.0f); }      \
    constexpr NAME& operator--() noexcept { return *this = NAME(float(*this) - 1.0f); }      \
    constexpr NAME operator++(int) noexcept { NAME t = *this; ++*this; return t; }           \
    constexpr NAME operator--(int) noexcept { NAME t = *this; --*this; return t; }           \
    template <class O> constexpr NAME& operator+=(O o) noexcept { return *this = *this + o; } \
    template <class O> constexpr NAME& operator-=(O o) noexcept { return *this = *this - o; } \
    template <class O> constexpr NAME& operator*=(O o) noexcept { return *this = *this * o; } \
    template <class O> constexpr NAME& operator/=(O o) noexcept { return *this = *this / o; } \
  };                                                                                         \
  FSDPA_EMU_F16_BINOP(NAME, +) FSDPA_EMU_F16_BINOP(NAME, -)                                 \
  FSDPA_EMU_F16_BINOP(NAME, *) FSDPA_EMU_F16_BINOP(NAME, /)                                 \
  FSDPA_EMU_F16_CMP(NAME, ==) FSDPA_EMU_F16_CMP(NAME, !=) FSDPA_EMU_F16_CMP(NAME, <)         \
  FSDPA_EMU_F16_CMP(NAME, <=) FSDPA_EMU_F16_CMP(NAME, >) FSDPA_EMU_F16_CMP(NAME, >=)

// result type of NAME op A
#define FSDPA_EMU_F16_BINOP(NAME, OP)                                                        \
  constexpr NAME operator OP(NAME a, NAME b) noexcept { return NAME(float(a) OP float(b)); } \
  template <arithmetic A>                                                                    \
  constexpr auto operator OP(NAME a, A b) noexcept {                                         \
    if constexpr (std::is_floating_point_v<A>) return float(a) OP static_cast<float>(b);     \
    else return NAME(float(a) OP float(NAME(b)));                                            \
  }                                                                                          \
  template <arithmetic A>                                                                    \
  constexpr auto operator OP(A a, NAME b) noexcept {                                         \
    if constexpr (std::is_floating_point_v<A>) return static_cast<float>(a) OP float(b);     \
    else return NAME(float(NAME(a)) OP float(b));                                            \
  }

#define FSDPA_EMU_F16_CMP(NAME, OP)                                                          \
  constexpr bool operator OP(NAME a, NAME b) noexcept { return float(a) OP float(b); }       \
  template <arithmetic A>                                                                    \
  constexpr bool operator OP(NAME a, A b) noexcept { return float(a) OP static_cast<float>(b); } \
  template <arithmetic A>                                                                    \
  constexpr bool operator OP(A a, NAME b) noexcept { return static_cast<float>(a) OP float(b); }

FSDPA_EMU_DEFINE_F16(half, float_to_half_bits, half_bits_to_float)
FSDPA_EMU_DEFINE_F16(bfloat, float_to_bfloat_bits, bfloat_bits_to_float)

#undef FSDPA_EMU_DEFINE_F16
#undef FSDPA_EMU_F16_BINOP
#undef FSDPA_EMU_F16_CMP

static_assert(sizeof(half) == 2 && sizeof(bfloat) == 2);

template <class T>
inline constexpr bool is_f16_v = std::is_same_v<T, half> || std::is_same_v<T, bfloat>;

// Scalars of the MSL subset.
template <class T>
inline constexpr bool is_scalar_v = std::is_arithmetic_v<T> || is_f16_v<T>;

// ---------------------------------------------------------------- vectors
template <class T, int N>
struct vec;

namespace detail {
template <class T, int N>
inline constexpr std::size_t vec_align = sizeof(T) * (N == 3 ? 4 : N);
}

template <class T>
struct alignas(detail::vec_align<T, 2>) vec<T, 2> {
  T x, y;
  static constexpr int size = 2;
  vec() = default;
  constexpr explicit vec(T s) : x(s), y(s) {}
  template <class A, class B>
  constexpr vec(A a, B b) : x(static_cast<T>(a)), y(static_cast<T>(b)) {}
  template <class U>
  constexpr explicit vec(const vec<U, 2>& o) : x(static_cast<T>(o.x)), y(static_cast<T>(o.y)) {}
  constexpr T& operator[](int i) { return i == 0 ? x : y; }
  constexpr const T& operator[](int i) const { return i == 0 ? x : y; }
};

template <class T>
struct alignas(detail::vec_align<T, 3>) vec<T, 3> {
  T x, y, z;
  static constexpr int size = 3;
  vec() = default;
  constexpr explicit vec(T s) : x(s), y(s), z(s) {}
  template <class A, class B, class C>
  constexpr vec(A a, B b, C c) : x(static_cast<T>(a)), y(static_cast<T>(b)), z(static_cast<T>(c)) {}
  template <class C>
  constexpr vec(const vec<T, 2>& ab, C c) : x(ab.x), y(ab.y), z(static_cast<T>(c)) {}
  template <class U>
  constexpr explicit vec(const vec<U, 3>& o)
      : x(static_cast<T>(o.x)), y(static_cast<T>(o.y)), z(static_cast<T>(o.z)) {}
  constexpr T& operator[](int i) { return i == 0 ? x : i == 1 ? y : z; }
  constexpr const T& operator[](int i) const { return i == 0 ? x : i == 1 ? y : z; }
};

template <class T>
struct alignas(detail::vec_align<T, 4>) vec<T, 4> {
  T x, y, z, w;
  static constexpr int size = 4;
  vec() = default;
  constexpr explicit vec(T s) : x(s), y(s), z(s), w(s) {}
  template <class A, class B, class C, class D>
  constexpr vec(A a, B b, C c, D d)
      : x(static_cast<T>(a)), y(static_cast<T>(b)), z(static_cast<T>(c)), w(static_cast<T>(d)) {}
  constexpr vec(const vec<T, 2>& ab, const vec<T, 2>& cd) : x(ab.x), y(ab.y), z(cd.x), w(cd.y) {}
  template <class D>
  constexpr vec(const vec<T, 3>& abc, D d) : x(abc.x), y(abc.y), z(abc.z), w(static_cast<T>(d)) {}
  template <class U>
  constexpr explicit vec(const vec<U, 4>& o)
      : x(static_cast<T>(o.x)), y(static_cast<T>(o.y)), z(static_cast<T>(o.z)), w(static_cast<T>(o.w)) {}
  constexpr T& operator[](int i) { return i == 0 ? x : i == 1 ? y : i == 2 ? z : w; }
  constexpr const T& operator[](int i) const { return i == 0 ? x : i == 1 ? y : i == 2 ? z : w; }
};

template <class V>
struct is_vec : std::false_type {};
template <class T, int N>
struct is_vec<vec<T, N>> : std::true_type {};
template <class V>
inline constexpr bool is_vec_v = is_vec<V>::value;

namespace detail {
template <class R, class T, int N, class F>
constexpr vec<R, N> vmap(const vec<T, N>& a, F f) {
  vec<R, N> r;
  for (int i = 0; i < N; ++i) r[i] = f(a[i]);
  return r;
}
template <class R, class T, class U, int N, class F>
constexpr vec<R, N> vzip(const vec<T, N>& a, const vec<U, N>& b, F f) {
  vec<R, N> r;
  for (int i = 0; i < N; ++i) r[i] = f(a[i], b[i]);
  return r;
}
}  // namespace detail

#define FSDPA_EMU_VEC_BINOP(OP)                                                              \
  template <class T, int N>                                                                  \
  constexpr vec<T, N> operator OP(const vec<T, N>& a, const vec<T, N>& b) {                  \
    return detail::vzip<T>(a, b, [](T p, T q) { return static_cast<T>(p OP q); });           \
  }                                                                                          \
  template <class T, int N, class S>                                                         \
    requires is_scalar_v<S>                                                                  \
  constexpr vec<T, N> operator OP(const vec<T, N>& a, S s) {                                 \
    const T t = static_cast<T>(s);                                                           \
    return detail::vmap<T>(a, [t](T p) { return static_cast<T>(p OP t); });                  \
  }                                                                                          \
  template <class T, int N, class S>                                                         \
    requires is_scalar_v<S>                                                                  \
  constexpr vec<T, N> operator OP(S s, const vec<T, N>& a) {                                 \
    const T t = static_cast<T>(s);                                                           \
    return detail::vmap<T>(a, [t](T p) { return static_cast<T>(t OP p); });                  \
  }                                                                                          \
  template <class T, int N, class O>                                                         \
  constexpr vec<T, N>& operator OP##=(vec<T, N>& a, const O& b) { return a = a OP b; }

FSDPA_EMU_VEC_BINOP(+)
FSDPA_EMU_VEC_BINOP(-)
FSDPA_EMU_VEC_BINOP(*)
FSDPA_EMU_VEC_BINOP(/)
FSDPA_EMU_VEC_BINOP(%)
FSDPA_EMU_VEC_BINOP(&)
FSDPA_EMU_VEC_BINOP(|)
FSDPA_EMU_VEC_BINOP(^)
FSDPA_EMU_VEC_BINOP(<<)
FSDPA_EMU_VEC_BINOP(>>)
#undef FSDPA_EMU_VEC_BINOP

#define FSDPA_EMU_VEC_CMP(OP)                                                                \
  template <class T, int N>                                                                  \
  constexpr vec<bool, N> operator OP(const vec<T, N>& a, const vec<T, N>& b) {               \
    return detail::vzip<bool>(a, b, [](T p, T q) { return bool(p OP q); });                  \
  }                                                                                          \
  template <class T, int N, class S>                                                         \
    requires is_scalar_v<S>                                                                  \
  constexpr vec<bool, N> operator OP(const vec<T, N>& a, S s) {                              \
    const T t = static_cast<T>(s);                                                           \
    return detail::vmap<bool>(a, [t](T p) { return bool(p OP t); });                         \
  }

FSDPA_EMU_VEC_CMP(==)
FSDPA_EMU_VEC_CMP(!=)
FSDPA_EMU_VEC_CMP(<)
FSDPA_EMU_VEC_CMP(<=)
FSDPA_EMU_VEC_CMP(>)
FSDPA_EMU_VEC_CMP(>=)
#undef FSDPA_EMU_VEC_CMP

template <class T, int N>
constexpr vec<T, N> operator-(const vec<T, N>& a) {
  return detail::vmap<T>(a, [](T p) { return static_cast<T>(-p); });
}
template <int N>
constexpr vec<bool, N> operator!(const vec<bool, N>& a) {
  return detail::vmap<bool>(a, [](bool p) { return !p; });
}

// Type names of the subset.
using uchar = uint8_t;
using ushort = uint16_t;
using uint = uint32_t;
using ulong = uint64_t;

#define FSDPA_EMU_VEC_ALIASES(T)  \
  using T##2 = vec<T, 2>;        \
  using T##3 = vec<T, 3>;        \
  using T##4 = vec<T, 4>;
FSDPA_EMU_VEC_ALIASES(float)
FSDPA_EMU_VEC_ALIASES(half)
FSDPA_EMU_VEC_ALIASES(bfloat)
FSDPA_EMU_VEC_ALIASES(int)
FSDPA_EMU_VEC_ALIASES(uint)
FSDPA_EMU_VEC_ALIASES(short)
FSDPA_EMU_VEC_ALIASES(ushort)
FSDPA_EMU_VEC_ALIASES(bool)
FSDPA_EMU_VEC_ALIASES(ulong)
#undef FSDPA_EMU_VEC_ALIASES

static_assert(sizeof(float3) == 16 && alignof(float3) == 16);
static_assert(sizeof(half4) == 8 && alignof(half2) == 4);

}  // namespace fsdpa_emu::msl
