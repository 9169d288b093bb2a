# LoriTargets.cmake - helpers for lori's OWN tests, examples and benchmarks. Nothing here touches the
# exported lori::lori / lori::cuda targets, so consumers never inherit these flags.
#
#   lori_project_options        INTERFACE target: warnings (-Werror if LORI_WERROR), sanitizers
#   lori_add_test(NAME <name> LABEL <area> SOURCES ... [GPU] [LIBS ...])
#       doctest executable registered with ctest under label <area>; GPU tests also get label gpu,
#       link lori::cuda and exit with code 77 (reported as skipped) when no CUDA device exists.
#   lori_add_bench(<area> SOURCES ... [GPU] [LIBS ...])
#       Google Benchmark executable lori_bench_<area>.
include_guard(GLOBAL)

find_package(doctest REQUIRED)

add_library(lori_project_options INTERFACE)
set(_lori_cxx_warnings -Wall -Wextra -Wpedantic)
if(LORI_WERROR)
  list(APPEND _lori_cxx_warnings -Werror)
endif()
target_compile_options(lori_project_options INTERFACE
  "$<$<COMPILE_LANGUAGE:CXX>:${_lori_cxx_warnings}>"
  "$<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra>"
  "$<$<AND:$<COMPILE_LANGUAGE:CUDA>,$<BOOL:${LORI_WERROR}>>:-Werror=all-warnings>"
  "$<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr>")
if(LORI_SANITIZE)
  target_compile_options(lori_project_options INTERFACE
    "$<$<COMPILE_LANGUAGE:CXX>:-fsanitize=${LORI_SANITIZE};-fno-omit-frame-pointer;-fno-sanitize-recover=all>")
  target_link_options(lori_project_options INTERFACE "-fsanitize=${LORI_SANITIZE}")
endif()

# Common doctest main (with the "every test case asserts something" listener) built once.
add_library(lori_doctest_main STATIC "${PROJECT_SOURCE_DIR}/tests/support/doctest_main.cpp")
target_link_libraries(lori_doctest_main PUBLIC lori::lori doctest::doctest lori_project_options)
target_include_directories(lori_doctest_main PUBLIC "${PROJECT_SOURCE_DIR}/tests/support")
if(LORI_HAS_CUDA)
  add_library(lori_doctest_gpu_main STATIC "${PROJECT_SOURCE_DIR}/tests/support/doctest_main.cpp")
  target_compile_definitions(lori_doctest_gpu_main PRIVATE LORI_TEST_REQUIRES_GPU=1)
  target_link_libraries(lori_doctest_gpu_main PUBLIC lori::cuda doctest::doctest lori_project_options)
  target_include_directories(lori_doctest_gpu_main PUBLIC "${PROJECT_SOURCE_DIR}/tests/support")
endif()

# Exit code by which a GPU test says "no device here": ctest reports it as skipped (SKIP_RETURN_CODE).
set(LORI_SKIP_RETURN_CODE 77)

function(lori_add_test)
  cmake_parse_arguments(T "GPU" "NAME;LABEL" "SOURCES;LIBS;ARGS" ${ARGN})
  if(T_GPU AND NOT LORI_HAS_CUDA)
    message(STATUS "lori: skipping GPU test ${T_NAME} (no CUDA)")
    return()
  endif()
  add_executable(${T_NAME} ${T_SOURCES})
  if(T_GPU)
    target_link_libraries(${T_NAME} PRIVATE lori_doctest_gpu_main lori::cuda ${T_LIBS})
    set(_labels "${T_LABEL};gpu")
  else()
    target_link_libraries(${T_NAME} PRIVATE lori_doctest_main ${T_LIBS})
    set(_labels "${T_LABEL}")
  endif()
  add_test(NAME ${T_NAME} COMMAND ${T_NAME} ${T_ARGS})
  set_tests_properties(${T_NAME} PROPERTIES LABELS "${_labels}" SKIP_RETURN_CODE ${LORI_SKIP_RETURN_CODE})
endfunction()

function(lori_add_bench AREA)
  cmake_parse_arguments(B "GPU" "" "SOURCES;LIBS" ${ARGN})
  if(B_GPU AND NOT LORI_HAS_CUDA)
    return()
  endif()
  if(NOT TARGET benchmark::benchmark)
    find_package(benchmark REQUIRED)
  endif()
  set(_name lori_bench_${AREA})
  add_executable(${_name} ${B_SOURCES})
  target_link_libraries(${_name} PRIVATE lori::lori benchmark::benchmark lori_project_options ${B_LIBS})
  if(B_GPU)
    target_link_libraries(${_name} PRIVATE lori::cuda)
  endif()
endfunction()
