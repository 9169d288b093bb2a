#!/usr/bin/env bash
# Packs this Debian machine's build dependencies (Eigen, doctest, Google Benchmark, nlohmann-json) into
# .deps/usr so they can travel (device tool `carry`) to the GPU machine, which cannot download anything.
# On the GPU machine: cmake -DCMAKE_PREFIX_PATH=$PWD/.deps/usr ...
set -euo pipefail
cd "$(dirname "$0")/../.."
d=.deps/usr
rm -rf .deps && mkdir -p $d/include $d/lib/x86_64-linux-gnu/cmake $d/lib/cmake $d/share/cmake $d/share/eigen3
cp -r /usr/include/eigen3 /usr/include/doctest /usr/include/nlohmann /usr/include/benchmark $d/include/
cp -a /usr/lib/x86_64-linux-gnu/libbenchmark* $d/lib/x86_64-linux-gnu/
cp -r /usr/lib/x86_64-linux-gnu/cmake/benchmark $d/lib/x86_64-linux-gnu/cmake/
cp -r /usr/lib/cmake/doctest $d/lib/cmake/
cp -r /usr/share/cmake/nlohmann_json $d/share/cmake/
cp -r /usr/share/eigen3/cmake $d/share/eigen3/
# doctest's targets file hard-codes /usr; make it relative like the others.
sed -i 's|set(_IMPORT_PREFIX "/usr")|get_filename_component(_IMPORT_PREFIX "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)|' $d/lib/cmake/doctest/doctestTargets.cmake
# benchmark's realpath fallback names /usr; harmless, the relative path wins when the files are here.
du -sh .deps
