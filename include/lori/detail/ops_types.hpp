// Private: parameter-type aliases of lori/ops. The element type T of an ops function is deduced from
// its output only (a mutable view); the other parameters use these non-deduced aliases so that callers
// may pass mutable or const views and a scale of any arithmetic type.
#ifndef LORI_DETAIL_OPS_TYPES_HPP
#define LORI_DETAIL_OPS_TYPES_HPP

#include "lori/config.hpp"
#include "lori/detail/internal_header_check.hpp"
#include "lori/core/matrix_view.hpp"

namespace lori::detail {
template <class T>
struct ops_identity {
  using type = T;
};
template <class T>
using nd = typename ops_identity<T>::type;
template <class T>
using cview = row_major_view<const nd<T>>;
template <class T>
using mview = row_major_view<nd<T>>;
template <class T>
using cvec = vector_view<const nd<T>>;
template <class T>
using mvec = vector_view<nd<T>>;
}  // namespace lori::detail

#endif  // LORI_DETAIL_OPS_TYPES_HPP
