#include <doctest/doctest.h>

#include "lori/io/safetensors.hpp"
#include "test_util.hpp"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

using lori::io::dtype;

// A raw file image: 8-byte LE length, the header text as given (no padding), then `data_bytes` bytes.
std::vector<std::uint8_t> image(const std::string& header, std::size_t data_bytes, std::uint64_t declared = UINT64_MAX) {
  std::vector<std::uint8_t> out(8);
  const std::uint64_t n = declared == UINT64_MAX ? header.size() : declared;
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(n >> (8 * i));
  out.insert(out.end(), header.begin(), header.end());
  out.resize(out.size() + data_bytes, 0xAB);
  return out;
}

std::string error_of(const std::vector<std::uint8_t>& img) {
  try {
    (void)lori::io::safetensors_file::from_memory(img, "t.safetensors");
  } catch (const lori::error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

std::vector<std::uint8_t> random_bytes(std::size_t n, std::mt19937_64& g) {
  std::vector<std::uint8_t> v(n);
  for (auto& b : v) b = static_cast<std::uint8_t>(g());
  return v;
}

}  // namespace

TEST_CASE("safetensors: write -> read is bit-exact for every dtype, shapes incl. empty and scalar") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(1);
  const std::vector<std::vector<lori::index_t>> shapes = {{}, {0}, {1}, {3, 5}, {2, 0, 4}, {7, 1, 3}};
  for (int t = 0; t <= static_cast<int>(dtype::U64); ++t) {
    const auto dt = static_cast<dtype>(t);
    lori::io::safetensors_writer w;
    std::vector<std::vector<std::uint8_t>> payloads;
    for (std::size_t s = 0; s < shapes.size(); ++s) {
      lori::index_t n = 1;
      for (auto d : shapes[s]) n *= d;
      payloads.push_back(random_bytes(static_cast<std::size_t>(n * lori::io::dtype_size(dt)), g));
      w.add_bytes("t" + std::to_string(s), dt, shapes[s], payloads.back());
    }
    w.set_metadata("format", "pt");
    const auto img = w.serialize();
    CHECK(img.size() % 1 == 0);
    const std::uint64_t n = img[0] | (std::uint64_t(img[1]) << 8);
    CHECK(n % 8 == 0);
    const auto f = lori::io::safetensors_file::from_memory(img);
    REQUIRE(f.tensors().size() == shapes.size());
    CHECK(f.metadata().at("format") == "pt");
    for (std::size_t s = 0; s < shapes.size(); ++s) {
      const auto& info = f.at("t" + std::to_string(s));
      CHECK(info.type == dt);
      CHECK(info.shape == shapes[s]);
      REQUIRE(static_cast<std::size_t>(info.nbytes()) == payloads[s].size());
      CHECK((payloads[s].empty() || std::memcmp(f.raw(info), payloads[s].data(), payloads[s].size()) == 0));
    }
  }
}

TEST_CASE("safetensors: mixed dtypes are ordered by alignment then name, every tensor aligned") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(2);
  lori::io::safetensors_writer w;
  std::vector<float> f32(5);
  std::vector<double> f64(3);
  std::vector<std::uint8_t> u8(3);
  for (auto& x : f32) x = static_cast<float>(std::normal_distribution<double>()(g));
  for (auto& x : f64) x = std::normal_distribution<double>()(g);
  for (auto& x : u8) x = static_cast<std::uint8_t>(g());
  w.add("b", {5}, f32);
  w.add("a", {3}, u8);
  w.add("c", {3}, f64);
  const auto img = w.serialize();
  const std::string header(img.begin() + 8, img.begin() + 8 + static_cast<std::ptrdiff_t>(img[0]));
  CHECK(header.find("\"c\"") < header.find("\"b\""));
  CHECK(header.find("\"b\"") < header.find("\"a\""));
  const auto f = lori::io::safetensors_file::from_memory(img);
  const double* pd = f.data_as<double>(f.at("c"));
  for (int i = 0; i < 3; ++i) CHECK(pd[i] == f64[static_cast<std::size_t>(i)]);
  const float* pf = f.data_as<float>(f.at("b"));
  for (int i = 0; i < 5; ++i) CHECK(pf[i] == f32[static_cast<std::size_t>(i)]);
  CHECK_THROWS_AS(f.data_as<float>(f.at("c")), lori::error);
  const auto as_double = f.read<double>("b");
  for (int i = 0; i < 5; ++i) CHECK(as_double[static_cast<std::size_t>(i)] == static_cast<double>(f32[static_cast<std::size_t>(i)]));
  const auto u8d = f.read<float>("a");
  for (int i = 0; i < 3; ++i) CHECK(u8d[static_cast<std::size_t>(i)] == static_cast<float>(u8[static_cast<std::size_t>(i)]));
}

TEST_CASE("safetensors: bf16 and f16 are widened exactly on read") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(3);
  std::vector<lori::bfloat16> bf(257);
  std::vector<lori::half> hf(257);
  std::vector<float> ref(257);
  for (std::size_t i = 0; i < ref.size(); ++i) {
    ref[i] = static_cast<float>(std::normal_distribution<double>(0, 10)(g));
    bf[i] = lori::bfloat16(ref[i]);
    hf[i] = lori::half(ref[i]);
  }
  lori::io::safetensors_writer w;
  w.add("bf", {257}, bf);
  w.add("hf", {257}, hf);
  const auto f = lori::io::safetensors_file::from_memory(w.serialize());
  const auto rb = f.read<float>("bf");
  const auto rh = f.read<double>("hf");
  for (std::size_t i = 0; i < ref.size(); ++i) {
    CHECK(rb[i] == lori::bf16_bits_to_float(bf[i].bits));
    CHECK(rh[i] == static_cast<double>(lori::half_bits_to_float(hf[i].bits)));
    // Rounding to bf16 keeps 8 significant bits: relative error <= 2^-9.
    CHECK(std::fabs(rb[i] - ref[i]) <= std::ldexp(std::fabs(ref[i]), -8));
  }
}

TEST_CASE("safetensors: header bytes match the reference writer's serialisation") {
  // The reference's own unit test (safetensors/src/tensor.rs test_serialization): one F32 [1,2,3].
  lori::io::safetensors_writer w;
  w.add<float>("attn.0", {1, 2, 3}, {0, 1, 2, 3, 4, 5});
  const auto img = w.serialize();
  const std::string expect_header = R"({"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}})";
  REQUIRE(expect_header.size() == 64);  // already a multiple of 8: no padding
  REQUIRE(img.size() == 8 + 64 + 24);
  CHECK(img[0] == 64);
  CHECK(std::string(img.begin() + 8, img.begin() + 8 + 64) == expect_header);
  // The reference's test_serialization_forced_alignement: "attn0", shape [1,1,2,3] pads 7 spaces.
  lori::io::safetensors_writer w2;
  w2.add<float>("attn0", {1, 1, 2, 3}, {0, 1, 2, 3, 4, 5});
  const auto img2 = w2.serialize();
  CHECK(img2[0] == 72);
  CHECK(std::string(img2.begin() + 8, img2.begin() + 80) ==
        std::string(R"({"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}})") + "       ");
  // Empty file with metadata: {"__metadata__":{"framework":"pt"}} padded to 40.
  lori::io::safetensors_writer e;
  e.set_metadata("framework", "pt");
  const auto eimg = e.serialize();
  CHECK(eimg.size() == 48);
  CHECK(std::string(eimg.begin() + 8, eimg.end()) == std::string(R"({"__metadata__":{"framework":"pt"}})") + "     ");
}

TEST_CASE("safetensors: names and metadata with quotes, controls and UTF-8 survive") {
  lori::io::safetensors_writer w;
  const std::string name = "we\"ird\\name\n\x01 \xc3\xa9";
  w.add<float>(name, {1}, {1.5f});
  w.set_metadata("k\"ey", "va\tlue");
  const auto f = lori::io::safetensors_file::from_memory(w.serialize());
  CHECK(f.contains(name));
  CHECK(f.metadata().at("k\"ey") == "va\tlue");
  CHECK(f.read<float>(name)[0] == 1.5f);
}

TEST_CASE("safetensors_writer: refuses bad input") {
  lori::io::safetensors_writer w;
  w.add<float>("x", {1}, {1.0f});
  CHECK_THROWS_AS(w.add<float>("x", {1}, {1.0f}), lori::error);
  CHECK_THROWS_AS(w.add<float>("__metadata__", {1}, {1.0f}), lori::error);
  CHECK_THROWS_AS(w.add<float>("y", {2}, {1.0f}), lori::error);
  CHECK_THROWS_AS(w.add<float>("z", {-1}, {}), lori::error);
  CHECK_THROWS_AS(w.add<float>("\xff", {1}, {1.0f}), lori::error);
  CHECK_THROWS_AS(w.add_bytes("o", dtype::F64, {INT64_MAX, 2}, {}), lori::error);
}

TEST_CASE("safetensors: file save is atomic and open() memory-maps") {
  const std::string path = "lori_test_io_tmp.safetensors";
  lori::io::safetensors_writer w;
  w.add<double>("w", {2, 2}, {1, 2, 3, 4});
  w.save(path);
  const auto f = lori::io::safetensors_file::open(path);
  CHECK(f.is_mapped());
  CHECK(f.read<double>("w") == std::vector<double>{1, 2, 3, 4});
  CHECK(f.at("w").matrix_shape() == std::pair<lori::index_t, lori::index_t>(2, 2));
  std::remove(path.c_str());
  CHECK_THROWS_AS(lori::io::safetensors_file::open("does/not/exist.safetensors"), lori::error);
  CHECK_THROWS_AS(w.save("does/not/exist/x.safetensors"), lori::error);
}

TEST_CASE("safetensors: each malformed-file rule is rejected with a message saying what and where") {
  const std::string good = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[3],"data_offsets":[8,11]}})";
  CHECK(error_of(image(good, 11)).empty());

  SUBCASE("truncated header") {
    CHECK(contains(error_of({1, 2, 3}), "truncated header"));
    CHECK(contains(error_of({}), "too short"));
  }
  SUBCASE("header length past the end") {
    const auto e = error_of(image(good, 11, good.size() + 100));
    CHECK(contains(e, "runs past the end"));
    CHECK(contains(e, "bytes 0..7"));
  }
  SUBCASE("huge header length") {
    CHECK(contains(error_of(image(good, 11, 100'000'001ull)), "exceeds the 100,000,000-byte limit"));
    CHECK(contains(error_of(image(good, 11, UINT64_MAX - 1)), "exceeds"));
  }
  SUBCASE("header must start with {") {
    CHECK(contains(error_of(image(" " + good, 11)), "must start with '{'"));
    CHECK(contains(error_of(image("", 0)), "must start with '{'"));
  }
  SUBCASE("invalid JSON, with the byte offset") {
    const auto e = error_of(image(R"({"a":{"dtype":"F32",,}})", 0));
    CHECK(contains(e, "not valid JSON"));
    CHECK(contains(e, "byte offset"));
  }
  SUBCASE("invalid UTF-8") { CHECK(contains(error_of(image("{\"\xff\":1}", 0)), "not valid JSON")); }
  SUBCASE("overlapping offsets") {
    const auto e = error_of(image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[3],"data_offsets":[6,9]}})", 9));
    CHECK(contains(e, "overlap"));
    CHECK(contains(e, "tensor 'b'"));
    CHECK(contains(e, "file byte offset"));
  }
  SUBCASE("gaps") {
    const auto e = error_of(image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[3],"data_offsets":[10,13]}})", 13));
    CHECK(contains(e, "gap of 2 bytes"));
    CHECK(contains(e, "tensor 'b'"));
    CHECK(contains(error_of(image(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})", 2)), "gap of 1 bytes"));
  }
  SUBCASE("wrong byte counts") {
    const auto e = error_of(image(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8));
    CHECK(contains(e, "wrong byte count"));
    CHECK(contains(e, "tensor 'a'"));
  }
  SUBCASE("offsets not covering the data exactly") {
    CHECK(contains(error_of(image(good, 12)), "trailing bytes"));
    CHECK(contains(error_of(image(good, 10)), "truncated"));
  }
  SUBCASE("bad dtype") {
    CHECK(contains(error_of(image(R"({"a":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}})", 4)), "unknown or unsupported dtype 'F33'"));
    CHECK(contains(error_of(image(R"({"a":{"dtype":7,"shape":[1],"data_offsets":[0,4]}})", 4)), "dtype is not a string"));
  }
  SUBCASE("non-string metadata") {
    const auto e = error_of(image(R"({"__metadata__":{"k":1}})", 0));
    CHECK(contains(e, "'__metadata__' entry 'k' is not a string"));
    CHECK(contains(error_of(image(R"({"__metadata__":[]})", 0)), "object of strings"));
  }
  SUBCASE("shape and offsets must be non-negative integers") {
    CHECK(contains(error_of(image(R"({"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,0]}})", 0)), "non-negative integers"));
    CHECK(contains(error_of(image(R"({"a":{"dtype":"U8","shape":[1.5],"data_offsets":[0,0]}})", 0)), "non-negative integers"));
    CHECK(contains(error_of(image(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0]}})", 0)), "[begin, end]"));
    CHECK(contains(error_of(image(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[2,1]}})", 0)), "end before begin"));
  }
  SUBCASE("shape overflow") {
    CHECK(contains(error_of(image(R"({"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", 0)), "overflows"));
    CHECK(contains(error_of(image(R"({"a":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,0]}})", 0)), "non-negative integers"));
  }
  SUBCASE("missing, unexpected and duplicate fields") {
    CHECK(contains(error_of(image(R"({"a":{"dtype":"U8","shape":[1]}})", 1)), "needs dtype, shape and data_offsets"));
    CHECK(contains(error_of(image(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":1}})", 1)), "unexpected field 'x'"));
    CHECK(contains(error_of(image(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", 1)), "duplicate key 'a'"));
    CHECK(contains(error_of(image(R"({"a":[1]})", 1)), "not an object"));
    CHECK(contains(error_of(image(R"({"a":1} {"b":2})", 0)), "not valid JSON"));
  }
  SUBCASE("deep nesting is refused before parsing") {
    std::string deep = "{\"a\":";
    for (int i = 0; i < 100000; ++i) deep += '[';
    CHECK(contains(error_of(image(deep, 0)), "nested deeper than 64"));
  }
}

TEST_CASE("safetensors: the PEFT fixture files parse, with the documented shapes") {
  for (const char* name : {"nlu", "math", "code"}) {
    const auto f = lori::io::safetensors_file::open(std::string(LORI_TEST_DATA_DIR) + "/peft_adapters/" + name + "/adapter_model.safetensors");
    CHECK(f.tensors().size() == 28);
    const auto& a = f.at("base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight");
    CHECK(a.type == dtype::F32);
    CHECK(a.shape == std::vector<lori::index_t>{8, 64});
    CHECK(f.at("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight").shape == std::vector<lori::index_t>{64, 8});
  }
}
