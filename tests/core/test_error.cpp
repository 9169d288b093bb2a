#include <doctest/doctest.h>

#include "lori/error.hpp"

#include <string>

namespace {
int checked_sqrt_floor(int x) {
  LORI_EXPECTS(x >= 0, "checked_sqrt_floor: x must be non-negative");
  int r = 0;
  while ((r + 1) * (r + 1) <= x) ++r;
  return r;
}
}  // namespace

TEST_CASE("LORI_EXPECTS throws lori::error naming the function and the condition") {
  CHECK(checked_sqrt_floor(17) == 4);
  try {
    checked_sqrt_floor(-1);
    FAIL("expected lori::error");
  } catch (const lori::error& e) {
    const std::string what = e.what();
    CHECK(what.find("checked_sqrt_floor: x must be non-negative") != std::string::npos);
    CHECK(what.find("x >= 0") != std::string::npos);
  }
  // lori::error is a std::runtime_error, so generic handlers catch it.
  CHECK_THROWS_AS(checked_sqrt_floor(-5), std::runtime_error);
}

TEST_CASE("library-call failures carry library, status, file and line") {
  try {
    lori::detail::throw_call_failed("CUDA", "cudaMalloc(&p, n)", 2, "cudaErrorMemoryAllocation", "file.cu", 42);
    FAIL("expected lori::error");
  } catch (const lori::error& e) {
    const std::string what = e.what();
    CHECK(what.find("CUDA call failed: cudaMalloc(&p, n) returned 2 (cudaErrorMemoryAllocation) at file.cu:42") != std::string::npos);
  }
}
