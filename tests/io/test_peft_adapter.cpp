#include <doctest/doctest.h>

#include "lori/io/peft_adapter.hpp"
#include "test_util.hpp"

#include <cmath>
#include <cstring>
#include <tuple>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace {
const std::string fixtures = std::string(LORI_TEST_DATA_DIR) + "/peft_adapters/";

// Expected (out, in) of each fixture module kind (tests/data/peft_adapters/README.md).
std::pair<lori::index_t, lori::index_t> fixture_shape(const std::string& module) {
  auto ends = [&](const char* s) { return module.size() >= std::strlen(s) && module.compare(module.size() - std::strlen(s), std::strlen(s), s) == 0; };
  if (ends("q_proj") || ends("o_proj")) return {64, 64};
  if (ends("k_proj") || ends("v_proj")) return {32, 64};
  if (ends("gate_proj") || ends("up_proj")) return {160, 64};
  if (ends("down_proj")) return {64, 160};
  return {-1, -1};
}

std::string tmpdir(const std::string& name) {
  const auto p = std::filesystem::temp_directory_path() / ("lori_test_io_" + name + "_" + std::to_string(lori_test::base_seed()));
  std::filesystem::remove_all(p);
  return p.string();
}

void write_text(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }
}  // namespace

TEST_CASE("peft: the fixture adapters load with scaling 2 and the documented shapes") {
  for (const char* name : {"nlu", "math", "code"}) {
    const auto ad = lori::io::load_peft_adapter(fixtures + name);
    CHECK(ad.modules.size() == 14);
    CHECK(ad.config.r == 8);
    CHECK(ad.config.lora_alpha == 16);
    for (const auto& m : ad.modules) {
      INFO(m.name);
      CHECK(m.rank == 8);
      CHECK(m.scaling == 2.0);
      const auto [d, k] = fixture_shape(m.name);
      CHECK(m.out_features == d);
      CHECK(m.in_features == k);
      CHECK(m.A.size() == static_cast<std::size_t>(8 * k));
      CHECK(m.B.size() == static_cast<std::size_t>(d * 8));
      CHECK(m.stored_type == lori::io::dtype::F32);
      // PEFT's kaiming-uniform A is bounded by 1/sqrt(in_features).
      for (float a : m.A) REQUIRE(std::fabs(a) <= 1.0 / std::sqrt(static_cast<double>(k)) + 1e-7);
    }
    CHECK(ad.find("model.layers.1.mlp.down_proj") != nullptr);
    CHECK(ad.parameter_count() == 2 * 8 * ((64 + 64) * 2 + (32 + 64) * 2 + (160 + 64) * 3));
  }
}

TEST_CASE("peft: write -> read round trip keeps every bit and the config") {
  const auto ad = lori::io::load_peft_adapter(fixtures + "math");
  const std::string out = tmpdir("roundtrip");
  lori::io::save_peft_adapter(ad, out);
  const auto back = lori::io::load_peft_adapter(out);
  REQUIRE(back.modules.size() == ad.modules.size());
  for (std::size_t i = 0; i < ad.modules.size(); ++i) {
    CHECK(back.modules[i].name == ad.modules[i].name);
    CHECK(back.modules[i].A == ad.modules[i].A);
    CHECK(back.modules[i].B == ad.modules[i].B);
    CHECK(back.modules[i].scaling == ad.modules[i].scaling);
  }
  CHECK(back.config.raw["target_modules"] == ad.config.raw["target_modules"]);
  CHECK(back.config.raw["peft_version"] == "0.21.0");
  // Same tensors, same bytes: the safetensors file is identical to PEFT's.
  const auto a = lori::io::safetensors_file::open(fixtures + "math/adapter_model.safetensors");
  const auto b = lori::io::safetensors_file::open(out + "/adapter_model.safetensors");
  for (const auto& t : a.tensors()) CHECK(std::memcmp(a.raw(t), b.raw(b.at(t.name)), static_cast<std::size_t>(t.nbytes())) == 0);
  std::filesystem::remove_all(out);
}

TEST_CASE("peft: rank_pattern / alpha_pattern / use_rslora give PEFT's per-module scaling") {
  const std::string cfg = R"({"peft_type":"LORA","r":8,"lora_alpha":16,"use_rslora":false,
    "rank_pattern":{"q_proj":4,"layers.1.self_attn.k_proj":2},
    "alpha_pattern":{"layers\\.0\\..*":3,"o_proj":5},"target_modules":["q_proj","k_proj","o_proj"]})";
  const auto c = lori::io::peft_config::parse(cfg, "cfg");
  CHECK(c.rank_alpha("model.layers.0.self_attn.q_proj") == std::pair<lori::index_t, double>(4, 3));
  CHECK(c.rank_alpha("model.layers.1.self_attn.q_proj") == std::pair<lori::index_t, double>(4, 16));
  CHECK(c.rank_alpha("model.layers.1.self_attn.k_proj") == std::pair<lori::index_t, double>(2, 16));
  CHECK(c.rank_alpha("model.layers.11.self_attn.k_proj") == std::pair<lori::index_t, double>(8, 16));
  CHECK(c.rank_alpha("model.layers.1.self_attn.o_proj") == std::pair<lori::index_t, double>(8, 5));
  // "(.*\.)?(key)$": a key must match whole dot-separated suffix, not a substring.
  CHECK(c.rank_alpha("model.layers.1.self_attn.xq_proj") == std::pair<lori::index_t, double>(8, 16));
  // First key in file order wins: layers.0.* (alpha 3) precedes o_proj (5).
  CHECK(c.rank_alpha("model.layers.0.self_attn.o_proj").second == 3);
  CHECK(c.scaling_for(4, 16) == 4.0);
  auto rs = lori::io::peft_config::parse(R"({"r":16,"lora_alpha":8,"use_rslora":true})", "cfg");
  CHECK(rs.scaling_for(16, 8) == 2.0);
  CHECK(rs.scaling_for(2, 8) == 8.0 / std::sqrt(2.0));
}

TEST_CASE("peft: per-module ranks and alphas survive save -> load (rank_pattern written)") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(11);
  lori::io::peft_adapter ad;
  ad.config.use_rslora = true;
  const std::vector<std::tuple<std::string, lori::index_t, double>> mods = {
      {"model.layers.0.q_proj", 4, 8}, {"model.layers.0.k_proj", 4, 8}, {"model.layers.1.q_proj", 2, 3}, {"model.layers.10.q_proj", 4, 8}};
  for (const auto& [name, r, alpha] : mods) {
    lori::io::lora_module m;
    m.name = name;
    m.rank = r;
    m.in_features = 5;
    m.out_features = 3;
    m.alpha = alpha;
    const auto A = lori_test::randn<float>(r, 5, g);
    const auto B = lori_test::randn<float>(3, r, g);
    m.A.assign(A.data(), A.data() + A.size());
    m.B.assign(B.data(), B.data() + B.size());
    m.stored_type = lori::io::dtype::BF16;
    for (auto& x : m.A) x = lori::bf16_bits_to_float(lori::float_to_bf16_bits(x));
    for (auto& x : m.B) x = lori::bf16_bits_to_float(lori::float_to_bf16_bits(x));
    ad.modules.push_back(m);
  }
  const std::string out = tmpdir("patterns");
  lori::io::save_peft_adapter(ad, out);
  const auto back = lori::io::load_peft_adapter(out);
  REQUIRE(back.modules.size() == 4);
  for (const auto& m : ad.modules) {
    const auto* b = back.find(m.name);
    REQUIRE(b != nullptr);
    CHECK(b->rank == m.rank);
    CHECK(b->alpha == m.alpha);
    CHECK(b->scaling == m.alpha / std::sqrt(static_cast<double>(m.rank)));
    CHECK(b->A == m.A);
    CHECK(b->B == m.B);
    CHECK(b->stored_type == lori::io::dtype::BF16);
  }
  std::filesystem::remove_all(out);
}

TEST_CASE("peft: unsupported features and inconsistent folders are refused with clear messages") {
  const std::string dir = tmpdir("bad");
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(fixtures + "nlu/adapter_model.safetensors", dir + "/adapter_model.safetensors");
  auto msg = [&](const std::string& cfg) {
    write_text(dir + "/adapter_config.json", cfg);
    try {
      (void)lori::io::load_peft_adapter(dir);
    } catch (const lori::error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  CHECK(msg(R"({"r":8,"lora_alpha":16})").empty());
  CHECK(msg(R"({"r":8,"use_dora":true})").find("DoRA") != std::string::npos);
  CHECK(msg(R"({"r":8,"lora_bias":true})").find("lora_bias") != std::string::npos);
  CHECK(msg(R"({"r":8,"peft_type":"IA3"})").find("peft_type 'IA3'") != std::string::npos);
  CHECK(msg(R"({"r":8,"modules_to_save":["lm_head"]})").find("modules_to_save") != std::string::npos);
  CHECK(msg(R"({"r":4})").find("gives r = 4") != std::string::npos);
  CHECK(msg(R"({"r":"8"})").find("'r' must be a positive integer") != std::string::npos);
  CHECK(msg(R"({"r":8,"rank_pattern":{"(":2}})").find("not a valid regular expression") != std::string::npos);
  CHECK(msg("{\"r\":8,").find("not valid JSON") != std::string::npos);
  CHECK(msg(R"([1])").find("not a JSON object") != std::string::npos);
  std::filesystem::remove(dir + "/adapter_config.json");
  CHECK_THROWS_AS(lori::io::load_peft_adapter(dir), lori::error);
  CHECK_THROWS_AS(lori::io::load_peft_adapter(dir + "/nope"), lori::error);
  std::filesystem::remove_all(dir);
}

TEST_CASE("peft: tensors that are not LoRA A/B pairs are refused") {
  const std::string dir = tmpdir("keys");
  std::filesystem::create_directories(dir);
  write_text(dir + "/adapter_config.json", R"({"r":2,"lora_alpha":2})");
  auto msg = [&](lori::io::safetensors_writer& w) {
    w.save(dir + "/adapter_model.safetensors");
    try {
      (void)lori::io::load_peft_adapter(dir);
    } catch (const lori::error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  const std::vector<float> a(6, 1.0f), b(8, 1.0f);
  {
    lori::io::safetensors_writer w;
    w.add<float>("base_model.model.x.lora_A.weight", {2, 3}, a);
    CHECK(msg(w).find("lora_A without lora_B") != std::string::npos);
  }
  {
    lori::io::safetensors_writer w;
    w.add<float>("base_model.model.x.lora_A.weight", {2, 3}, a);
    w.add<float>("base_model.model.x.lora_B.weight", {2, 4}, b);
    CHECK(msg(w).find("rank mismatch") != std::string::npos);
  }
  {
    lori::io::safetensors_writer w;
    w.add<float>("base_model.model.x.lora_A.weight", {2, 3}, a);
    w.add<float>("base_model.model.x.lora_B.weight", {4, 2}, b);
    w.add<float>("base_model.model.x.lora_magnitude_vector", {4}, {1, 1, 1, 1});
    CHECK(msg(w).find("DoRA") != std::string::npos);
  }
  {
    lori::io::safetensors_writer w;
    w.add<float>("base_model.model.x.lora_A.weight", {2, 3}, a);
    w.add<float>("base_model.model.x.lora_B.weight", {4, 2}, b);
    w.add<float>("base_model.model.lm_head.weight", {4}, {1, 1, 1, 1});
    CHECK(msg(w).find("is not a LoRA weight") != std::string::npos);
  }
  {
    lori::io::safetensors_writer w;
    w.add<std::int32_t>("base_model.model.x.lora_A.weight", {2, 3}, {1, 2, 3, 4, 5, 6});
    w.add<float>("base_model.model.x.lora_B.weight", {4, 2}, b);
    CHECK(msg(w).find("must be F32, F16, BF16 or F64") != std::string::npos);
  }
  {
    lori::io::safetensors_writer w;
    w.add<float>("base_model.model.x.lora_A.weight", {2, 3}, a);
    w.add<float>("base_model.model.x.lora_B.weight", {4, 2}, b);
    CHECK(msg(w).empty());
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("peft: absent r / lora_alpha take PEFT's defaults (8 and 8)") {
  const auto c = lori::io::peft_config::parse("{}", "cfg");
  CHECK(c.r == 8);
  CHECK(c.lora_alpha == 8);
  CHECK(!c.use_rslora);
  const auto d = lori::io::peft_config::parse(R"({"r":16})", "cfg");
  CHECK(d.scaling_for(16, d.lora_alpha) == 0.5);
}
