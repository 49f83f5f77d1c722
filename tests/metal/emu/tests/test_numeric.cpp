// half / bfloat rounding against known bit patterns and an independent
// reference (the compiler's _Float16), and math functions.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <random>

#include "fsdpa_msl_emu/emu.h"

using namespace fsdpa_emu;
using fsdpa_emu::msl::bfloat;
using fsdpa_emu::msl::half;

namespace {
struct Known {
  float f;
  uint16_t half_bits;
  uint16_t bfloat_bits;
};
// Expected encodings worked out by hand (round to nearest, ties to even).
const Known kKnown[] = {
    {1.0f, 0x3c00, 0x3f80},
    {-2.0f, 0xc000, 0xc000},
    {0.5f, 0x3800, 0x3f00},
    {-0.0f, 0x8000, 0x8000},
    {0.1f, 0x2e66, 0x3dcd},
    {1.0f / 3.0f, 0x3555, 0x3eab},
    {3.14159274f, 0x4248, 0x4049},
    {65504.0f, 0x7bff, 0x4780},
    {65519.0f, 0x7bff, 0x4780},
    {65520.0f, 0x7c00, 0x4780},          // half: tie between 65504 and 2^16 -> even -> inf
    {1.0e6f, 0x7c00, 0x4974},
    {-INFINITY, 0xfc00, 0xff80},
    {0x1p-14f, 0x0400, 0x3880},          // smallest normal half
    {0x1p-24f, 0x0001, 0x3380},          // smallest subnormal half
    {0x1p-25f, 0x0000, 0x3300},          // tie between 0 and 2^-24 -> even -> 0
    {0x1.8p-25f, 0x0001, 0x3340},        // 0.75 * 2^-24 -> 2^-24
    {0x1.004p+0f, 0x3c01, 0x3f80},       // 1 + 2^-10: exact in half
    {0x1.002p+0f, 0x3c00, 0x3f80},       // 1 + 2^-11: tie -> even 0x3c00; bfloat: below tie
    {0x1.006p+0f, 0x3c02, 0x3f80},       // 1 + 3*2^-11: tie -> even 0x3c02
    {0x1.00201p+0f, 0x3c01, 0x3f80},     // 1 + 2^-11 + 2^-20: just above the tie -> up
    {0x1.01p+0f, 0x3c04, 0x3f80},        // bfloat: 1 + 2^-8 is a tie -> even 0x3f80
    {0x1.03p+0f, 0x3c0c, 0x3f82},        // bfloat: 1 + 3*2^-8 tie -> even 0x3f82
    {3.4028235e38f, 0x7c00, 0x7f80},     // FLT_MAX: bfloat rounds up to inf
};
}  // namespace

TEST(Numeric, KnownBitPatternsOnHost) {
  for (const Known& k : kKnown) {
    EXPECT_EQ(half(k.f).bits, k.half_bits) << std::hexfloat << k.f;
    EXPECT_EQ(bfloat(k.f).bits, k.bfloat_bits) << std::hexfloat << k.f;
  }
  EXPECT_TRUE(std::isnan(float(half(NAN))));
  EXPECT_TRUE(std::isnan(float(bfloat(NAN))));
  EXPECT_EQ(half(NAN).bits & 0x7c00, 0x7c00);
}

TEST(Numeric, KnownBitPatternsInKernel) {
  std::vector<float> in;
  for (const Known& k : kKnown) in.push_back(k.f);
  const uint32_t n = uint32_t(in.size());
  Args args;
  args.set(0, in).set(1, std::vector<uint16_t>(n)).set(2, std::vector<uint16_t>(n)).set(3, std::vector<float>(2 * n));
  dispatch(Kernel::find("emu_k_numeric", "convert"), {1, 1, 1}, {n, 1, 1}, args);
  auto hb = args.get<uint16_t>(1), bb = args.get<uint16_t>(2);
  auto back = args.get<float>(3);
  for (uint32_t i = 0; i < n; ++i) {
    const uint16_t want_h = kKnown[i].half_bits;
    EXPECT_EQ(hb[i], want_h) << std::hexfloat << in[i];
    EXPECT_EQ(bb[i], kKnown[i].bfloat_bits) << std::hexfloat << in[i];
    EXPECT_EQ(back[2 * i], msl::half_bits_to_float(want_h));
    EXPECT_EQ(back[2 * i + 1], std::bit_cast<float>(uint32_t(kKnown[i].bfloat_bits) << 16));
  }
}

TEST(Numeric, HalfRoundTripAllBitPatterns) {
  for (uint32_t b = 0; b < 65536; ++b) {
    const float f = msl::half_bits_to_float(uint16_t(b));
    if (std::isnan(f)) continue;
    ASSERT_EQ(msl::float_to_half_bits(f), b) << std::hex << b;
  }
}

#if defined(__FLT16_MAX__)
TEST(Numeric, HalfConversionMatchesCompilerFloat16) {
  std::mt19937 rng(1);
  for (int i = 0; i < 2000000; ++i) {
    uint32_t bits = rng();
    if (i % 2) bits = (bits & 0x807fffffu) | ((100u + rng() % 60u) << 23);  // concentrate near the half range
    const float f = std::bit_cast<float>(bits);
    if (std::isnan(f)) continue;
    const _Float16 ref = static_cast<_Float16>(f);
    ASSERT_EQ(half(f).bits, std::bit_cast<uint16_t>(ref)) << std::hexfloat << f;
  }
}

TEST(Numeric, HalfArithmeticInKernelMatchesFloat16) {
  std::mt19937 rng(2);
  std::uniform_real_distribution<float> u(-300.0f, 300.0f);
  const uint32_t n = 1024;
  std::vector<half> a(n), b(n);
  for (uint32_t i = 0; i < n; ++i) {
    a[i] = half(u(rng));
    b[i] = half(u(rng) / 17.0f);
  }
  Args args;
  args.set(0, a).set(1, b).set(2, std::vector<half>(6 * n));
  dispatch(Kernel::find("emu_k_numeric", "half_arith"), {n / 256, 1, 1}, {256, 1, 1}, args);
  auto o = args.get<half>(2);
  for (uint32_t i = 0; i < n; ++i) {
    const _Float16 x = std::bit_cast<_Float16>(a[i].bits), y = std::bit_cast<_Float16>(b[i].bits);
    const float fx = float(x), fy = float(y);
    const _Float16 want[6] = {_Float16(fx + fy), _Float16(fx * fy), _Float16(fx - fy), _Float16(fx / fy),
                              _Float16(double(fx) * double(fy) + double(fx)), fx > fy ? x : y};
    for (int k = 0; k < 6; ++k)
      ASSERT_EQ(o[6 * i + k].bits, std::bit_cast<uint16_t>(want[k])) << "op " << k << " i " << i;
  }
}
#endif

TEST(Numeric, MathFunctions) {
  std::vector<float> in = {-3.0f, -0.5f, 0.0f, 0.25f, 1.0f, 2.5f, 10.0f, -20.0f};
  const uint32_t n = uint32_t(in.size());
  Args args;
  args.set(0, in).set(1, std::vector<float>(10 * n));
  dispatch(Kernel::find("emu_k_numeric", "math_ops"), {1, 1, 1}, {n, 1, 1}, args);
  auto o = args.get<float>(1);
  for (uint32_t i = 0; i < n; ++i) {
    const float x = in[i];
    const float* r = &o[10 * i];
    EXPECT_FLOAT_EQ(r[0], std::exp(x));
    EXPECT_FLOAT_EQ(r[1], std::exp2(x));
    EXPECT_FLOAT_EQ(r[2], std::log(std::fabs(x) + 1.0f));
    EXPECT_FLOAT_EQ(r[3], std::tanh(x));
    EXPECT_EQ(r[4], x > 0 ? 2.0f : 1.0f);
    EXPECT_EQ(r[5], x != 0.0f ? 1.0f : 0.0f);
    EXPECT_EQ(r[6], std::fma(x, 2.0f, 1.0f));
    EXPECT_EQ(r[7], std::min(x, 0.5f));
    EXPECT_EQ(r[8], float(half(float(half(x)) * 2.0f)));
    EXPECT_FLOAT_EQ(r[9], 1.0f / std::sqrt(std::fabs(x) + 1.0f));
  }
}
