// CPU mask calibration: radix selection against a naive sort-based reference, at every granularity,
// both semantics, float and double, with ties, exclusions, padded views and odd shapes; the edge cases
// (s = 0, s = 1, k = 0, one element, signed zeros), the errors, the report, custom grouping, and the
// summability of the histogram step.
#include <doctest/doctest.h>

#include "calibrate_reference.hpp"
#include "lori/mask/calibrate.hpp"
#include "lori/mask/grouping.hpp"
#include "lori/mask/radix_select.hpp"
#include "test_util.hpp"

#include <limits>
#include <string>
#include <vector>

namespace {

using lori_test::all_granularities;
using lori_test::all_semantics;

// Runs calibrate_mask and the naive reference on the same input and compares masks bit for bit,
// thresholds exactly (both are the k-th largest |x| of the same finite values: no rounding), and the
// report's counts against the masks.
template <class T>
void check_against_reference(const std::vector<lori::calibration_tensor<T>>& ts, const lori::calibration_options& opt) {
  const auto got = lori::calibrate_mask(ts, opt);
  const auto ref = lori_test::reference_calibrate(ts, opt);
  REQUIRE(got.masks.size() == ts.size());
  REQUIRE(got.report.groups.size() == ref.thresholds.size());
  for (std::size_t g = 0; g < ref.thresholds.size(); ++g) {
    INFO("group " << got.report.groups[g].label);
    CHECK(got.report.groups[g].k == ref.ks[g]);
    CHECK(got.report.groups[g].threshold == ref.thresholds[g]);
  }
  lori::index_t total = 0;
  for (std::size_t t = 0; t < ts.size(); ++t) {
    INFO("tensor " << ts[t].name << " " << ts[t].values.rows() << "x" << ts[t].values.cols());
    REQUIRE(got.masks[t].rows() == ts[t].values.rows());
    REQUIRE(got.masks[t].cols() == ts[t].values.cols());
    CHECK(got.masks[t] == ref.masks[t]);
    CHECK(got.report.tensors[t].kept == ref.masks[t].count());
    total += ref.masks[t].count();
  }
  CHECK(got.report.total_kept == total);
  if (opt.semantics == lori::mask_semantics::exact) {
    for (const auto& gr : got.report.groups) CHECK(gr.kept <= gr.k);
  }
}

template <class T>
void sweep(const lori_test::random_adapter_spec& spec, std::uint64_t salt) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(salt);
  const auto a = lori_test::make_random_adapter<T>(spec, g);
  for (double s : {0.0, 0.5, 0.9, 0.97, 1.0}) {
    for (auto gran : all_granularities) {
      for (auto sem : all_semantics) {
        INFO("s=" << s << " granularity=" << lori::to_string(gran) << " exact=" << (sem == lori::mask_semantics::exact));
        lori::calibration_options opt;
        opt.sparsity = s;
        opt.granularity = gran;
        opt.semantics = sem;
        check_against_reference(a.tensors, opt);
      }
    }
  }
}

}  // namespace

TEST_CASE("calibrate_mask equals the sort-based reference: normal values, every granularity and semantics") {
  lori_test::random_adapter_spec spec;
  sweep<float>(spec, 1);
  sweep<double>(spec, 2);
}

TEST_CASE("calibrate_mask equals the reference with padded views, exclusions and odd shapes") {
  lori_test::random_adapter_spec spec;
  spec.padded_ld = true;
  spec.exclude_prob = 0.6;
  sweep<float>(spec, 3);
  spec.odd_shapes = true;
  sweep<float>(spec, 4);
  sweep<double>(spec, 5);
}

TEST_CASE("calibrate_mask equals the reference under heavy ties (few levels, signed zeros)") {
  lori_test::random_adapter_spec spec;
  spec.ties = true;
  sweep<float>(spec, 6);
  spec.exclude_prob = 0.5;
  sweep<float>(spec, 7);
  sweep<double>(spec, 8);
}

TEST_CASE("ties: reference keeps every tie, exact keeps exactly k by flat order") {
  // 2 x 3 and 1 x 4, all |x| = 1 except one 2: k = floor(0.5 * 10) = 5.
  std::vector<float> a = {1, -1, 1, 1, 2, -1}, b = {1, 1, -1, 1};
  std::vector<lori::calibration_tensor<float>> ts = {{"a", lori::row_major_view<const float>(a.data(), 2, 3), nullptr},
                                                     {"b", lori::row_major_view<const float>(b.data(), 1, 4), nullptr}};
  lori::calibration_options opt;
  opt.sparsity = 0.5;
  auto ref = lori::calibrate_mask(ts, opt);
  CHECK(ref.report.groups[0].k == 5);
  CHECK(ref.report.groups[0].threshold == 1.0);
  CHECK(ref.report.total_kept == 10);  // every |x| >= 1
  opt.semantics = lori::mask_semantics::exact;
  auto ex = lori::calibrate_mask(ts, opt);
  CHECK(ex.report.total_kept == 5);
  // The 2 at (1, 1), then the first four ties in flat order: (0,0), (0,1), (0,2), (1,0).
  CHECK(ex.masks[0].to_bytes() == std::vector<std::uint8_t>{1, 1, 1, 1, 1, 0});
  CHECK(ex.masks[1].to_bytes() == std::vector<std::uint8_t>{0, 0, 0, 0});
  CHECK(ex.report.groups[0].ties_kept == 4);
}

TEST_CASE("edge cases: s = 0, s = 1, k = 0, one element, zeros and negative zeros") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(9);
  std::vector<float> v = {0.5f, -0.0f, 0.0f, -2.0f, 0.0f, 1e-40f /* subnormal */};
  std::vector<lori::calibration_tensor<float>> ts = {{"t", lori::row_major_view<const float>(v.data(), 2, 3), nullptr}};
  lori::calibration_options opt;
  for (auto sem : all_semantics) {
    opt.semantics = sem;
    opt.sparsity = 0.0;  // k = N: keep everything (tau = 0, so reference keeps zeros too)
    auto r = lori::calibrate_mask(ts, opt);
    CHECK(r.masks[0].count() == 6);
    CHECK(r.report.groups[0].threshold == 0.0);
    opt.sparsity = 1.0;  // k = 0: nothing
    r = lori::calibrate_mask(ts, opt);
    CHECK(r.masks[0].count() == 0);
    CHECK(r.report.groups[0].threshold == std::numeric_limits<double>::infinity());
    opt.sparsity = 0.5;  // k = 3: tau = |1e-40|: 2, 0.5, 1e-40 (no ties)
    r = lori::calibrate_mask(ts, opt);
    CHECK(r.masks[0].to_bytes() == std::vector<std::uint8_t>{1, 0, 0, 1, 0, 1});
    CHECK(r.report.groups[0].threshold == static_cast<double>(1e-40f));
    opt.sparsity = 1.0 / 3.0;  // k = 4 -> tau = 0: reference keeps all 6 (|x| >= 0), exact the zero at (0, 1)
    r = lori::calibrate_mask(ts, opt);
    CHECK(r.report.groups[0].k == 4);
    CHECK(r.report.groups[0].threshold == 0.0);
    if (sem == lori::mask_semantics::reference) {
      CHECK(r.masks[0].count() == 6);
    } else {
      CHECK(r.masks[0].to_bytes() == std::vector<std::uint8_t>{1, 1, 0, 1, 0, 1});
    }
  }
  // k = floor(0.1 * N) = 0 for a small group: nothing kept, even though s < 1.
  opt.semantics = lori::mask_semantics::reference;
  opt.sparsity = 0.9;
  auto r = lori::calibrate_mask(ts, opt);
  CHECK(r.report.groups[0].k == 0);
  CHECK(r.masks[0].count() == 0);
  // One element.
  float one = -3.5f;
  std::vector<lori::calibration_tensor<float>> single = {{"x", lori::row_major_view<const float>(&one, 1, 1), nullptr}};
  opt.sparsity = 0.0;
  r = lori::calibrate_mask(single, opt);
  CHECK(r.masks[0].test(0, 0));
  CHECK(r.report.groups[0].threshold == 3.5);
  // An all-zero tensor with exclusions: reference (tau = 0) keeps every non-excluded zero.
  std::vector<float> z(10, 0.0f);
  lori::bitmask ex(2, 5);
  ex.set(0, 1);
  ex.set(1, 4);
  std::vector<lori::calibration_tensor<float>> zt = {{"z", lori::row_major_view<const float>(z.data(), 2, 5), &ex}};
  opt.sparsity = 0.5;
  r = lori::calibrate_mask(zt, opt);
  CHECK(r.masks[0].count() == 8);
  CHECK(r.masks[0].count_and(ex) == 0);
  opt.semantics = lori::mask_semantics::exact;
  r = lori::calibrate_mask(zt, opt);
  CHECK(r.masks[0].to_bytes() == std::vector<std::uint8_t>{1, 0, 1, 1, 1, 1, 0, 0, 0, 0});
  // Empty tensors among others are fine; their masks are empty.
  std::vector<float> w = {1, 2, 3, 4};
  std::vector<lori::calibration_tensor<float>> withempty = {{"e", lori::row_major_view<const float>(nullptr, 0, 8), nullptr},
                                                            {"w", lori::row_major_view<const float>(w.data(), 2, 2), nullptr}};
  opt.semantics = lori::mask_semantics::reference;
  r = lori::calibrate_mask(withempty, opt);
  CHECK(r.masks[0].size() == 0);
  CHECK(r.masks[1].to_bytes() == std::vector<std::uint8_t>{0, 0, 1, 1});
  (void)g;
}

TEST_CASE("k follows Python's int((1 - s) * N)") {
  CHECK(lori::calibration_keep_count(10, 0.9) == 0);    // (1 - 0.9) * 10 = 0.9999999999999998
  CHECK(lori::calibration_keep_count(100, 0.9) == 9);   // 9.999999999999998
  CHECK(lori::calibration_keep_count(1000, 0.5) == 500);
  CHECK(lori::calibration_keep_count(44040192, 0.9) == 4404019);
  CHECK(lori::calibration_keep_count(7, 0.0) == 7);
  CHECK(lori::calibration_keep_count(7, 1.0) == 0);
  CHECK(lori::calibration_keep_count(0, 0.3) == 0);
}

TEST_CASE("NaN and Inf are rejected with the tensor's name and index") {
  const float bads[] = {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                        -std::numeric_limits<float>::infinity()};
  for (float bad : bads) {
    std::vector<float> a(12, 0.5f), b(8, 0.25f);
    b[5] = bad;  // (1, 1) of a 2 x 4
    std::vector<lori::calibration_tensor<float>> ts = {
        {"layers.0.self_attn.q_proj.lora_B.weight", lori::row_major_view<const float>(a.data(), 3, 4), nullptr},
        {"layers.0.mlp.up_proj.lora_B.weight", lori::row_major_view<const float>(b.data(), 2, 4), nullptr}};
    for (double s : {0.0, 0.9, 1.0}) {
      lori::calibration_options opt;
      opt.sparsity = s;
      CHECK_THROWS_WITH_AS(lori::calibrate_mask(ts, opt), doctest::Contains("layers.0.mlp.up_proj.lora_B.weight"), lori::error);
      CHECK_THROWS_WITH_AS(lori::calibrate_mask(ts, opt), doctest::Contains("flat index 5"), lori::error);
    }
  }
  std::vector<double> d = {1.0, std::numeric_limits<double>::quiet_NaN()};
  std::vector<lori::calibration_tensor<double>> td = {{"dbl", lori::row_major_view<const double>(d.data(), 1, 2), nullptr}};
  CHECK_THROWS_WITH_AS(lori::calibrate_mask(td), doctest::Contains("dbl"), lori::error);
}

TEST_CASE("calibrate_mask rejects bad arguments") {
  std::vector<float> a(6, 1.0f);
  std::vector<lori::calibration_tensor<float>> ts = {{"t", lori::row_major_view<const float>(a.data(), 2, 3), nullptr}};
  lori::calibration_options opt;
  opt.sparsity = -0.1;
  CHECK_THROWS_AS(lori::calibrate_mask(ts, opt), lori::error);
  opt.sparsity = 1.5;
  CHECK_THROWS_AS(lori::calibrate_mask(ts, opt), lori::error);
  opt.sparsity = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_AS(lori::calibrate_mask(ts, opt), lori::error);
  opt.sparsity = 0.5;
  CHECK_THROWS_AS(lori::calibrate_mask(std::vector<lori::calibration_tensor<float>>{}, opt), lori::error);
  lori::bitmask wrong(3, 2);
  ts[0].exclude = &wrong;
  CHECK_THROWS_AS(lori::calibrate_mask(ts, opt), lori::error);
  ts[0].exclude = nullptr;
  opt.granularity = lori::mask_granularity::layer;  // "t" has no layer index
  CHECK_THROWS_WITH_AS(lori::calibrate_mask(ts, opt), doctest::Contains("'t'"), lori::error);
  opt.granularity = lori::mask_granularity::module;
  CHECK_THROWS_AS(lori::calibrate_mask(ts, opt), lori::error);
  opt.granularity = lori::mask_granularity::matrix;
  CHECK(lori::calibrate_mask(ts, opt).report.total_kept == 6);  // all tie at 1: reference keeps every tie
}

TEST_CASE("PEFT names parse into layer, module and projection") {
  auto i = lori::parse_peft_name("base_model.model.model.layers.12.self_attn.q_proj.lora_B.weight");
  CHECK(i.layer == 12);
  CHECK(i.module == "attention");
  CHECK(i.projection == "q_proj");
  i = lori::parse_peft_name("model.layers.3.mlp.down_proj.lora_B.default.weight");
  CHECK(i.layer == 3);
  CHECK(i.module == "mlp");
  CHECK(i.projection == "down_proj");
  i = lori::parse_peft_name("transformer.h.7.attn.c_attn");
  CHECK(i.layer == 7);
  CHECK(i.module == "attention");
  CHECK(i.projection == "c_attn");
  i = lori::parse_peft_name("roberta.encoder.layer.0.attention.self.query.lora_B.weight");
  CHECK(i.layer == 0);
  CHECK(i.projection == "query");
  i = lori::parse_peft_name("lm_head");
  CHECK(i.layer == -1);
  CHECK(i.module.empty());
  CHECK(i.projection == "lm_head");
  CHECK(lori::mask_group_label("model.layers.3.mlp.up_proj.lora_B.weight", lori::mask_granularity::layer) == "layer.3");
  CHECK(lori::mask_group_label("model.layers.3.mlp.up_proj.lora_B.weight", lori::mask_granularity::module) == "mlp");
  CHECK(lori::mask_group_label("model.layers.3.mlp.up_proj.lora_B.weight", lori::mask_granularity::projection) == "up_proj");
  CHECK_THROWS_AS(lori::mask_group_label("lm_head", lori::mask_granularity::layer), lori::error);
  const auto groups = lori::assign_mask_groups({"layers.0.self_attn.q_proj", "layers.0.mlp.up_proj", "layers.1.self_attn.q_proj"},
                                               lori::mask_granularity::projection);
  CHECK(groups.count() == 2);
  CHECK(groups.group_of == std::vector<lori::index_t>{0, 1, 0});
  CHECK(groups.labels == std::vector<std::string>{"q_proj", "up_proj"});
}

TEST_CASE("custom grouping function") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(10);
  lori_test::random_adapter_spec spec;
  const auto a = lori_test::make_random_adapter<float>(spec, g);
  // Group by "even/odd layer" and "q/k/v/o vs rest": a scheme no granularity expresses.
  lori::calibration_options opt;
  opt.group_by = [](std::string_view name) {
    const auto info = lori::parse_peft_name(name);
    return std::string(info.layer % 2 == 0 ? "even-" : "odd-") + (info.module == "attention" ? "attn" : "mlp");
  };
  for (auto sem : all_semantics) {
    opt.semantics = sem;
    check_against_reference(a.tensors, opt);
    const auto r = lori::calibrate_mask(a.tensors, opt);
    CHECK(r.report.groups.size() == 4);
    CHECK(r.report.custom_grouping);
  }
}

TEST_CASE("report: thresholds, kept counts and fractions per tensor, layer and in total") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(12);
  lori_test::random_adapter_spec spec;
  spec.layers = 4;
  const auto a = lori_test::make_random_adapter<float>(spec, g);
  lori::calibration_options opt;
  opt.sparsity = 0.9;
  opt.semantics = lori::mask_semantics::exact;
  const auto r = lori::calibrate_mask(a.tensors, opt);
  const auto& rep = r.report;
  lori::index_t n = 0;
  for (const auto& t : a.tensors) n += t.values.size();
  CHECK(rep.total_size == n);
  CHECK(rep.groups.size() == 1);
  CHECK(rep.groups[0].k == lori::calibration_keep_count(n, 0.9));
  CHECK(rep.total_kept == rep.groups[0].k);  // normal draws: exact keeps k (no exclusions)
  CHECK(rep.total_fraction == doctest::Approx(static_cast<double>(rep.total_kept) / static_cast<double>(n)));
  REQUIRE(rep.layers.size() == 4);
  for (int l = 0; l < 4; ++l) {
    lori::index_t size = 0, kept = 0;
    for (std::size_t t = 0; t < a.tensors.size(); ++t)
      if (static_cast<int>(t / 7) == l) {
        size += a.tensors[t].values.size();
        kept += r.masks[t].count();
      }
    CHECK(rep.layers[static_cast<std::size_t>(l)].layer == l);
    CHECK(rep.layers[static_cast<std::size_t>(l)].size == size);
    CHECK(rep.layers[static_cast<std::size_t>(l)].kept == kept);
  }
  for (std::size_t t = 0; t < a.tensors.size(); ++t) {
    CHECK(rep.tensors[t].kept == r.masks[t].count());
    CHECK(rep.tensors[t].fraction == doctest::Approx(r.masks[t].density()));
    CHECK(rep.tensors[t].layer == static_cast<lori::index_t>(t / 7));
  }
  // Every kept |x| is >= tau and every dropped one <= tau.
  const float tau = static_cast<float>(rep.groups[0].threshold);
  for (std::size_t t = 0; t < a.tensors.size(); ++t)
    for (lori::index_t i = 0; i < a.tensors[t].values.rows(); ++i)
      for (lori::index_t j = 0; j < a.tensors[t].values.cols(); ++j) {
        const float m = std::fabs(a.tensors[t].values(i, j));
        if (r.masks[t].test(i, j)) REQUIRE(m >= tau);
        else REQUIRE(m <= tau);
      }
  const std::string text = rep.to_string();
  CHECK(text.find("total sparsity") != std::string::npos);
  CHECK(text.find("layer 3 sparsity") != std::string::npos);
}

TEST_CASE("histograms of shards add up to the histogram of the whole; sharded selection finds the same tau") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(13);
  const auto x = lori_test::randn<float>(301, 17, g);
  lori::bitmask ex(301, 17);
  std::bernoulli_distribution b(0.2);
  for (lori::index_t i = 0; i < 301; ++i)
    for (lori::index_t j = 0; j < 17; ++j)
      if (b(g)) ex.set(i, j);
  lori::row_major_view<const float> whole(x.data(), 301, 17);
  // Shards: rows [0, 120) and [120, 301) with their own exclusion masks.
  lori::bitmask ex0(120, 17), ex1(181, 17);
  for (lori::index_t i = 0; i < 301; ++i)
    for (lori::index_t j = 0; j < 17; ++j)
      if (ex.test(i, j)) (i < 120 ? ex0 : ex1).set(i < 120 ? i : i - 120, j);
  const auto s0 = whole.block(0, 0, 120, 17), s1 = whole.block(120, 0, 181, 17);
  const lori::index_t n = 301 * 17, k = lori::calibration_keep_count(n, 0.9);
  auto st = lori::radix_select_begin<std::uint32_t>(k, n, 31);
  std::vector<std::uint64_t> hw(lori::radix_bins), h0(lori::radix_bins), h1(lori::radix_bins);
  for (int p = 0; p < lori::radix_passes<float>; ++p) {
    std::fill(hw.begin(), hw.end(), 0);
    std::fill(h0.begin(), h0.end(), 0);
    std::fill(h1.begin(), h1.end(), 0);
    lori::magnitude_histogram<float>(whole, &ex, p, st.prefix, hw.data());
    lori::magnitude_histogram<float>(s0, &ex0, p, st.prefix, h0.data());
    lori::magnitude_histogram<float>(s1, &ex1, p, st.prefix, h1.data());
    std::uint64_t total = 0;
    for (int i = 0; i < lori::radix_bins; ++i) {
      REQUIRE(h0[static_cast<std::size_t>(i)] + h1[static_cast<std::size_t>(i)] == hw[static_cast<std::size_t>(i)]);
      total += hw[static_cast<std::size_t>(i)];
    }
    CHECK(total >= static_cast<std::uint64_t>(st.remaining));
    for (int i = 0; i < lori::radix_bins; ++i) h0[static_cast<std::size_t>(i)] += h1[static_cast<std::size_t>(i)];
    lori::radix_select_advance(st, h0.data());
  }
  CHECK(st.finished());
  lori::calibration_options opt;
  opt.sparsity = 0.9;
  const auto r = lori::calibrate_mask(std::vector<lori::calibration_tensor<float>>{{"w", whole, &ex}}, opt);
  CHECK(static_cast<std::uint64_t>(st.threshold()) == r.report.groups[0].threshold_bits);
  // A histogram that cannot hold the rank is refused.
  auto bad = lori::radix_select_begin<std::uint32_t>(5, 10, 31);
  std::vector<std::uint64_t> few(lori::radix_bins, 0);
  few[3] = 2;
  CHECK_THROWS_AS(lori::radix_select_advance(bad, few.data()), lori::error);
  CHECK_THROWS_AS(lori::radix_select_begin<std::uint32_t>(11, 10, 31), lori::error);
}

TEST_CASE("magnitude keys order like magnitudes") {
  CHECK(lori::magnitude_bits(-0.0f) == 0u);
  CHECK(lori::magnitude_bits(0.0f) == 0u);
  CHECK(lori::magnitude_bits(-1.5f) == lori::magnitude_bits(1.5f));
  CHECK(lori::magnitude_bits(1e-45f) < lori::magnitude_bits(1e-38f));
  CHECK(lori::magnitude_bits(std::numeric_limits<float>::max()) == lori::magnitude_key<float>::max_finite);
  CHECK(lori::magnitude_bits(std::numeric_limits<double>::infinity()) == lori::magnitude_key<double>::infinity);
  CHECK(lori::magnitude_from_bits<float>(lori::magnitude_bits(-2.25f)) == 2.25f);
  CHECK(lori::radix_shift(31, 0) == 20);
  CHECK(lori::radix_width(31, 2) == 9);
  CHECK(lori::radix_passes<double> == 6);
  CHECK(lori::radix_width(63, 5) == 8);
}
