// lori/detail/io_common.hpp - private helpers of lori/io: read-only file mapping, atomic file
// writes, JSON string escaping as serde_json does it, UTF-8 validation, checked arithmetic.
#include "lori/config.hpp"
#include "lori/detail/internal_header_check.hpp"

#ifndef LORI_DETAIL_IO_COMMON_HPP
#define LORI_DETAIL_IO_COMMON_HPP

#include "lori/error.hpp"

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#define LORI_IO_HAS_MMAP 1
#else
#define LORI_IO_HAS_MMAP 0
#endif

namespace lori::detail {

[[noreturn]] inline void io_fail(const std::string& what) { throw ::lori::error(what); }

/// Refuses an unsupported PEFT feature with a message naming it.
[[noreturn]] inline void peft_refuse(const std::string& where, const std::string& what) {
  io_fail(where + ": " + what + " is not supported by lori (refusing rather than mishandling the adapter)");
}

/// Bytes of a file or of a memory buffer, kept alive by shared ownership. A file is memory-mapped
/// read-only (no copy) where the platform has mmap, else read into a vector.
class io_bytes {
 public:
  io_bytes() = default;
  io_bytes(const io_bytes&) = delete;
  io_bytes& operator=(const io_bytes&) = delete;
  ~io_bytes() {
#if LORI_IO_HAS_MMAP
    if (map_ != nullptr) ::munmap(map_, size_);
#endif
  }

  static std::shared_ptr<io_bytes> map_file(const std::string& path) {
    auto b = std::make_shared<io_bytes>();
#if LORI_IO_HAS_MMAP
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) io_fail(path + ": cannot open: " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      const int e = errno;
      ::close(fd);
      io_fail(path + ": cannot stat: " + std::strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd);
      io_fail(path + ": not a regular file");
    }
    b->size_ = static_cast<std::size_t>(st.st_size);
    if (b->size_ > 0) {
      void* p = ::mmap(nullptr, b->size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        const int e = errno;
        ::close(fd);
        io_fail(path + ": cannot memory-map: " + std::strerror(e));
      }
      b->map_ = p;
      b->data_ = static_cast<const std::uint8_t*>(p);
    }
    ::close(fd);
#else
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in) io_fail(path + ": cannot open");
    const auto n = static_cast<std::size_t>(in.tellg());
    b->owned_.resize(n);
    in.seekg(0);
    if (n > 0 && !in.read(reinterpret_cast<char*>(b->owned_.data()), static_cast<std::streamsize>(n)))
      io_fail(path + ": read error");
    b->data_ = b->owned_.data();
    b->size_ = n;
#endif
    return b;
  }

  static std::shared_ptr<io_bytes> copy_of(const void* data, std::size_t n) {
    auto b = std::make_shared<io_bytes>();
    b->owned_.resize(n);
    if (n > 0) std::memcpy(b->owned_.data(), data, n);
    b->data_ = b->owned_.data();
    b->size_ = n;
    return b;
  }

  static std::shared_ptr<io_bytes> adopt(std::vector<std::uint8_t> v) {
    auto b = std::make_shared<io_bytes>();
    b->owned_ = std::move(v);
    b->data_ = b->owned_.data();
    b->size_ = b->owned_.size();
    return b;
  }

  const std::uint8_t* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  bool is_mapped() const noexcept { return map_ != nullptr; }

 private:
  const std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
  void* map_ = nullptr;
  std::vector<std::uint8_t> owned_;
};

/// Whole file as a string (small text files: adapter_config.json). Refuses files above max_bytes.
inline std::string read_text_file(const std::string& path, std::size_t max_bytes) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) io_fail(path + ": cannot open");
  const auto end = in.tellg();
  if (end < 0) io_fail(path + ": cannot determine size");
  const auto n = static_cast<std::size_t>(end);
  if (n > max_bytes) io_fail(path + ": file is " + std::to_string(n) + " bytes, more than the limit of " + std::to_string(max_bytes));
  std::string s(n, '\0');
  in.seekg(0);
  if (n > 0 && !in.read(s.data(), static_cast<std::streamsize>(n))) io_fail(path + ": read error");
  return s;
}

/// Writes a file atomically: to "<path>.tmp-<pid>" first, then renames over path. On any failure
/// the temporary is removed and lori::error thrown; path is then untouched.
template <class Writer>
void write_file_atomic(const std::string& path, Writer&& write_body) {
#if LORI_IO_HAS_MMAP
  const std::string tmp = path + ".tmp-" + std::to_string(static_cast<long long>(::getpid()));
#else
  const std::string tmp = path + ".tmp";
#endif
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) io_fail(path + ": cannot create " + tmp + ": " + std::strerror(errno));
  auto put = [&](const void* p, std::size_t n) {
    if (n > 0 && std::fwrite(p, 1, n, f) != n) io_fail(path + ": write error: " + std::strerror(errno));
  };
  try {
    write_body(put);
    if (std::fflush(f) != 0) io_fail(path + ": write error: " + std::strerror(errno));
  } catch (...) {
    std::fclose(f);
    std::remove(tmp.c_str());
    throw;
  }
  if (std::fclose(f) != 0) {
    std::remove(tmp.c_str());
    io_fail(path + ": write error on close");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    std::remove(tmp.c_str());
    io_fail(path + ": cannot rename " + tmp + " into place: " + std::strerror(e));
  }
}

/// Creates directory `dir` (and parents) if missing; throws lori::error when that fails or when
/// `dir` exists and is not a directory.
inline void make_directory(const std::string& dir) {
  std::error_code ec;
  if (std::filesystem::is_directory(dir, ec)) return;
  std::filesystem::create_directories(dir, ec);
  if (ec || !std::filesystem::is_directory(dir)) io_fail(dir + ": cannot create directory" + (ec ? ": " + ec.message() : std::string()));
}

/// Whether s is valid UTF-8 (no overlongs, no surrogates, <= U+10FFFF).
inline bool is_valid_utf8(std::string_view s) noexcept {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  std::size_t i = 0;
  const std::size_t n = s.size();
  while (i < n) {
    const unsigned c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t len;
    std::uint32_t cp;
    if ((c & 0xe0) == 0xc0) {
      len = 2;
      cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      len = 3;
      cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (n - i < len) return false;
    for (std::size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (p[i + k] & 0x3f);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000)) return false;
    if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += len;
  }
  return true;
}

/// Appends s as a JSON string literal, escaped exactly as serde_json (and so the reference
/// safetensors writer) does: '"' '\\' and control characters only; \b \f \n \r \t short forms,
/// other controls as \u00xx (lowercase hex); non-ASCII bytes verbatim.
inline void append_json_string(std::string& out, std::string_view s) {
  static const char hex[] = "0123456789abcdef";
  out += '"';
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          out += "\\u00";
          out += hex[c >> 4];
          out += hex[c & 15];
        } else {
          out += ch;
        }
    }
  }
  out += '"';
}

/// a * b for non-negative 64-bit values; false on overflow.
inline bool checked_mul(std::uint64_t a, std::uint64_t b, std::uint64_t& out) noexcept {
  if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a) return false;
  out = a * b;
  return true;
}

/// Maximum nesting depth of '{' / '[' outside strings in s; stops early (returning a value > limit)
/// once the limit is exceeded, and reports the byte offset where it was exceeded.
inline std::size_t json_max_depth(std::string_view s, std::size_t limit, std::size_t& where) noexcept {
  std::size_t depth = 0, max_depth = 0;
  bool in_string = false, escaped = false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') in_string = true;
    else if (c == '{' || c == '[') {
      if (++depth > max_depth) max_depth = depth;
      if (depth > limit) {
        where = i;
        return depth;
      }
    } else if ((c == '}' || c == ']') && depth > 0) {
      --depth;
    }
  }
  return max_depth;
}

}  // namespace lori::detail

#endif  // LORI_DETAIL_IO_COMMON_HPP
