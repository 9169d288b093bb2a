// lori/io/safetensors.hpp - strict safetensors reader (memory-mapped) and writer.
//
// Format (https://github.com/huggingface/safetensors): an 8-byte little-endian unsigned header
// length N, N bytes of UTF-8 JSON starting with '{', then the data section. The JSON maps each tensor
// name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the data section),
// plus an optional "__metadata__" object of string -> string.
//
// The reader enforces every rule and refuses anything else with a lori::error that says what is
// wrong and where (file, byte offset, tensor name):
//   * file at least 8 bytes; N <= 100,000,000 (the reference limit); 8 + N <= file size;
//   * header starts with '{', is valid UTF-8 JSON, nesting depth <= 64, no duplicate keys;
//   * "__metadata__" is an object of strings; every other entry is an object with exactly the keys
//     dtype (a known name), shape (non-negative integers), data_offsets (two integers, begin <= end);
//   * sorted by offset, tensors are contiguous from 0 (no gap, no overlap), each tensor's byte size
//     is prod(shape) * dtype size (overflow-checked), and the last end is exactly the data size.
// Hostile input cannot make it crash, hang or allocate more than a constant times the header size
// (itself bounded by the file size and by 100 MB).
//
// Files are memory-mapped (POSIX mmap, read-only): opening a multi-GB model copies nothing; tensor
// bytes are read in place. (As with any mapping, truncating the file while it is open is undefined.)
//
// The writer produces exactly the bytes the reference (Rust) writer produces for the same tensors
// and at most one metadata entry: tensors ordered by dtype alignment (descending, the reference's
// dtype order) then by name, compact JSON with "__metadata__" first (its keys sorted), the header
// padded with spaces to a multiple of 8 so that every tensor is aligned in a mapped file.
//
// Requires nlohmann-json (find_package(nlohmann_json); link nlohmann_json::nlohmann_json).
#ifndef LORI_IO_SAFETENSORS_HPP
#define LORI_IO_SAFETENSORS_HPP

#include "lori/config.hpp"
#include "lori/core/float16.hpp"
#include "lori/error.hpp"
#include "lori/detail/io_common.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace lori::io {

/// Element types of safetensors, in the reference implementation's order (increasing alignment);
/// the writer sorts by this order, descending. Sub-byte types (F4, F6_*) are not supported.
enum class dtype : std::uint8_t {
  BOOL, U8, I8, F8_E5M2, F8_E4M3, F8_E8M0, I16, U16, F16, BF16, I32, U32, F32, C64, F64, I64, U64
};

/// The name used in safetensors headers ("F32", "BF16", ...).
inline const char* dtype_name(dtype t) noexcept {
  static const char* const names[] = {"BOOL", "U8",  "I8",  "F8_E5M2", "F8_E4M3", "F8_E8M0",
                                      "I16",  "U16", "F16", "BF16",    "I32",     "U32",
                                      "F32",  "C64", "F64", "I64",     "U64"};
  return names[static_cast<int>(t)];
}

/// Size of one element in bytes.
inline index_t dtype_size(dtype t) noexcept {
  switch (t) {
    case dtype::BOOL: case dtype::U8: case dtype::I8: case dtype::F8_E5M2: case dtype::F8_E4M3: case dtype::F8_E8M0: return 1;
    case dtype::I16: case dtype::U16: case dtype::F16: case dtype::BF16: return 2;
    case dtype::I32: case dtype::U32: case dtype::F32: return 4;
    case dtype::C64: case dtype::F64: case dtype::I64: case dtype::U64: return 8;
  }
  return 0;
}

/// The dtype named `name`, or nullopt for an unknown or unsupported name.
inline std::optional<dtype> parse_dtype(std::string_view name) noexcept {
  for (int i = 0; i <= static_cast<int>(dtype::U64); ++i)
    if (name == dtype_name(static_cast<dtype>(i))) return static_cast<dtype>(i);
  return std::nullopt;
}

/// The safetensors dtype of a C++ element type (float, double, bfloat16, half, fixed-width ints,
/// bool), as a compile-time constant.
template <class T>
constexpr dtype dtype_of() noexcept {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_same_v<U, float>) return dtype::F32;
  else if constexpr (std::is_same_v<U, double>) return dtype::F64;
  else if constexpr (std::is_same_v<U, bfloat16>) return dtype::BF16;
  else if constexpr (std::is_same_v<U, half>) return dtype::F16;
  else if constexpr (std::is_same_v<U, bool>) return dtype::BOOL;
  else if constexpr (std::is_same_v<U, std::uint8_t>) return dtype::U8;
  else if constexpr (std::is_same_v<U, std::int8_t>) return dtype::I8;
  else if constexpr (std::is_same_v<U, std::int16_t>) return dtype::I16;
  else if constexpr (std::is_same_v<U, std::uint16_t>) return dtype::U16;
  else if constexpr (std::is_same_v<U, std::int32_t>) return dtype::I32;
  else if constexpr (std::is_same_v<U, std::uint32_t>) return dtype::U32;
  else if constexpr (std::is_same_v<U, std::int64_t>) return dtype::I64;
  else if constexpr (std::is_same_v<U, std::uint64_t>) return dtype::U64;
  else static_assert(sizeof(U) == 0, "dtype_of: no safetensors dtype for this type");
}

/// Largest header the reader accepts (the reference's MAX_HEADER_SIZE).
inline constexpr std::uint64_t safetensors_max_header_bytes = 100'000'000;
/// Deepest JSON nesting the reader accepts (a valid header needs 3).
inline constexpr std::size_t safetensors_max_json_depth = 64;

/// One tensor's entry in a safetensors header.
struct tensor_info {
  std::string name;
  dtype type = dtype::F32;
  std::vector<index_t> shape;
  index_t begin = 0;  ///< first byte, relative to the data section
  index_t end = 0;    ///< one past the last byte, relative to the data section

  /// Number of elements (product of the shape; 1 for a scalar).
  index_t numel() const noexcept {
    index_t n = 1;
    for (index_t d : shape) n *= d;
    return n;
  }
  index_t nbytes() const noexcept { return end - begin; }
  /// Rows and columns when the tensor is 2-D; throws lori::error otherwise.
  std::pair<index_t, index_t> matrix_shape() const {
    if (shape.size() != 2) detail::io_fail("tensor '" + name + "': expected a 2-D tensor, found " + std::to_string(shape.size()) + "-D");
    return {shape[0], shape[1]};
  }
};

/// Widen element k of a tensor of type t stored at p to double (numeric dtypes only).
inline double element_to_double(dtype t, const std::uint8_t* p, index_t k);

/// A parsed, validated safetensors file (or memory buffer). Cheap to copy (shares the mapping).
class safetensors_file {
 public:
  safetensors_file() = default;

  /// Opens and validates `path`, memory-mapping it. Throws lori::error on any violation.
  static safetensors_file open(const std::string& path) {
    safetensors_file f;
    f.source_ = path;
    f.bytes_ = detail::io_bytes::map_file(path);
    f.parse();
    return f;
  }

  /// Validates a copy of an in-memory safetensors image; `source` names it in error messages.
  static safetensors_file from_memory(const void* data, std::size_t size, std::string source = "<memory>") {
    safetensors_file f;
    f.source_ = std::move(source);
    f.bytes_ = detail::io_bytes::copy_of(data, size);
    f.parse();
    return f;
  }

  /// Validates an in-memory image, taking ownership of the buffer.
  static safetensors_file from_memory(std::vector<std::uint8_t> image, std::string source = "<memory>") {
    safetensors_file f;
    f.source_ = std::move(source);
    f.bytes_ = detail::io_bytes::adopt(std::move(image));
    f.parse();
    return f;
  }

  /// Path (or source name) given at open.
  const std::string& source() const noexcept { return source_; }
  /// Tensors, sorted by name.
  const std::vector<tensor_info>& tensors() const noexcept { return tensors_; }
  /// The "__metadata__" entries (empty if absent).
  const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }
  /// Header length N (without the 8 length bytes).
  index_t header_bytes() const noexcept { return header_len_; }
  /// Total size of the file.
  index_t file_bytes() const noexcept { return static_cast<index_t>(bytes_ ? bytes_->size() : 0); }
  /// Whether the bytes are memory-mapped (true for open() on POSIX).
  bool is_mapped() const noexcept { return bytes_ && bytes_->is_mapped(); }

  /// The tensor named `name`, or nullptr.
  const tensor_info* find(std::string_view name) const noexcept {
    auto it = std::lower_bound(tensors_.begin(), tensors_.end(), name,
                               [](const tensor_info& t, std::string_view n) { return t.name < n; });
    return (it != tensors_.end() && it->name == name) ? &*it : nullptr;
  }
  bool contains(std::string_view name) const noexcept { return find(name) != nullptr; }

  /// The tensor named `name`; throws lori::error naming the file when absent.
  const tensor_info& at(std::string_view name) const {
    const tensor_info* t = find(name);
    if (t == nullptr) detail::io_fail(source_ + ": no tensor named '" + std::string(name) + "'");
    return *t;
  }

  /// Pointer to the first byte of a tensor's data (in the mapping; valid while this object or a copy
  /// lives). Not necessarily aligned for the element type: use read() or data_as() for typed access.
  const std::uint8_t* raw(const tensor_info& t) const noexcept { return bytes_->data() + data_start_ + t.begin; }

  /// Zero-copy typed pointer to a tensor's elements. Throws lori::error unless the tensor's dtype is
  /// exactly dtype_of<T>() and its data is suitably aligned (always so in files written by the
  /// reference writer or by lori).
  template <class T>
  const T* data_as(const tensor_info& t) const {
    if (t.type != dtype_of<T>())
      detail::io_fail(source_ + ": tensor '" + t.name + "' is " + dtype_name(t.type) + ", not " + dtype_name(dtype_of<T>()));
    const std::uint8_t* p = raw(t);
    if (reinterpret_cast<std::uintptr_t>(p) % alignof(T) != 0)
      detail::io_fail(source_ + ": tensor '" + t.name + "' data is not aligned for zero-copy access; use read()");
    return reinterpret_cast<const T*>(p);
  }

  /// A tensor's elements converted to T (float or double), row-major. Converts from F64, F32, F16,
  /// BF16, F8_E5M2, F8_E4M3, the integer types and BOOL (bf16/fp16 widening is exact; F64 -> float
  /// rounds to nearest). Throws lori::error for C64 and F8_E8M0.
  template <class T>
  std::vector<T> read(const tensor_info& t) const {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "read<T>: T must be float or double");
    if (t.type == dtype::C64 || t.type == dtype::F8_E8M0)
      detail::io_fail(source_ + ": tensor '" + t.name + "': cannot convert " + dtype_name(t.type) + " to a real type");
    const index_t n = t.numel();
    std::vector<T> out(static_cast<std::size_t>(n));
    const std::uint8_t* p = raw(t);
    if (t.type == dtype_of<T>()) {
      if (n > 0) std::memcpy(out.data(), p, static_cast<std::size_t>(n) * sizeof(T));
      return out;
    }
    if (t.type == dtype::BF16 || t.type == dtype::F16) {
      for (index_t k = 0; k < n; ++k) {
        std::uint16_t b;
        std::memcpy(&b, p + 2 * k, 2);
        out[static_cast<std::size_t>(k)] = static_cast<T>(t.type == dtype::BF16 ? bf16_bits_to_float(b) : half_bits_to_float(b));
      }
      return out;
    }
    if (t.type == dtype::F32) {  // T is double
      for (index_t k = 0; k < n; ++k) {
        float v;
        std::memcpy(&v, p + 4 * k, 4);
        out[static_cast<std::size_t>(k)] = static_cast<T>(v);
      }
      return out;
    }
    for (index_t k = 0; k < n; ++k) out[static_cast<std::size_t>(k)] = static_cast<T>(element_to_double(t.type, p, k));
    return out;
  }
  template <class T>
  std::vector<T> read(std::string_view name) const {
    return read<T>(at(name));
  }

 private:
  [[noreturn]] void fail(const std::string& what) const { detail::io_fail("safetensors: " + source_ + ": " + what); }

  void parse();

  std::string source_;
  std::shared_ptr<detail::io_bytes> bytes_;
  std::vector<tensor_info> tensors_;
  std::map<std::string, std::string> metadata_;
  index_t header_len_ = 0;
  index_t data_start_ = 0;
};

/// Builds a safetensors file from tensors given by pointer (not copied: the data must stay alive
/// until save()/serialize()) or by value (copied). Tensor names must be unique, valid UTF-8 and not
/// "__metadata__".
class safetensors_writer {
 public:
  /// Adds a tensor whose bytes (prod(shape) * dtype_size(type) of them, little-endian, row-major)
  /// live at `data`. Not copied.
  void add_view(std::string name, dtype type, std::vector<index_t> shape, const void* data) {
    check_new(name, shape);
    entry e;
    e.name = std::move(name);
    e.type = type;
    e.shape = std::move(shape);
    e.nbytes = nbytes_of(e.name, type, e.shape);
    e.data = static_cast<const std::uint8_t*>(data);
    LORI_EXPECTS(e.data != nullptr || e.nbytes == 0, "safetensors_writer::add_view: null data for a non-empty tensor");
    entries_.push_back(std::move(e));
  }

  /// Adds a tensor from raw bytes (copied). bytes.size() must equal prod(shape) * dtype_size(type).
  void add_bytes(std::string name, dtype type, std::vector<index_t> shape, std::vector<std::uint8_t> bytes) {
    check_new(name, shape);
    entry e;
    e.name = std::move(name);
    e.type = type;
    e.shape = std::move(shape);
    e.nbytes = nbytes_of(e.name, type, e.shape);
    if (static_cast<index_t>(bytes.size()) != e.nbytes)
      detail::io_fail("safetensors_writer: tensor '" + e.name + "': " + std::to_string(bytes.size()) + " bytes given, shape and dtype need " + std::to_string(e.nbytes));
    e.owned = std::make_shared<std::vector<std::uint8_t>>(std::move(bytes));
    e.data = e.owned->data();
    entries_.push_back(std::move(e));
  }

  /// Adds a tensor of T elements (copied); values.size() must equal prod(shape).
  template <class T>
  void add(std::string name, std::vector<index_t> shape, const std::vector<T>& values) {
    static_assert(std::is_trivially_copyable_v<T>, "safetensors_writer::add: T must be trivially copyable");
    std::vector<std::uint8_t> bytes(values.size() * sizeof(T));
    if (!bytes.empty()) std::memcpy(bytes.data(), values.data(), bytes.size());
    add_bytes(std::move(name), dtype_of<T>(), std::move(shape), std::move(bytes));
  }

  /// Sets a "__metadata__" entry (key and value must be valid UTF-8).
  void set_metadata(std::string key, std::string value) {
    if (!detail::is_valid_utf8(key) || !detail::is_valid_utf8(value)) detail::io_fail("safetensors_writer: metadata key/value '" + key + "' is not valid UTF-8");
    metadata_[std::move(key)] = std::move(value);
  }

  /// Number of tensors added.
  index_t size() const noexcept { return static_cast<index_t>(entries_.size()); }

  /// The complete file image.
  std::vector<std::uint8_t> serialize() const {
    std::vector<std::uint8_t> out;
    write_to([&](const void* p, std::size_t n) {
      const auto* b = static_cast<const std::uint8_t*>(p);
      out.insert(out.end(), b, b + n);
    });
    return out;
  }

  /// Writes the file atomically (temporary file + rename): `path` is either the complete new file
  /// or left as it was.
  void save(const std::string& path) const {
    detail::write_file_atomic(path, [&](auto& put) { write_to(put); });
  }

  /// Streams the file image through put(const void*, size_t).
  template <class Put>
  void write_to(Put&& put) const {
    std::vector<const entry*> order;
    order.reserve(entries_.size());
    for (const auto& e : entries_) order.push_back(&e);
    std::sort(order.begin(), order.end(), [](const entry* a, const entry* b) {
      if (a->type != b->type) return a->type > b->type;
      return a->name < b->name;
    });
    std::string h = "{";
    bool first = true;
    if (!metadata_.empty()) {
      h += "\"__metadata__\":{";
      bool f2 = true;
      for (const auto& [k, v] : metadata_) {
        if (!f2) h += ',';
        f2 = false;
        detail::append_json_string(h, k);
        h += ':';
        detail::append_json_string(h, v);
      }
      h += '}';
      first = false;
    }
    index_t offset = 0;
    for (const entry* e : order) {
      if (!first) h += ',';
      first = false;
      detail::append_json_string(h, e->name);
      h += ":{\"dtype\":\"";
      h += dtype_name(e->type);
      h += "\",\"shape\":[";
      for (std::size_t i = 0; i < e->shape.size(); ++i) {
        if (i) h += ',';
        h += std::to_string(e->shape[i]);
      }
      h += "],\"data_offsets\":[";
      h += std::to_string(offset);
      h += ',';
      offset += e->nbytes;
      h += std::to_string(offset);
      h += "]}";
    }
    h += '}';
    h.append((8 - h.size() % 8) % 8, ' ');
    if (h.size() > safetensors_max_header_bytes)
      detail::io_fail("safetensors_writer: header would be " + std::to_string(h.size()) + " bytes, above the 100 MB limit");
    std::uint8_t len[8];
    std::uint64_t n = h.size();
    for (int i = 0; i < 8; ++i) len[i] = static_cast<std::uint8_t>(n >> (8 * i));
    put(len, 8);
    put(h.data(), h.size());
    for (const entry* e : order) put(e->data, static_cast<std::size_t>(e->nbytes));
  }

 private:
  struct entry {
    std::string name;
    dtype type = dtype::F32;
    std::vector<index_t> shape;
    index_t nbytes = 0;
    const std::uint8_t* data = nullptr;
    std::shared_ptr<std::vector<std::uint8_t>> owned;
  };

  void check_new(const std::string& name, const std::vector<index_t>& shape) {
    if (name == "__metadata__") detail::io_fail("safetensors_writer: '__metadata__' is reserved and cannot name a tensor");
    if (!detail::is_valid_utf8(name)) detail::io_fail("safetensors_writer: tensor name is not valid UTF-8");
    for (index_t d : shape)
      if (d < 0) detail::io_fail("safetensors_writer: tensor '" + name + "' has a negative dimension");
    if (!names_.insert(name).second) detail::io_fail("safetensors_writer: duplicate tensor name '" + name + "'");
  }

  static index_t nbytes_of(const std::string& name, dtype type, const std::vector<index_t>& shape) {
    std::uint64_t n = static_cast<std::uint64_t>(dtype_size(type));
    for (index_t d : shape)
      if (!detail::checked_mul(n, static_cast<std::uint64_t>(d), n) || n > static_cast<std::uint64_t>(INT64_MAX))
        detail::io_fail("safetensors_writer: tensor '" + name + "': byte size overflows");
    return static_cast<index_t>(n);
  }

  std::vector<entry> entries_;
  std::unordered_set<std::string> names_;
  std::map<std::string, std::string> metadata_;
};

// ---- implementation --------------------------------------------------------------------------------

inline double element_to_double(dtype t, const std::uint8_t* p, index_t k) {
  auto load = [&](auto tag) {
    decltype(tag) v;
    std::memcpy(&v, p + k * static_cast<index_t>(sizeof v), sizeof v);
    return v;
  };
  switch (t) {
    case dtype::BOOL: return p[k] != 0 ? 1.0 : 0.0;
    case dtype::U8: return p[k];
    case dtype::I8: return load(std::int8_t{});
    case dtype::I16: return load(std::int16_t{});
    case dtype::U16: return load(std::uint16_t{});
    case dtype::I32: return load(std::int32_t{});
    case dtype::U32: return load(std::uint32_t{});
    case dtype::I64: return static_cast<double>(load(std::int64_t{}));
    case dtype::U64: return static_cast<double>(load(std::uint64_t{}));
    case dtype::F16: return half_bits_to_float(load(std::uint16_t{}));
    case dtype::BF16: return bf16_bits_to_float(load(std::uint16_t{}));
    case dtype::F32: return load(float{});
    case dtype::F64: return load(double{});
    case dtype::F8_E5M2:  // the upper byte of an IEEE half
      return half_bits_to_float(static_cast<std::uint16_t>(p[k] << 8));
    case dtype::F8_E4M3: {  // e4m3fn: bias 7, no infinities, S.1111.111 is NaN
      const unsigned b = p[k];
      const double sign = (b & 0x80) ? -1.0 : 1.0;
      const unsigned e = (b >> 3) & 15, m = b & 7;
      if (e == 15 && m == 7) return std::numeric_limits<double>::quiet_NaN();
      if (e == 0) return sign * std::ldexp(static_cast<double>(m), -9);
      return sign * std::ldexp(8.0 + m, static_cast<int>(e) - 10);
    }
    case dtype::F8_E8M0: case dtype::C64: break;
  }
  detail::io_fail(std::string("element_to_double: cannot convert ") + dtype_name(t));
}

inline void safetensors_file::parse() {
  const std::uint8_t* b = bytes_->data();
  const std::uint64_t size = bytes_->size();
  if (size < 8) fail("file is " + std::to_string(size) + " bytes, too short for the 8-byte header length (truncated header)");
  std::uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<std::uint64_t>(b[i]) << (8 * i);
  if (n > safetensors_max_header_bytes)
    fail("header length " + std::to_string(n) + " (bytes 0..7) exceeds the 100,000,000-byte limit");
  if (n > size - 8)
    fail("header length " + std::to_string(n) + " (bytes 0..7) runs past the end of the file (" + std::to_string(size) + " bytes)");
  if (n == 0 || b[8] != '{') fail("header (byte offset 8) must start with '{'");
  const std::string_view text(reinterpret_cast<const char*>(b + 8), static_cast<std::size_t>(n));
  header_len_ = static_cast<index_t>(n);
  data_start_ = static_cast<index_t>(8 + n);
  const std::uint64_t data_size = size - 8 - n;

  std::size_t deep_at = 0;
  if (detail::json_max_depth(text, safetensors_max_json_depth, deep_at) > safetensors_max_json_depth)
    fail("header JSON nested deeper than " + std::to_string(safetensors_max_json_depth) + " levels at byte offset " + std::to_string(8 + deep_at));

  // Parse, refusing duplicate keys at any level (the callback sees every key in order).
  nlohmann::json root;
  {
    std::vector<std::unordered_set<std::string>> open_objects;
    auto cb = [&](int /*depth*/, nlohmann::json::parse_event_t ev, nlohmann::json& parsed) -> bool {
      using ev_t = nlohmann::json::parse_event_t;
      if (ev == ev_t::object_start) open_objects.emplace_back();
      else if (ev == ev_t::object_end) { if (!open_objects.empty()) open_objects.pop_back(); }
      else if (ev == ev_t::key && !open_objects.empty()) {
        const auto& k = parsed.get_ref<const std::string&>();
        if (!open_objects.back().insert(k).second) fail("duplicate key '" + k + "' in the header JSON");
      }
      return true;
    };
    try {
      root = nlohmann::json::parse(text.begin(), text.end(), cb, /*allow_exceptions=*/true, /*ignore_comments=*/false);
    } catch (const nlohmann::json::parse_error& e) {
      fail("header is not valid JSON (near byte offset " + std::to_string(8 + e.byte - (e.byte > 0 ? 1 : 0)) + "): " + e.what());
    } catch (const nlohmann::json::exception& e) {
      fail(std::string("header is not valid JSON: ") + e.what());
    }
  }
  if (!root.is_object()) fail("header (byte offset 8) is not a JSON object");

  tensors_.clear();
  tensors_.reserve(root.size());
  for (auto it = root.begin(); it != root.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) fail("'__metadata__' must be an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) fail("'__metadata__' entry '" + m.key() + "' is not a string (metadata values must be strings)");
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor '" + name + "'";
    if (!v.is_object()) fail(where + ": entry is not an object");
    tensor_info t;
    t.name = name;
    bool has_dtype = false, has_shape = false, has_offsets = false;
    for (auto f = v.begin(); f != v.end(); ++f) {
      const std::string& key = f.key();
      const nlohmann::json& fv = f.value();
      if (key == "dtype") {
        if (!fv.is_string()) fail(where + ": dtype is not a string");
        const auto dt = parse_dtype(fv.get_ref<const std::string&>());
        if (!dt) fail(where + ": unknown or unsupported dtype '" + fv.get<std::string>() + "'");
        t.type = *dt;
        has_dtype = true;
      } else if (key == "shape") {
        if (!fv.is_array()) fail(where + ": shape is not an array");
        for (const auto& d : fv) {
          if (!d.is_number_unsigned() || d.get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX))
            fail(where + ": shape entries must be non-negative integers");
          t.shape.push_back(static_cast<index_t>(d.get<std::uint64_t>()));
        }
        has_shape = true;
      } else if (key == "data_offsets") {
        if (!fv.is_array() || fv.size() != 2) fail(where + ": data_offsets must be an array [begin, end]");
        for (const auto& d : fv)
          if (!d.is_number_unsigned() || d.get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX))
            fail(where + ": data_offsets entries must be non-negative integers");
        t.begin = static_cast<index_t>(fv[0].get<std::uint64_t>());
        t.end = static_cast<index_t>(fv[1].get<std::uint64_t>());
        has_offsets = true;
      } else {
        fail(where + ": unexpected field '" + key + "'");
      }
    }
    if (!has_dtype || !has_shape || !has_offsets) fail(where + ": entry needs dtype, shape and data_offsets");
    if (t.end < t.begin) fail(where + ": data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "] end before begin");
    std::uint64_t bytes = static_cast<std::uint64_t>(dtype_size(t.type));
    for (index_t d : t.shape)
      if (!detail::checked_mul(bytes, static_cast<std::uint64_t>(d), bytes))
        fail(where + ": shape times dtype size overflows 64 bits");
    if (bytes != static_cast<std::uint64_t>(t.end - t.begin))
      fail(where + ": data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "] hold " + std::to_string(t.end - t.begin) +
           " bytes but shape and dtype " + dtype_name(t.type) + " need " + std::to_string(bytes) + " (wrong byte count)");
    tensors_.push_back(std::move(t));
  }

  // Coverage: sorted by offsets, contiguous from 0 to the end of the data section.
  std::vector<const tensor_info*> by_offset;
  by_offset.reserve(tensors_.size());
  for (const auto& t : tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](const tensor_info* a, const tensor_info* c) {
    return a->begin != c->begin ? a->begin < c->begin : (a->end != c->end ? a->end < c->end : a->name < c->name);
  });
  index_t expected = 0;
  const tensor_info* prev = nullptr;
  for (const tensor_info* t : by_offset) {
    const std::string at_file = " (file byte offset " + std::to_string(static_cast<std::uint64_t>(data_start_) + static_cast<std::uint64_t>(t->begin)) + ")";
    if (t->begin < expected)
      fail("tensor '" + t->name + "': data_offsets [" + std::to_string(t->begin) + ", " + std::to_string(t->end) + "] overlap tensor '" +
           (prev ? prev->name : std::string()) + "' which ends at " + std::to_string(expected) + at_file);
    if (t->begin > expected)
      fail("tensor '" + t->name + "': gap of " + std::to_string(t->begin - expected) + " bytes before its data_offsets begin " +
           std::to_string(t->begin) + " (previous data ends at " + std::to_string(expected) + ")" + at_file);
    expected = t->end;
    prev = t;
  }
  if (static_cast<std::uint64_t>(expected) != data_size)
    fail("tensor data_offsets cover " + std::to_string(expected) + " bytes but the data section (from byte offset " +
         std::to_string(data_start_) + ") holds " + std::to_string(data_size) + " bytes" +
         (static_cast<std::uint64_t>(expected) > data_size ? " (file truncated?)" : " (trailing bytes)"));

  std::sort(tensors_.begin(), tensors_.end(), [](const tensor_info& a, const tensor_info& c) { return a.name < c.name; });
}

/// Convenience: open `path` (memory-mapped, validated).
inline safetensors_file load_safetensors(const std::string& path) { return safetensors_file::open(path); }

}  // namespace lori::io

#endif  // LORI_IO_SAFETENSORS_HPP
