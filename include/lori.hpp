// lori.hpp - umbrella header: includes every public CPU header of lori.
//
// GPU entry points are opt-in: include the headers under lori/cuda/ (*.cuh) from CUDA translation
// units and link lori::cuda. Nothing here requires nvcc.
#ifndef LORI_HPP
#define LORI_HPP

#include "lori/config.hpp"
#include "lori/error.hpp"

// core
#include "lori/core/eigen.hpp"
#include "lori/core/float16.hpp"
#include "lori/core/matrix_view.hpp"

// mask
#include "lori/mask/bitmask.hpp"

#endif  // LORI_HPP
