// lori.hpp - umbrella header: includes every public CPU header of lori.
//
// GPU entry points are opt-in: include the headers under lori/cuda/ (*.cuh) from CUDA translation
// units and link lori::cuda. Nothing here requires nvcc.
//
// The file-format headers (lori/io/*) need nlohmann-json (header-only). They are included here only
// when <nlohmann/json.hpp> is on the include path, so CPU users without it still get everything else;
// include lori/io/*.hpp directly to require them.
#ifndef LORI_HPP
#define LORI_HPP

#include "lori/config.hpp"
#include "lori/error.hpp"

// core
#include "lori/core/eigen.hpp"
#include "lori/core/float16.hpp"
#include "lori/core/matrix_view.hpp"

// random projections
#include "lori/random/distributions.hpp"
#include "lori/random/philox.hpp"
#include "lori/random/projection.hpp"
#include "lori/random/stream.hpp"

// masks and calibration
#include "lori/mask/bitmask.hpp"
#include "lori/mask/calibrate.hpp"
#include "lori/mask/grouping.hpp"
#include "lori/mask/radix_select.hpp"

// sparse B formats and adapter kernels
#include "lori/ops/backward.hpp"
#include "lori/ops/forward.hpp"
#include "lori/ops/optim.hpp"
#include "lori/sparse/convert.hpp"
#include "lori/sparse/csr_matrix.hpp"
#include "lori/sparse/masked_dense.hpp"
#include "lori/sparse/packed_matrix.hpp"

// merging and interference metrics
#include "lori/merge/adapter_module.hpp"
#include "lori/merge/merge_into_base.hpp"
#include "lori/merge/task_tensors.hpp"
#include "lori/merge/weighted_adapter.hpp"
#include "lori/metrics/interference.hpp"
#include "lori/metrics/interference_report.hpp"

// file formats (need nlohmann-json)
#if defined(__has_include)
#if __has_include(<nlohmann/json.hpp>)
#include "lori/io/compact_adapter.hpp"
#include "lori/io/mask_file.hpp"
#include "lori/io/peft_adapter.hpp"
#include "lori/io/safetensors.hpp"
#endif
#endif

#endif  // LORI_HPP
