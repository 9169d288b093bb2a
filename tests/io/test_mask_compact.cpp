#include <doctest/doctest.h>

#include "lori/io/compact_adapter.hpp"
#include "lori/io/mask_file.hpp"
#include "test_util.hpp"

#include <cstring>
#include <filesystem>
#include <random>
#include <string>

namespace {
const std::string fixtures = std::string(LORI_TEST_DATA_DIR) + "/peft_adapters/";
std::string tmpfile(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("lori_test_io_" + name + "_" + std::to_string(lori_test::base_seed()))).string();
}
bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}
lori::bitmask random_mask(lori::index_t r, lori::index_t c, double keep, std::mt19937_64& g) {
  lori::bitmask m(r, c);
  std::bernoulli_distribution bd(keep);
  for (lori::index_t i = 0; i < r; ++i)
    for (lori::index_t j = 0; j < c; ++j)
      if (bd(g)) m.set(i, j);
  return m;
}
}  // namespace

TEST_CASE("masks: save -> load round trip (U8 and BOOL), odd shapes incl. > 64 columns and empty") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(21);
  lori::io::module_masks masks;
  masks["model.layers.0.q_proj"] = random_mask(64, 8, 0.1, g);
  masks["model.layers.0.k_proj"] = random_mask(5, 130, 0.5, g);
  masks["model.layers.1.v_proj"] = random_mask(0, 8, 0.5, g);
  for (auto t : {lori::io::dtype::U8, lori::io::dtype::BOOL}) {
    const auto path = tmpfile("masks.safetensors");
    lori::io::save_masks(path, masks, t, {{"sparsity", "0.9"}});
    const auto back = lori::io::load_masks(path);
    CHECK(back == masks);
    const auto f = lori::io::safetensors_file::open(path);
    CHECK(f.metadata().at("sparsity") == "0.9");
    CHECK(f.at("base_model.model.model.layers.0.q_proj.lora_B.weight").type == t);
    std::filesystem::remove(path);
  }
}

TEST_CASE("masks: malformed mask files are refused") {
  const auto path = tmpfile("badmask.safetensors");
  auto msg = [&](lori::io::safetensors_writer& w) {
    w.save(path);
    try {
      (void)lori::io::load_masks(path);
    } catch (const lori::error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  {
    lori::io::safetensors_writer w;
    w.add<std::uint8_t>("base_model.model.x.lora_B.weight", {2, 2}, {0, 1, 2, 0});
    CHECK(msg(w).find("value 2 at (1, 0) is not 0 or 1") != std::string::npos);
  }
  {
    lori::io::safetensors_writer w;
    w.add<float>("base_model.model.x.lora_B.weight", {1, 1}, {1});
    CHECK(msg(w).find("must be U8 or BOOL") != std::string::npos);
  }
  {
    lori::io::safetensors_writer w;
    w.add<std::uint8_t>("x.lora_A.weight", {1, 1}, {1});
    CHECK(msg(w).find("mask keys must look like") != std::string::npos);
  }
  {
    lori::io::safetensors_writer w;
    w.add<std::uint8_t>("base_model.model.x.lora_B.weight", {1}, {1});
    CHECK(msg(w).find("2-D") != std::string::npos);
  }
  std::filesystem::remove(path);
}

TEST_CASE("compact: pack -> unpack is bit-exact on the fixtures, dense and sparsified") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(22);
  for (const char* name : {"nlu", "code"}) {
    auto ad = lori::io::load_peft_adapter(fixtures + name);
    for (int sparse = 0; sparse < 2; ++sparse) {
      if (sparse) {
        // LoRI-S: keep 10% of B, and put a -0.0 among the kept-or-dropped entries.
        std::bernoulli_distribution keep(0.1);
        for (auto& m : ad.modules)
          for (auto& b : m.B)
            if (!keep(g)) b = 0.0f;
        ad.modules[0].B[0] = -0.0f;
      }
      const auto path = tmpfile("compact.lori");
      const auto st = lori::io::pack_adapter(ad, path);
      CHECK(st.compact_bytes == static_cast<lori::index_t>(std::filesystem::file_size(path)));
      const auto back = lori::io::unpack_adapter(path);
      REQUIRE(back.modules.size() == ad.modules.size());
      for (std::size_t i = 0; i < ad.modules.size(); ++i) {
        const auto& a = ad.modules[i];
        const auto& b = back.modules[i];
        CHECK(a.name == b.name);
        CHECK(same_bits(a.A, b.A));
        CHECK(same_bits(a.B, b.B));
        CHECK(a.rank == b.rank);
        CHECK(a.scaling == b.scaling);
        CHECK(a.stored_type == b.stored_type);
      }
      CHECK(back.config.raw["target_modules"] == ad.config.raw["target_modules"]);
      if (sparse) {
        CHECK(st.kept < st.b_entries / 5);
        // A dense at r = 8: B shrinks from 4 to ~0.1*4 + 1/8 bytes an entry, A stays: ~1.8x overall.
        CHECK(st.ratio() > 1.5);
      }
      std::filesystem::remove(path);
    }
  }
}

TEST_CASE("compact: A stored as a generator when it regenerates exactly; >= 15x at r = 32, 90% sparsity") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(23);
  // A toy deterministic generator standing in for lori's projection: A[i][j] = f(seed, stream, i, j).
  lori::io::compact_a_generator gen;
  gen.generator = "test.hash";
  gen.seed = 7;
  gen.distribution = "uniform";
  gen.stream_of = [](const std::string& module) { return static_cast<std::uint64_t>(std::hash<std::string>{}(module)); };
  gen.generate = [](const std::string&, lori::index_t r, lori::index_t k, std::uint64_t seed, std::uint64_t stream, const std::string& dist,
                    std::vector<float>& A) {
    A.resize(static_cast<std::size_t>(r * k));
    std::mt19937_64 e(seed ^ stream ^ (dist == "uniform" ? 0u : 1u));
    for (auto& a : A) a = static_cast<float>(static_cast<double>(e() >> 11) * 0x1p-53 - 0.5);
  };
  lori::io::peft_adapter ad;
  ad.config.r = 32;
  ad.config.lora_alpha = 64;
  for (int l = 0; l < 3; ++l) {
    lori::io::lora_module m;
    m.name = "model.layers." + std::to_string(l) + ".self_attn.q_proj";
    m.rank = 32;
    m.in_features = m.out_features = 1024;
    m.alpha = 64;
    m.scaling = 2;
    gen.generate(m.name, 32, 1024, gen.seed, gen.stream_of(m.name), gen.distribution, m.A);
    m.B.assign(1024 * 32, 0.0f);
    std::bernoulli_distribution keep(0.1);
    std::normal_distribution<float> nd;
    for (auto& b : m.B)
      if (keep(g)) b = nd(g);
    ad.modules.push_back(m);
  }
  ad.modules[1].A[5] += 1.0f;  // this module's A is no longer the generator's: stored densely
  const auto path = tmpfile("gen.lori");
  const auto st = lori::io::pack_adapter(ad, path, &gen);
  const auto f = lori::io::safetensors_file::open(path);
  CHECK(!f.contains(ad.modules[0].name + ".A"));
  CHECK(f.contains(ad.modules[1].name + ".A"));
  const auto back = lori::io::unpack_adapter(path, &gen);
  for (std::size_t i = 0; i < 3; ++i) {
    CHECK(same_bits(back.modules[i].A, ad.modules[i].A));
    CHECK(same_bits(back.modules[i].B, ad.modules[i].B));
  }
  CHECK_THROWS_AS(lori::io::unpack_adapter(path), lori::error);  // generator unknown to the reader
  // Without the perturbed module: all A generated, the ratio must reach 15x.
  ad.modules.erase(ad.modules.begin() + 1);
  const auto st2 = lori::io::pack_adapter(ad, path, &gen);
  MESSAGE("compact ratio at r=32, 90% sparse, A generated: " << st2.ratio() << "x");
  CHECK(st2.ratio() >= 15.0);
  CHECK(st.ratio() < st2.ratio());
  std::filesystem::remove(path);
}

TEST_CASE("compact: refuses files that are not compact LoRI") {
  const auto path = tmpfile("notcompact.safetensors");
  lori::io::safetensors_writer w;
  w.add<float>("x", {1}, {1});
  w.save(path);
  CHECK_THROWS_WITH_AS(lori::io::unpack_adapter(path), doctest::Contains("not a compact LoRI file"), lori::error);
  std::filesystem::remove(path);
}

TEST_CASE("compact: a hostile module shape cannot force a huge allocation") {
  const auto path = tmpfile("hostile.lori");
  lori::io::safetensors_writer w;
  w.add_bytes("m.B.mask", lori::io::dtype::U8, {0}, {});
  w.add_bytes("m.B.values", lori::io::dtype::F32, {0}, {});
  w.set_metadata("lori.format", "compact-lori");
  w.set_metadata("lori.version", "1");
  w.set_metadata("lori.peft_config", "{\"r\":8}");
  w.set_metadata("lori.modules",
                 R"({"m":{"rank":1,"in":1,"out":1099511627776,"alpha":1,"dtype":"F32","nnz":0,"mask":{"rice":0},"A":{"generator":"g","seed":0,"stream":0,"distribution":"d"}}})");
  w.save(path);
  CHECK_THROWS_WITH_AS(lori::io::unpack_adapter(path), doctest::Contains("implausibly large"), lori::error);
  std::filesystem::remove(path);
}
