// lori/error.hpp - the error model.
//
// lori reports every broken precondition and every failed library call by throwing lori::error.
// Checks are active in every build type (Release included): a numerical library that silently
// computes garbage on bad input costs its users far more than a branch per call.
//
//   LORI_EXPECTS(cond, "fn: message")   precondition on arguments; throws lori::error with the message
//                                       (which names the function) and the failed condition's text.
//   LORI_CUDA_CHECK(expr)               CUDA runtime call; throws with the error name, file and line.
//   LORI_CUBLAS_CHECK(expr)             cuBLAS call; likewise.
//   LORI_CUSPARSE_CHECK(expr)           cuSPARSE call; likewise.
// The CUDA macros live in lori/cuda/error.cuh-free form here so that host-only translation units that
// merely link cudart can use them too; they are defined only where the CUDA toolkit is present.
#ifndef LORI_ERROR_HPP
#define LORI_ERROR_HPP

#include "lori/config.hpp"

#include <stdexcept>
#include <string>

namespace lori {

/// The one exception type lori throws. what() names the function and the broken precondition, or
/// the failed library call with its status, file and line.
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
[[noreturn]] inline void throw_expects(const char* message, const char* condition) {
  std::string text(message);
  text += " (violated: ";
  text += condition;
  text += ")";
  throw ::lori::error(text);
}

[[noreturn]] inline void throw_call_failed(const char* library, const char* call, long long status,
                                           const char* status_text, const char* file, int line) {
  std::string text(library);
  text += " call failed: ";
  text += call;
  text += " returned ";
  text += std::to_string(status);
  if (status_text != nullptr && status_text[0] != '\0') {
    text += " (";
    text += status_text;
    text += ")";
  }
  text += " at ";
  text += file;
  text += ":";
  text += std::to_string(line);
  throw ::lori::error(text);
}
}  // namespace detail
}  // namespace lori

/// Throws lori::error("<msg> (violated: <cond>)") when cond is false, in every build type.
/// By convention msg starts with the function's name: "calibrate_mask: sparsity must be in [0, 1]".
#define LORI_EXPECTS(cond, msg)                                    \
  do {                                                             \
    if (!(cond)) ::lori::detail::throw_expects((msg), #cond);      \
  } while (false)

#if LORI_HAS_CUDA_TOOLKIT
#include <cuda_runtime_api.h>

#define LORI_CUDA_CHECK(expr)                                                                    \
  do {                                                                                           \
    const cudaError_t lori_status_ = (expr);                                                     \
    if (lori_status_ != cudaSuccess)                                                             \
      ::lori::detail::throw_call_failed("CUDA", #expr, static_cast<long long>(lori_status_),     \
                                        cudaGetErrorName(lori_status_), __FILE__, __LINE__);     \
  } while (false)

/// Checks the last kernel launch (cudaGetLastError) and throws on failure.
#define LORI_CUDA_CHECK_LAUNCH() LORI_CUDA_CHECK(cudaGetLastError())

#if defined(__has_include)
#if __has_include(<cublas_api.h>)
#include <cublas_api.h>
#define LORI_CUBLAS_CHECK(expr)                                                                  \
  do {                                                                                           \
    const cublasStatus_t lori_status_ = (expr);                                                  \
    if (lori_status_ != CUBLAS_STATUS_SUCCESS)                                                   \
      ::lori::detail::throw_call_failed("cuBLAS", #expr, static_cast<long long>(lori_status_),   \
                                        cublasGetStatusName(lori_status_), __FILE__, __LINE__);  \
  } while (false)
#endif
#if __has_include(<cusparse.h>)
#include <cusparse.h>
#define LORI_CUSPARSE_CHECK(expr)                                                                \
  do {                                                                                           \
    const cusparseStatus_t lori_status_ = (expr);                                                \
    if (lori_status_ != CUSPARSE_STATUS_SUCCESS)                                                 \
      ::lori::detail::throw_call_failed("cuSPARSE", #expr, static_cast<long long>(lori_status_), \
                                        cusparseGetErrorName(lori_status_), __FILE__, __LINE__); \
  } while (false)
#endif
#endif
#endif  // LORI_HAS_CUDA_TOOLKIT

#endif  // LORI_ERROR_HPP
