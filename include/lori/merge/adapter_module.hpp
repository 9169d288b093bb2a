// lori/merge/adapter_module.hpp - the data model of the merge and metrics areas: one adapted module
// (A, B, scaling, optional mask of B) and a model as a map from module name to module.
//
//   adapter_module_view<T>   non-owning: A (r x k) and B (d x r) as row-major views, scaling s,
//                            optional pointer to the d x r bitmask of B's kept entries (LoRI-S)
//   adapter_module<T>        owning: Eigen row-major A and B, scaling, std::optional<bitmask>
//   adapter_model<T>         std::map<std::string, adapter_module<T>>, keyed by module name
//                            (e.g. "model.layers.0.self_attn.q_proj")
//
// The module's update is dW = s * B * A (d x k), PyTorch/PEFT shapes (out x in). T is float or double.
// The merge and metric functions take plain views, so any storage (an io reader's buffers, Eigen
// matrices, mmap'ed safetensors) can be passed without copies.
#ifndef LORI_MERGE_ADAPTER_MODULE_HPP
#define LORI_MERGE_ADAPTER_MODULE_HPP

#include "lori/config.hpp"
#include "lori/core/eigen.hpp"
#include "lori/core/matrix_view.hpp"
#include "lori/error.hpp"
#include "lori/mask/bitmask.hpp"

#include <Eigen/Core>

#include <cmath>
#include <map>
#include <optional>
#include <string>
#include <type_traits>

namespace lori {

/// Non-owning view of one adapted module: dW = scaling * B * A.
/// A is r x k (rank x in_features), B is d x r (out_features x rank), both row-major with any leading
/// dimension. b_mask, when not null, is the d x r mask of B's kept entries (LoRI-S); B must be zero
/// outside it (not checked element by element; merges that keep sparsity rely on it).
template <class T>
struct adapter_module_view {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "adapter_module_view: T must be float or double");
  row_major_view<const T> A;
  row_major_view<const T> B;
  double scaling = 1.0;
  const bitmask* b_mask = nullptr;

  index_t rank() const noexcept { return A.rows(); }
  index_t in_features() const noexcept { return A.cols(); }
  index_t out_features() const noexcept { return B.rows(); }
};

/// Owning adapted module: A (r x k), B (d x r) row-major Eigen matrices, scaling, optional B mask.
template <class T>
struct adapter_module {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "adapter_module: T must be float or double");
  using matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  matrix A;
  matrix B;
  double scaling = 1.0;
  std::optional<bitmask> b_mask;

  index_t rank() const noexcept { return A.rows(); }
  index_t in_features() const noexcept { return A.cols(); }
  index_t out_features() const noexcept { return B.rows(); }

  /// A view of this module (valid while the module lives and is not resized).
  adapter_module_view<T> view() const {
    adapter_module_view<T> v;
    v.A = row_major_view<const T>(A.data(), A.rows(), A.cols());
    v.B = row_major_view<const T>(B.data(), B.rows(), B.cols());
    v.scaling = scaling;
    v.b_mask = b_mask ? &*b_mask : nullptr;
    return v;
  }
};

/// A model's adapters: module name -> module. Ordered map, so iteration (and every aggregate computed
/// over it) is deterministic.
template <class T>
using adapter_model = std::map<std::string, adapter_module<T>>;

/// Checks one module view: A.cols() (k) and B.rows() (d) arbitrary, A.rows() == B.cols() (rank),
/// finite scaling, mask shape equal to B's. `fn` names the caller in the error message.
template <class T>
void check_adapter_module(const adapter_module_view<T>& m, const char* fn) {
  if (!(m.A.rows() == m.B.cols())) detail::throw_expects(fn, "A.rows() == B.cols() (A is r x k, B is d x r)");
  if (!std::isfinite(m.scaling)) detail::throw_expects(fn, "finite scaling");
  if (m.b_mask != nullptr && !(m.b_mask->rows() == m.B.rows() && m.b_mask->cols() == m.B.cols()))
    detail::throw_expects(fn, "b_mask has B's shape (d x r)");
}

}  // namespace lori

#endif  // LORI_MERGE_ADAPTER_MODULE_HPP
