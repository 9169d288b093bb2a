// libFuzzer target for lori/io's parsers (see docs/io.md, "Fuzzing").
// The first input byte chooses the parser; the rest is its input:
//   0: safetensors image -> safetensors_file (validation), then every tensor read as double, then the
//      image interpreted as a mask file and as a compact LoRI file
//   1: adapter_config.json text -> peft_config::parse
// Anything the parsers reject must be a lori::error; any other exception, crash, leak, hang or
// sanitizer report is a finding.
#include "lori/io/compact_adapter.hpp"
#include "lori/io/mask_file.hpp"
#include "lori/io/peft_adapter.hpp"
#include "lori/io/safetensors.hpp"

#include <cstddef>
#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::uint8_t mode = data[0] % 2;
  ++data;
  --size;
  if (mode == 0) {
    lori::io::safetensors_file f;
    try {
      f = lori::io::safetensors_file::from_memory(data, size, "fuzz");
    } catch (const lori::error&) {
      return 0;
    }
    for (const auto& t : f.tensors()) {
      try {
        const auto v = f.read<double>(t);
        if (static_cast<lori::index_t>(v.size()) != t.numel()) __builtin_trap();
      } catch (const lori::error&) {
      }
    }
    try {
      (void)lori::io::load_masks(f);
    } catch (const lori::error&) {
    }
    try {
      (void)lori::io::unpack_adapter(f);
    } catch (const lori::error&) {
    }
  } else {
    try {
      (void)lori::io::peft_config::parse(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
    } catch (const lori::error&) {
    }
  }
  return 0;
}
