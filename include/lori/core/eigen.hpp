// lori/core/eigen.hpp - zero-copy bridges between Eigen and lori views.
//
//   lori::view(M)        matrix_view over an Eigen dense matrix/Map/Block (lvalue), no copy;
//                        the layout follows the Eigen storage order.
//   lori::as_eigen(v)    Eigen::Map over a lori view, with the view's leading dimension as its
//                        outer stride, no copy.
#ifndef LORI_CORE_EIGEN_HPP
#define LORI_CORE_EIGEN_HPP

#include "lori/config.hpp"
#include "lori/core/matrix_view.hpp"

#include <Eigen/Core>

#include <type_traits>

namespace lori {

namespace detail_eigen {
template <class Derived>
constexpr layout layout_of() {
  return (Derived::Flags & Eigen::RowMajorBit) ? layout::row_major : layout::col_major;
}
}  // namespace detail_eigen

/// A mutable matrix_view of an Eigen dense expression with direct access (Matrix, Map, Block, Ref).
/// The inner stride must be 1 (Eigen's default); throws lori::error otherwise.
template <class Derived>
auto view(Eigen::PlainObjectBase<Derived>& m) {
  using T = typename Derived::Scalar;
  constexpr layout L = detail_eigen::layout_of<Derived>();
  return matrix_view<T, L>(m.data(), m.rows(), m.cols(), m.outerStride());
}

/// A read-only matrix_view of an Eigen dense matrix.
template <class Derived>
auto view(const Eigen::PlainObjectBase<Derived>& m) {
  using T = const typename Derived::Scalar;
  constexpr layout L = detail_eigen::layout_of<Derived>();
  return matrix_view<T, L>(m.data(), m.rows(), m.cols(), m.outerStride());
}

/// A matrix_view of an Eigen Map/Block/Ref (anything with direct access and unit inner stride).
template <class Derived, class = std::enable_if_t<!std::is_base_of_v<Eigen::PlainObjectBase<Derived>, Derived>>>
auto view(const Eigen::MapBase<Derived, Eigen::WriteAccessors>& m) {
  using T = typename Derived::Scalar;
  constexpr layout L = detail_eigen::layout_of<Derived>();
  LORI_EXPECTS(m.innerStride() == 1, "view: Eigen expression must have unit inner stride");
  return matrix_view<T, L>(const_cast<T*>(m.data()), m.rows(), m.cols(), m.outerStride());
}

/// Eigen row-major / column-major dynamic matrix types matching a layout.
template <class T, layout L>
using eigen_matrix_t = Eigen::Matrix<std::remove_const_t<T>, Eigen::Dynamic, Eigen::Dynamic,
                                     L == layout::row_major ? Eigen::RowMajor : Eigen::ColMajor>;

/// An Eigen::Map over a lori view (const-correct), honouring the leading dimension.
template <class T, layout L>
auto as_eigen(const matrix_view<T, L>& v) {
  using Plain = eigen_matrix_t<T, L>;
  using MapT = Eigen::Map<std::conditional_t<std::is_const_v<T>, const Plain, Plain>, Eigen::Unaligned,
                          Eigen::OuterStride<>>;
  // Eigen rejects an outer stride of 0; an empty view has no elements to address anyway.
  const Eigen::Index stride = v.ld() > 0 ? static_cast<Eigen::Index>(v.ld()) : 1;
  return MapT(v.data(), static_cast<Eigen::Index>(v.rows()), static_cast<Eigen::Index>(v.cols()),
              Eigen::OuterStride<>(stride));
}

/// An Eigen column-vector Map over a lori vector_view.
template <class T>
auto as_eigen(const vector_view<T>& v) {
  using Plain = Eigen::Matrix<std::remove_const_t<T>, Eigen::Dynamic, 1>;
  using MapT = Eigen::Map<std::conditional_t<std::is_const_v<T>, const Plain, Plain>>;
  return MapT(v.data(), static_cast<Eigen::Index>(v.size()));
}

}  // namespace lori

#endif  // LORI_CORE_EIGEN_HPP
