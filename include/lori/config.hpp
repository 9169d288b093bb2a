// lori/config.hpp - the one place that detects the platform.
//
// Every other lori header includes this first. It answers three questions and nothing else:
//   LORI_HAS_CUDA_TOOLKIT  1 when <cuda_runtime.h> is reachable (the CUDA toolkit is installed) and
//                          LORI_NO_CUDA is not defined; 0 otherwise.
//   LORI_COMPILING_CUDA    1 when this translation unit is compiled by nvcc (or clang in CUDA mode).
//   LORI_DEVICE_PASS       1 during the device-side pass of a CUDA compilation (__CUDA_ARCH__ set).
// and defines LORI_HOST_DEVICE / LORI_DEVICE / LORI_FORCEINLINE accordingly, so the same inline
// functions (Philox, bf16 conversion, view indexing) serve host and device code. CPU-only code never
// needs nvcc: under a plain C++ compiler LORI_HOST_DEVICE expands to nothing.
//
// Define LORI_NO_CUDA before including any lori header (or pass -DLORI_NO_CUDA) to opt out of every
// CUDA-dependent declaration even where the toolkit is installed.
#ifndef LORI_CONFIG_HPP
#define LORI_CONFIG_HPP

#define LORI_VERSION_MAJOR 0
#define LORI_VERSION_MINOR 1
#define LORI_VERSION_PATCH 0
#define LORI_VERSION (LORI_VERSION_MAJOR * 10000 + LORI_VERSION_MINOR * 100 + LORI_VERSION_PATCH)

#if __cplusplus < 201703L && !(defined(_MSVC_LANG) && _MSVC_LANG >= 201703L)
#error "lori requires C++17 or newer"
#endif

// --- compiling as CUDA? -------------------------------------------------------------------------
#if defined(__CUDACC__)
#define LORI_COMPILING_CUDA 1
#else
#define LORI_COMPILING_CUDA 0
#endif

// --- device pass? ---------------------------------------------------------------------------------
#if defined(__CUDA_ARCH__)
#define LORI_DEVICE_PASS 1
#else
#define LORI_DEVICE_PASS 0
#endif

// --- CUDA toolkit present? ------------------------------------------------------------------------
#if defined(LORI_NO_CUDA)
#define LORI_HAS_CUDA_TOOLKIT 0
#elif LORI_COMPILING_CUDA
#define LORI_HAS_CUDA_TOOLKIT 1
#elif defined(__has_include)
#if __has_include(<cuda_runtime.h>)
#define LORI_HAS_CUDA_TOOLKIT 1
#else
#define LORI_HAS_CUDA_TOOLKIT 0
#endif
#else
#define LORI_HAS_CUDA_TOOLKIT 0
#endif

// --- function qualifiers --------------------------------------------------------------------------
#if LORI_COMPILING_CUDA
#define LORI_HOST_DEVICE __host__ __device__
#define LORI_DEVICE __device__
#define LORI_FORCEINLINE __forceinline__
#else
#define LORI_HOST_DEVICE
#define LORI_DEVICE
#if defined(__GNUC__) || defined(__clang__)
#define LORI_FORCEINLINE inline __attribute__((always_inline))
#else
#define LORI_FORCEINLINE inline
#endif
#endif

// Marks that a public lori header was included; detail headers check it (see
// lori/detail/internal_header_check.hpp) so they cannot be included on their own.
#define LORI_PUBLIC_HEADER_SEEN 1

#include <cstdint>

namespace lori {
/// Signed 64-bit size and index type used by every lori interface (rows, columns, leading
/// dimensions, element counts). Signed so that differences and reverse loops are safe.
using index_t = std::int64_t;
}  // namespace lori

#endif  // LORI_CONFIG_HPP
