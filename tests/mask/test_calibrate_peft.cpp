// Calibration of the real PEFT 0.21 fixture adapters (tests/data/peft_adapters): PEFT's own names
// must parse at every granularity, and the masks equal the sort-based reference. Also the continual
// learning use: calibrating a second adapter with the first one's mask excluded.
#include <doctest/doctest.h>

#include "calibrate_reference.hpp"
#include "lori/mask/calibrate.hpp"

#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace {

// The lora_B tensors of a safetensors file (F32 only), in the file's header order. A minimal reader
// for this test (lori's io area has the real one): 8-byte header length, JSON header, data.
struct peft_bs {
  std::vector<std::string> names;
  std::vector<std::vector<float>> values;
  std::vector<lori::index_t> rows, cols;
};

peft_bs read_lora_b(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  REQUIRE(f.good());
  std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  REQUIRE(bytes.size() >= 8);
  std::uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  REQUIRE(8 + n <= bytes.size());
  const std::string header(bytes.data() + 8, static_cast<std::size_t>(n));
  const char* data = bytes.data() + 8 + n;
  peft_bs out;
  // Each entry: "<name>":{"dtype":"F32","shape":[r,c],"data_offsets":[b,e]} (no nested objects).
  auto numbers_after = [](const std::string& body, const std::string& field) {
    const std::size_t at = body.find("\"" + field + "\"");
    REQUIRE(at != std::string::npos);
    const std::size_t open = body.find('[', at), close = body.find(']', at);
    REQUIRE((open != std::string::npos && close != std::string::npos && open < close));
    std::vector<std::uint64_t> v;
    std::uint64_t cur = 0;
    bool any = false;
    for (std::size_t i = open + 1; i <= close; ++i) {
      const char ch = body[i];
      if (ch >= '0' && ch <= '9') {
        cur = cur * 10 + static_cast<std::uint64_t>(ch - '0');
        any = true;
      } else if (any) {
        v.push_back(cur);
        cur = 0;
        any = false;
      }
    }
    return v;
  };
  std::size_t pos = 0;
  while ((pos = header.find("lora_B", pos)) != std::string::npos) {
    const std::size_t name_begin = header.rfind('"', pos) + 1, name_end = header.find('"', pos);
    const std::size_t ob = header.find('{', name_end), cb = header.find('}', ob);
    REQUIRE((ob != std::string::npos && cb != std::string::npos));
    const std::string name = header.substr(name_begin, name_end - name_begin), body = header.substr(ob, cb - ob + 1);
    pos = cb;
    REQUIRE(body.find("\"F32\"") != std::string::npos);
    const auto shape = numbers_after(body, "shape"), offs = numbers_after(body, "data_offsets");
    REQUIRE(shape.size() == 2);
    REQUIRE(offs.size() == 2);
    const auto r = static_cast<lori::index_t>(shape[0]), c = static_cast<lori::index_t>(shape[1]);
    REQUIRE(offs[1] - offs[0] == static_cast<std::uint64_t>(r * c) * sizeof(float));
    std::vector<float> v(static_cast<std::size_t>(r * c));
    std::memcpy(v.data(), data + offs[0], static_cast<std::size_t>(offs[1] - offs[0]));
    out.names.push_back(name);
    out.values.push_back(std::move(v));
    out.rows.push_back(r);
    out.cols.push_back(c);
  }
  return out;
}

std::vector<lori::calibration_tensor<float>> views(const peft_bs& p, const std::vector<lori::bitmask>* exclude = nullptr) {
  std::vector<lori::calibration_tensor<float>> ts;
  for (std::size_t t = 0; t < p.names.size(); ++t)
    ts.push_back({p.names[t], lori::row_major_view<const float>(p.values[t].data(), p.rows[t], p.cols[t]),
                  exclude != nullptr ? &(*exclude)[t] : nullptr});
  return ts;
}

const std::string fixtures = LORI_TEST_DATA_DIR "/peft_adapters/";

}  // namespace

TEST_CASE("PEFT fixture adapters: every granularity parses and matches the reference") {
  for (const char* task : {"nlu", "math", "code"}) {
    const auto p = read_lora_b(fixtures + task + "/adapter_model.safetensors");
    REQUIRE(p.names.size() == 14);  // 2 layers x 7 projections, r = 8
    const auto ts = views(p);
    const std::pair<lori::mask_granularity, std::size_t> expect[] = {{lori::mask_granularity::model, 1},
                                                                      {lori::mask_granularity::layer, 2},
                                                                      {lori::mask_granularity::module, 2},
                                                                      {lori::mask_granularity::projection, 7},
                                                                      {lori::mask_granularity::matrix, 14}};
    for (const auto& [gran, groups] : expect)
      for (auto sem : {lori::mask_semantics::reference, lori::mask_semantics::exact}) {
        INFO(task << " " << lori::to_string(gran));
        lori::calibration_options opt;
        opt.granularity = gran;
        opt.semantics = sem;
        const auto r = lori::calibrate_mask(ts, opt);
        const auto ref = lori_test::reference_calibrate(ts, opt);
        CHECK(r.report.groups.size() == groups);
        for (std::size_t t = 0; t < ts.size(); ++t) CHECK(r.masks[t] == ref.masks[t]);
        for (std::size_t g = 0; g < groups; ++g) CHECK(r.report.groups[g].threshold == ref.thresholds[g]);
        CHECK(r.report.layers.size() == 2);
      }
  }
}

TEST_CASE("PEFT fixture adapters: a second task calibrated with the first task's positions excluded") {
  const auto nlu = read_lora_b(fixtures + "nlu/adapter_model.safetensors");
  const auto math = read_lora_b(fixtures + "math/adapter_model.safetensors");
  REQUIRE(nlu.names == math.names);
  lori::calibration_options opt;
  opt.semantics = lori::mask_semantics::exact;
  const auto first = lori::calibrate_mask(views(nlu), opt);
  const auto second = lori::calibrate_mask(views(math, &first.masks), opt);
  const auto ref = lori_test::reference_calibrate(views(math, &first.masks), opt);
  for (std::size_t t = 0; t < nlu.names.size(); ++t) {
    CHECK(second.masks[t].count_and(first.masks[t]) == 0);  // never an excluded position
    CHECK(second.masks[t] == ref.masks[t]);
  }
  CHECK(second.report.total_kept == second.report.groups[0].k);  // 10% < 90% free: exactly k kept
}
