// NaN / Inf inputs with check_finite = 0: the CPU backend gives what the
// fp64 reference defines (flashsdpa.h, "NaN and Inf"): a row attending a NaN
// or +inf score is NaN (out and lse), a row attending nothing is 0 / -inf, a
// key hidden by the band, a bool mask or a -inf float mask is not attended
// whatever q.k is, and NaN in v reaches every row attending that key.
// With check_finite = 1 a NaN anywhere in k is reported, also in a key the
// causal band hides.
#include <gtest/gtest.h>

#include <cmath>

#include "attention_case.h"

namespace fsdpa_test {
namespace {

enum class Where { q_nan, q_inf, q_neginf, k_nan, k_inf, v_nan, v_inf, mask_nan, mask_posinf,
                   alibi_nan };
const char* kWhere[] = {"q_nan", "q_inf", "q_neginf", "k_nan", "k_inf", "v_nan", "v_inf",
                        "mask_nan", "mask_posinf", "alibi_nan"};

struct NonFiniteCase {
  Case c;
  Where where;
};

void PrintTo(const NonFiniteCase& n, std::ostream* os) {
  *os << describe(n.c) << "_" << kWhere[static_cast<int>(n.where)];
}

// Puts the non-finite value(s) in place. Keys and rows are chosen so that
// some rows attend them and (under masks) some do not.
void inject(Problem& pr, Where w) {
  const Case& c = pr.c;
  auto at4 = [](const Tensor& t, int64_t b, int64_t h, int64_t s, int64_t d) {
    return ((b * t.shape[1] + h) * t.shape[2] + s) * t.shape[3] + d;
  };
  const int64_t key = std::min<int64_t>(c.Sk - 1, 37), row = std::min<int64_t>(c.Sq - 1, 5);
  switch (w) {
    case Where::q_nan: pr.q.set(at4(pr.q, 0, 0, row, 3), NAN); break;
    case Where::q_inf: pr.q.set(at4(pr.q, 0, 0, row, 3), INFINITY); break;
    case Where::q_neginf: pr.q.set(at4(pr.q, c.B - 1, c.Hq - 1, row, 0), -INFINITY); break;
    case Where::k_nan: pr.k.set(at4(pr.k, 0, 0, key, 1), NAN); break;
    case Where::k_inf: pr.k.set(at4(pr.k, 0, c.Hk - 1, key, 1), INFINITY); break;
    // v: key 0, which every row attends in the v cases' configurations.
    case Where::v_nan: pr.v.set(at4(pr.v, 0, 0, 0, 2), NAN); break;
    case Where::v_inf: pr.v.set(at4(pr.v, 0, 0, 0, 2), INFINITY); break;
    case Where::mask_nan: pr.mask.set(row * c.Sk + key, NAN); break;       // [Sq, Sk] mask
    case Where::mask_posinf: pr.mask.set(row * c.Sk + key, INFINITY); break;
    case Where::alibi_nan: pr.alibi.set(c.Hq - 1, NAN); break;
  }
}

class NonFinite : public ::testing::TestWithParam<NonFiniteCase> {};

// Same NaN positions; Inf where the reference has Inf (same sign); finite
// values within the fp32 tolerance.
void expect_same(const Tensor& got, const Tensor& ref, double tol, const char* what) {
  int64_t bad = 0, first = -1;
  for (int64_t i = 0; i < ref.numel(); ++i) {
    const double x = got.get(i), y = ref.get(i);
    const bool ok = std::isnan(y) ? std::isnan(x)
                    : std::isinf(y) ? x == y
                                    : std::isfinite(x) && fabs(x - y) <= tol;
    if (!ok && bad++ == 0) first = i;
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " elements differ; first at " << first << ": got "
                    << got.get(first) << ", reference " << ref.get(first);
}

TEST_P(NonFinite, ForwardMatchesReference) {
  const NonFiniteCase& n = GetParam();
  Problem pr(n.c);
  pr.p.check_finite = 0;
  inject(pr, n.where);
  Tensor out = pr.make(n.c.Hq, n.c.Sq, pr.total_q, n.c.Dv, n.c.dt), lse = pr.make_lse();
  Tensor out64 = pr.make(n.c.Hq, n.c.Sq, pr.total_q, n.c.Dv, DT::f64), lse64 = pr.make_lse();
  out.poison();
  lse.poison();
  ASSERT_EQ(fsdpa_forward(&pr.p, &pr.q, &pr.k, &pr.v, &out, &lse, nullptr), FSDPA_OK)
      << fsdpa_last_error();
  ASSERT_EQ(fsdpa_reference_forward(&pr.p, &pr.q, &pr.k, &pr.v, &out64, &lse64), FSDPA_OK)
      << fsdpa_last_error();
  // Not everything is NaN (the injection hits one row / key / head). Cases
  // where no row attends the injected key, or softcap turns the Inf into
  // a finite score, have no NaN at all: they test that nothing leaks.
  int64_t nonfinite = 0;
  for (int64_t i = 0; i < out64.numel(); ++i) nonfinite += !std::isfinite(out64.get(i));
  EXPECT_LT(nonfinite, out64.numel());
  const double tol = 2 * baseline_error(out64, n.c.dt, pr.reduction_len()) + 1e-6;
  expect_same(out, out64, tol, "out");
  expect_same(lse, lse64, 1e-4 * std::max(1.0, max_abs(lse64)), "lse");
}

std::vector<NonFiniteCase> make_cases() {
  std::vector<NonFiniteCase> v;
  auto base = [](const char* name, int64_t sq, int64_t sk) {
    Case c;
    c.name = name;
    c.B = 2; c.Hq = 4; c.Hk = 2; c.Sq = sq; c.Sk = sk; c.D = 32; c.Dv = 24;
    return c;
  };
  const Where qk[] = {Where::q_nan, Where::q_inf, Where::q_neginf, Where::k_nan, Where::k_inf};
  for (auto [name, sq, sk] : {std::tuple{"prefill", 90, 150}, std::tuple{"decode", 3, 150}}) {
    std::vector<Case> cs;
    Case c = base(name, sq, sk);
    cs.push_back(c);
    c.causal = true;
    c.name = std::string(name) + "_causal_tl";
    cs.push_back(c);
    c.align = FSDPA_ALIGN_BOTTOM_RIGHT;
    c.name = std::string(name) + "_causal_br";
    cs.push_back(c);
    Case w = base(name, sq, sk);
    w.wl = 20; w.wr = 5; w.align = FSDPA_ALIGN_BOTTOM_RIGHT;
    w.name = std::string(name) + "_window";
    cs.push_back(w);
    Case m = base(name, sq, sk);
    m.mask = MaskKind::boolean;
    m.name = std::string(name) + "_bool";
    cs.push_back(m);
    m.mask = MaskKind::additive;
    m.name = std::string(name) + "_additive";
    cs.push_back(m);
    Case sc = base(name, sq, sk);
    sc.softcap = 5; sc.alibi = true;
    sc.name = std::string(name) + "_softcap_alibi";
    cs.push_back(sc);
    for (const Case& x : cs)
      for (Where wh : qk) v.push_back({x, wh});
    // v: configurations in which every row attends key 0.
    for (const Case& x : {cs[0], cs[1], cs[6]})
      for (Where wh : {Where::v_nan, Where::v_inf}) v.push_back({x, wh});
    for (Where wh : {Where::mask_nan, Where::mask_posinf}) v.push_back({cs[5], wh});
    v.push_back({cs[6], Where::alibi_nan});
    Case b = cs[1];
    b.dt = DT::bf16;
    for (Where wh : {Where::q_nan, Where::k_nan, Where::v_nan}) v.push_back({b, wh});
  }
  return v;
}

INSTANTIATE_TEST_SUITE_P(Grid, NonFinite, ::testing::ValuesIn(make_cases()),
                         [](const ::testing::TestParamInfo<NonFiniteCase>& i) {
                           return describe(i.param.c) + "_" +
                                  kWhere[static_cast<int>(i.param.where)];
                         });

// check_finite = 1 reports a NaN in k wherever it is: in a key the causal
// band hides from every row (decode reads only visible key blocks), or one a
// bool mask hides.
TEST(CheckFinite, ReportsNaNInKeysHiddenByTheBandOrAMask) {
  for (bool causal : {true, false}) {
    Case c;
    c.B = 1; c.Hq = 2; c.Hk = 2; c.Sq = 2; c.Sk = 300; c.D = 32; c.Dv = 32;
    c.causal = causal;  // top-left: rows 0, 1 see keys 0, 1 only
    c.mask = causal ? MaskKind::none : MaskKind::boolean;
    Problem pr(c);
    if (!causal)
      for (int64_t i = 0; i < c.Sq; ++i) pr.mask.set(i * c.Sk + 250, 0);  // [B,1,Sq,Sk]
    pr.k.set(((0 * c.Hk + 1) * c.Sk + 250) * c.D + 7, NAN);
    Tensor out({c.B, c.Hq, c.Sq, c.Dv}, DT::f32);
    EXPECT_EQ(fsdpa_forward(&pr.p, &pr.q, &pr.k, &pr.v, &out, nullptr, nullptr),
              FSDPA_ERROR_NONFINITE_INPUT)
        << (causal ? "causal" : "bool mask");
    EXPECT_NE(std::string(fsdpa_last_error()).find("k:"), std::string::npos) << fsdpa_last_error();
  }
}

}  // namespace
}  // namespace fsdpa_test
