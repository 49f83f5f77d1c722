// simdgroup_matrix: lane layout, load/store, transpose, multiply, and a
// 64x64 (and 128x128) tiled GEMM against a CPU GEMM.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "fsdpa_msl_emu/emu.h"

using namespace fsdpa_emu;
using fsdpa_emu::msl::half;

namespace {
// (row, first column) of thread_elements() for each lane, written out by hand
// from the "storage format among threads" table published in
// metal-flash-attention (simdgroup_matrix_internals.hpp; the same layout is
// computed by simdgroup_matrix_storage::offset() in
// Sources/metal_simdgroup_matrix_storage):
//   [00 01] [02 03] [10 11] [12 13]  <- quad 0 (lanes 0-3)
//   [20 21] [22 23] [30 31] [32 33]  <- quad 1 (lanes 4-7)
//   [04 05] [06 07] [14 15] [16 17]  <- quad 2 (lanes 8-11)
//   [24 25] [26 27] [34 35] [36 37]  <- quad 3 (lanes 12-15)
//   lanes 16-31: the same with rows + 4
const int kLayout[32][2] = {
    {0, 0}, {0, 2}, {1, 0}, {1, 2}, {2, 0}, {2, 2}, {3, 0}, {3, 2},  //
    {0, 4}, {0, 6}, {1, 4}, {1, 6}, {2, 4}, {2, 6}, {3, 4}, {3, 6},  //
    {4, 0}, {4, 2}, {5, 0}, {5, 2}, {6, 0}, {6, 2}, {7, 0}, {7, 2},  //
    {4, 4}, {4, 6}, {5, 4}, {5, 6}, {6, 4}, {6, 6}, {7, 4}, {7, 6},
};
}  // namespace

TEST(Matrix, ThreadElementsLayoutOnLoad) {
  std::vector<float> m(64);
  for (int i = 0; i < 64; ++i) m[i] = float(i);
  Args args;
  args.set(0, m).set(1, std::vector<float>(64, -1.0f));
  dispatch_all_schedules(Kernel::find("emu_k_matrix", "layout_probe"), {1, 1, 1}, {32, 1, 1}, args);
  auto o = args.get<float>(1);
  for (int l = 0; l < 32; ++l)
    for (int e = 0; e < 2; ++e)
      EXPECT_EQ(o[l * 2 + e], float(kLayout[l][0] * 8 + kLayout[l][1] + e)) << "lane " << l << " element " << e;
}

TEST(Matrix, ThreadElementsLayoutOnStore) {
  Args args;
  args.set(0, std::vector<float>(64, -1.0f));
  dispatch_all_schedules(Kernel::find("emu_k_matrix", "layout_store"), {1, 1, 1}, {32, 1, 1}, args);
  auto o = args.get<float>(0);
  for (int l = 0; l < 32; ++l)
    for (int e = 0; e < 2; ++e) EXPECT_EQ(o[kLayout[l][0] * 8 + kLayout[l][1] + e], float(l * 2 + e)) << l;
}

TEST(Matrix, TransposeAndStridedRoundTrips) {
  std::vector<half> in(256);
  for (int i = 0; i < 256; ++i) in[i] = half(float(i));
  Args args;
  args.set(0, in)
      .set(1, std::vector<half>(64, half(-1.0f)))
      .set(2, std::vector<half>(64, half(-1.0f)))
      .set(3, std::vector<half>(256, half(-1.0f)));
  dispatch_all_schedules(Kernel::find("emu_k_matrix", "transpose_roundtrip"), {1, 1, 1}, {32, 1, 1}, args);
  auto o0 = args.get<half>(1), o1 = args.get<half>(2), o2 = args.get<half>(3);
  for (int r = 0; r < 8; ++r)
    for (int c = 0; c < 8; ++c) {
      // transposed load with origin (8, 0): element (r, c) = in[(8 + c) * 16 + r]
      EXPECT_EQ(float(o0[r * 8 + c]), float(in[(8 + c) * 16 + r])) << r << "," << c;
      // stored transposed, loaded back plainly: the transpose of the matrix
      EXPECT_EQ(float(o1[r * 8 + c]), float(o0[c * 8 + r])) << r << "," << c;
    }
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) {
      const bool in_block = r < 8 && c >= 8;
      EXPECT_EQ(float(o2[r * 16 + c]), in_block ? float(in[r * 16 + c]) : -1.0f) << r << "," << c;
    }
}

TEST(Matrix, MultiplyAccumulateMixedPrecision) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-2.0f, 2.0f);
  std::vector<half> A(64), B(64);
  std::vector<float> C(64);
  for (auto& v : A) v = half(u(rng));
  for (auto& v : B) v = half(u(rng));
  for (auto& v : C) v = u(rng);
  Args args;
  args.set(0, A).set(1, B).set(2, C).set(3, std::vector<float>(64)).set(4, std::vector<float>(128));
  dispatch_all_schedules(Kernel::find("emu_k_matrix", "mma_small"), {1, 1, 1}, {32, 1, 1}, args);
  auto D = args.get<float>(3), E = args.get<float>(4);
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < 8; ++j) {
      double ab = 0;
      for (int k = 0; k < 8; ++k) ab += double(float(A[i * 8 + k])) * double(float(B[k * 8 + j]));
      EXPECT_NEAR(D[i * 8 + j], ab + C[i * 8 + j], 1e-5) << i << "," << j;
      EXPECT_NEAR(E[i * 8 + j], ab, 1e-5) << i << "," << j;
      EXPECT_EQ(E[64 + i * 8 + j], 2.5f);
    }
}

namespace {
void run_gemm(const char* lib, uint32_t n) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<half> A(n * n), B(n * n);
  for (auto& v : A) v = half(u(rng));
  for (auto& v : B) v = half(u(rng));
  Args args;
  args.set(0, A).set(1, B).set(2, std::vector<float>(n * n, NAN));
  dispatch_all_schedules(Kernel::find(lib, "gemm"), {n / 64, n / 64, 1}, {128, 1, 1}, args);
  auto C = args.get<float>(2);
  double max_err = 0;
  for (uint32_t i = 0; i < n; ++i)
    for (uint32_t j = 0; j < n; ++j) {
      double ref = 0;
      for (uint32_t k = 0; k < n; ++k) ref += double(float(A[i * n + k])) * double(float(B[k * n + j]));
      max_err = std::max(max_err, std::abs(ref - double(C[i * n + j])));
    }
  EXPECT_LT(max_err, 1e-4 * n) << lib;
}
}  // namespace

TEST(Matrix, Gemm64x64VsCpu) { run_gemm("emu_k_gemm", 64); }
TEST(Matrix, Gemm128x128VsCpu) { run_gemm("emu_k_gemm128", 128); }
