// Helper of the safetensors interop test (tests/io/interop.py drives it against the official
// `safetensors` Python package).
//   interop_tool write FILE    writes one tensor of every dtype, bytes from pattern(), + metadata
//   interop_tool check FILE    reads FILE (written by Python) and checks every tensor against pattern()
//   interop_tool skip          exits 77 (ctest: skipped) - used when no Python is configured
// Tensor "t_<DTYPE>" has shape [3, 5] (or [2, 0] for "e_<DTYPE>") and byte k = pattern(dtype, k).
#include "lori/io/safetensors.hpp"

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace {
std::uint8_t pattern(int dt, std::size_t k) { return static_cast<std::uint8_t>((k * 37u + static_cast<std::size_t>(dt) * 11u + 5u) & 0xffu); }
}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && std::string(argv[1]) == "skip") {
    std::printf("interop: no Python with safetensors configured (LORI_PYTHON empty): skipped\n");
    return 77;
  }
  if (argc != 3) {
    std::fprintf(stderr, "usage: interop_tool write|check FILE\n");
    return 2;
  }
  const std::string mode = argv[1], path = argv[2];
  try {
    if (mode == "write") {
      lori::io::safetensors_writer w;
      for (int t = 0; t <= static_cast<int>(lori::io::dtype::U64); ++t) {
        const auto dt = static_cast<lori::io::dtype>(t);
        std::vector<std::uint8_t> bytes(static_cast<std::size_t>(15 * lori::io::dtype_size(dt)));
        for (std::size_t k = 0; k < bytes.size(); ++k) bytes[k] = pattern(t, k);
        if (dt == lori::io::dtype::BOOL)
          for (auto& b : bytes) b &= 1;
        w.add_bytes(std::string("t_") + lori::io::dtype_name(dt), dt, {3, 5}, bytes);
        w.add_bytes(std::string("e_") + lori::io::dtype_name(dt), dt, {2, 0}, {});
      }
      w.set_metadata("format", "lori");
      w.save(path);
      return 0;
    }
    if (mode == "check") {
      const auto f = lori::io::safetensors_file::open(path);
      int checked = 0;
      for (const auto& info : f.tensors()) {
        const int t = static_cast<int>(info.type);
        if (info.name != std::string("t_") + lori::io::dtype_name(info.type)) continue;
        if (info.shape != std::vector<lori::index_t>{3, 5}) {
          std::fprintf(stderr, "%s: wrong shape\n", info.name.c_str());
          return 1;
        }
        const std::uint8_t* p = f.raw(info);
        for (std::size_t k = 0; k < static_cast<std::size_t>(info.nbytes()); ++k) {
          std::uint8_t want = pattern(t, k);
          if (info.type == lori::io::dtype::BOOL) want &= 1;
          if (p[k] != want) {
            std::fprintf(stderr, "%s: byte %zu is %u, expected %u\n", info.name.c_str(), k, p[k], want);
            return 1;
          }
        }
        ++checked;
      }
      std::printf("interop: lori read %d tensors written by Python bit-exactly\n", checked);
      return checked > 0 ? 0 : 1;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "interop_tool: %s\n", e.what());
    return 1;
  }
  return 2;
}
