// lori/sparse/convert.hpp - lossless conversions between the three forms of a sparse B.
//
//   masked_dense  (dense + mask, the reference's form)
//   csr_matrix    (CSR over rows; what lori's CPU kernels take)
//   packed_matrix (bitmask + packed values; lori's storage form)
// All three share one order of the kept entries (row-major), so csr <-> packed copy the values array
// unchanged. Conversions from masked_dense throw lori::error if an entry outside the mask is nonzero
// (it would be lost); call masked_dense::apply_mask() first to drop such entries on purpose.
#ifndef LORI_SPARSE_CONVERT_HPP
#define LORI_SPARSE_CONVERT_HPP

#include "lori/config.hpp"
#include "lori/sparse/csr_matrix.hpp"
#include "lori/sparse/masked_dense.hpp"
#include "lori/sparse/packed_matrix.hpp"

#include <cstdint>

namespace lori {

/// CSR from bitmask + packed values. O(words + nnz).
template <class Index = std::int32_t, class T>
csr_matrix<T, Index> to_csr(const packed_matrix<T>& p) {
  csr_matrix<T, Index> c(p.mask());
  c.values() = p.values();
  return c;
}

/// CSR from dense + mask. O(rows * cols). Throws if an entry outside the mask is nonzero.
template <class Index = std::int32_t, class T>
csr_matrix<T, Index> to_csr(const masked_dense<T>& m) {
  return csr_matrix<T, Index>::from_dense(m.dense(), m.mask(), true);
}

/// Bitmask + packed values from CSR. O(rows * words_per_row + nnz).
template <class T, class Index>
packed_matrix<T> to_packed(const csr_matrix<T, Index>& c) {
  return packed_matrix<T>(c.mask(), c.values());
}

/// Bitmask + packed values from dense + mask. Throws if an entry outside the mask is nonzero.
template <class T>
packed_matrix<T> to_packed(const masked_dense<T>& m) {
  return packed_matrix<T>::from_dense(m.dense(), m.mask(), true);
}

/// Dense + mask from CSR.
template <class T, class Index>
masked_dense<T> to_masked_dense(const csr_matrix<T, Index>& c) {
  masked_dense<T> m(c.mask());
  c.to_dense(m.dense());
  return m;
}

/// Dense + mask from bitmask + packed values.
template <class T>
masked_dense<T> to_masked_dense(const packed_matrix<T>& p) {
  masked_dense<T> m(p.mask());
  p.to_dense(m.dense());
  return m;
}

}  // namespace lori

#endif  // LORI_SPARSE_CONVERT_HPP
