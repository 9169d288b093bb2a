// GPU kernels of lori/cuda/ against plain double-precision references computed on the host from the
// same (rounded) inputs.
//
// Tolerances. Inputs are exactly representable in the storage type T (they are rounded to T before
// both the device and the reference see them), accumulation is fp32, and the only other roundings
// are (a) the final store to T, relative u_T (u = 2^-24 fp32, 2^-8 bf16, 2^-11 fp16), and (b) named
// intermediate roundings to T (H in the tensor-core SDDMM, G·B in grad_x, the adapter part of Y in
// layer_forward, s·B in a merge with unequal scales), each a relative u_T of the terms it feeds.
// For an element that sums terms τ_i (nested sums included, see each reference), with
// L2 = sqrt(Σ τ_i²), random-sign rounding errors add like a random walk, so
//     |got − ref| <= 4·u_T·|ref| + 8·(u_I + sqrt(K)·2^-24)·L2
// holds with a wide margin (8 standard deviations and more), where u_I is u_T when the path has an
// intermediate rounding (0 otherwise) and K the longest fp32 accumulation. A missing or doubled term
// (an unwritten element, a wrong index, a transposed operand) errs by about L2 and fails it.
// Outputs are poisoned with 0xff bytes (NaN in every type) before each kernel; NaN fails every check.
#include <doctest/doctest.h>

#include "lori/core/float16.hpp"
#include "lori/core/matrix_view.hpp"
#include "lori/cuda/adapter_backward.cuh"
#include "lori/cuda/adapter_forward.cuh"
#include "lori/cuda/context.cuh"
#include "lori/cuda/device_buffer.cuh"
#include "lori/cuda/merge.cuh"
#include "lori/cuda/optim.cuh"
#include "lori/cuda/sparse_b.cuh"
#include "lori/mask/bitmask.hpp"

#include "test_util.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

namespace {

using lori::index_t;
using lori::cuda::device_buffer;

template <class T>
double unit_roundoff() {
  if constexpr (std::is_same_v<T, float>) return std::ldexp(1.0, -24);
  else if constexpr (std::is_same_v<T, lori::bfloat16>) return std::ldexp(1.0, -8);
  else return std::ldexp(1.0, -11);
}
template <class T>
const char* type_name() {
  if constexpr (std::is_same_v<T, float>) return "fp32";
  else if constexpr (std::is_same_v<T, lori::bfloat16>) return "bf16";
  else return "fp16";
}

// cuBLAS runs 16-bit GEMMs on tensor cores, whose fp32 accumulation may truncate instead of rounding
// (Fasi, Higham, Mikaitis, Pranesh 2021): errors then grow linearly, not as a random walk. A 2^-16
// relative slack of L2 covers that for K <= 16384 and is still far below a missing term (about L2).
template <class T>
double tc_slack() {
  return std::is_same_v<T, float> ? 0.0 : std::ldexp(1.0, -16);
}

// Random values rounded to T; returned both as storage and as the exact doubles they represent.
template <class T>
struct host_mat {
  std::vector<T> s;
  std::vector<double> d;
  index_t rows = 0, cols = 0, ld = 0;
  double operator()(index_t i, index_t j) const { return d[static_cast<std::size_t>(i * ld + j)]; }
};

template <class T>
host_mat<T> random_mat(index_t rows, index_t cols, double scale, std::mt19937_64& g, index_t ld = -1) {
  host_mat<T> m;
  m.rows = rows;
  m.cols = cols;
  m.ld = ld < 0 ? cols : ld;
  std::normal_distribution<double> nd(0.0, 1.0);
  const auto count = static_cast<std::size_t>(rows * m.ld);
  m.s.resize(count);
  m.d.resize(count);
  for (std::size_t i = 0; i < count; ++i) {
    m.s[i] = lori::from_float<T>(static_cast<float>(scale * nd(g)));
    m.d[i] = static_cast<double>(lori::to_float(m.s[i]));
  }
  return m;
}

lori::bitmask random_mask(index_t rows, index_t cols, double density, std::mt19937_64& g) {
  lori::bitmask m(rows, cols);
  std::bernoulli_distribution keep(density);
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < cols; ++j)
      if (keep(g)) m.set(i, j);
  if (rows > 2) {  // an empty row and a full row, always
    for (index_t j = 0; j < cols; ++j) m.set(0, j, false);
    for (index_t j = 0; j < cols; ++j) m.set(rows - 1, j, true);
  }
  return m;
}

// Packed values of a random B under `mask`, and B dense (zeros elsewhere) as doubles.
template <class T>
struct host_sparse {
  lori::bitmask mask;
  std::vector<T> packed;
  std::vector<double> dense;  // rows x cols
  index_t rows = 0, cols = 0;
  double operator()(index_t i, index_t j) const { return dense[static_cast<std::size_t>(i * cols + j)]; }
};

template <class T>
host_sparse<T> random_sparse(index_t d, index_t r, double density, double scale, std::mt19937_64& g) {
  host_sparse<T> b;
  b.mask = random_mask(d, r, density, g);
  b.rows = d;
  b.cols = r;
  b.dense.assign(static_cast<std::size_t>(d * r), 0.0);
  std::normal_distribution<double> nd(0.0, 1.0);
  for (index_t i = 0; i < d; ++i)
    for (index_t j = 0; j < r; ++j)
      if (b.mask.test(i, j)) {
        const T v = lori::from_float<T>(static_cast<float>(scale * nd(g)));
        b.packed.push_back(v);
        b.dense[static_cast<std::size_t>(i * r + j)] = static_cast<double>(lori::to_float(v));
      }
  return b;
}

struct check_result {
  index_t bad = 0;
  index_t first_bad = -1;
  double worst_ratio = 0.0;
  double got_at_first = 0.0, ref_at_first = 0.0;
};

// The documented bound: |got - ref| <= 4 u_T |ref| + 8 (u_I + sqrt(K) 2^-24) L2. NaN fails.
template <class T>
check_result check_close(const std::vector<T>& got, const std::vector<double>& ref, const std::vector<double>& l2,
                         double u_i, double K) {
  check_result res;
  const double ut = unit_roundoff<T>();
  const double acc = u_i + std::sqrt(K) * std::ldexp(1.0, -24);
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const double g = static_cast<double>(lori::to_float(got[i]));
    // fp16 results below 2^-14 are subnormal: their rounding error is up to 2^-25 absolute.
    const double bound = 4.0 * ut * std::fabs(ref[i]) + 8.0 * acc * l2[i] + (std::is_same_v<T, lori::half> ? std::ldexp(1.0, -25) : 1e-300);
    const double err = std::fabs(g - ref[i]);
    const double ratio = err / bound;
    if (!(err <= bound)) {
      if (res.bad == 0) {
        res.first_bad = static_cast<index_t>(i);
        res.got_at_first = g;
        res.ref_at_first = ref[i];
      }
      ++res.bad;
    }
    if (ratio > res.worst_ratio || std::isnan(ratio)) res.worst_ratio = ratio;
  }
  return res;
}

#define LORI_CHECK_CLOSE(res)                                                                                         \
  do {                                                                                                                \
    const check_result& r_ = (res);                                                                                   \
    INFO("bad elements: " << r_.bad << ", first at " << r_.first_bad << " (got " << r_.got_at_first << ", ref "      \
                          << r_.ref_at_first << "), worst err/bound " << r_.worst_ratio);                              \
    CHECK(r_.bad == 0);                                                                                               \
  } while (false)

// Extract the n x cols block of a row-major buffer with leading dimension ld.
template <class T>
std::vector<T> compact(const std::vector<T>& buf, index_t n, index_t cols, index_t ld) {
  std::vector<T> out(static_cast<std::size_t>(n * cols));
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j < cols; ++j) out[static_cast<std::size_t>(i * cols + j)] = buf[static_cast<std::size_t>(i * ld + j)];
  return out;
}

template <class T>
lori::row_major_view<const T> cview(const device_buffer<T>& b, index_t rows, index_t cols, index_t ld = -1) {
  return lori::row_major_view<const T>(b.data(), rows, cols, ld);
}
template <class T>
lori::row_major_view<T> mview(device_buffer<T>& b, index_t rows, index_t cols, index_t ld = -1) {
  return lori::row_major_view<T>(b.data(), rows, cols, ld);
}

template <class T>
bool is_poison(T x) {
  if constexpr (std::is_same_v<T, float>) {
    std::uint32_t u;
    std::memcpy(&u, &x, 4);
    return u == 0xffffffffu;
  } else {
    return x.bits == 0xffffu;
  }
}

// ---- references ------------------------------------------------------------------------------------
// H(t, j) = Σ_kk X(t, kk) A(j, kk), with hl2(t, j)² = Σ (X A)².
template <class T>
void ref_project(const host_mat<T>& X, const host_mat<T>& A, std::vector<double>& H, std::vector<double>& hl2) {
  const index_t n = X.rows, k = X.cols, r = A.rows;
  H.assign(static_cast<std::size_t>(n * r), 0.0);
  hl2.assign(static_cast<std::size_t>(n * r), 0.0);
  for (index_t t = 0; t < n; ++t)
    for (index_t j = 0; j < r; ++j) {
      double s = 0, q = 0;
      for (index_t kk = 0; kk < k; ++kk) {
        const double v = X(t, kk) * A(j, kk);
        s += v;
        q += v * v;
      }
      H[static_cast<std::size_t>(t * r + j)] = s;
      hl2[static_cast<std::size_t>(t * r + j)] = q;  // squared
    }
}

// Y(t, c) = Y0(t, c) [+ Σ X W] + s Σ_j H(t, j) B(c, j); L2² also carries the nested H terms.
template <class T>
void ref_layer(const host_mat<T>* X, const host_mat<T>* W, const std::vector<double>& H, const std::vector<double>& hl2,
               const host_sparse<T>& B, double s, const std::vector<double>* Y0, index_t n, std::vector<double>& Y,
               std::vector<double>& l2) {
  const index_t d = B.rows, r = B.cols;
  Y.assign(static_cast<std::size_t>(n * d), 0.0);
  l2.assign(static_cast<std::size_t>(n * d), 0.0);
  for (index_t t = 0; t < n; ++t)
    for (index_t c = 0; c < d; ++c) {
      double y = Y0 ? (*Y0)[static_cast<std::size_t>(t * d + c)] : 0.0, q = y * y;
      if (W != nullptr)
        for (index_t kk = 0; kk < X->cols; ++kk) {
          const double v = (*X)(t, kk) * (*W)(c, kk);
          y += v;
          q += v * v;
        }
      for (index_t j = 0; j < r; ++j) {
        const double b = B(c, j);
        if (b == 0.0) continue;
        const double h = H[static_cast<std::size_t>(t * r + j)];
        y += s * h * b;
        q += (s * h * b) * (s * h * b) + (s * b) * (s * b) * hl2[static_cast<std::size_t>(t * r + j)];
      }
      Y[static_cast<std::size_t>(t * d + c)] = y;
      l2[static_cast<std::size_t>(t * d + c)] = std::sqrt(q);
    }
}

template <class T>
struct fwd_case {
  index_t n, k, d, r;
};

}  // namespace

// =====================================================================================================
TEST_CASE_TEMPLATE("sparse_b: host and device-mask construction agree with lori::bitmask", T, float, lori::bfloat16,
                   lori::half) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(101);
  lori::cuda::context ctx;
  for (const auto& shape : {std::pair<index_t, index_t>{1, 1}, {5, 3}, {300, 32}, {77, 65}, {2000, 130}, {0, 8}}) {
    const index_t d = shape.first, r = shape.second;
    CAPTURE(d);
    CAPTURE(r);
    const auto hb = random_sparse<T>(d, r, 0.1, 1.0, g);
    const auto dev = lori::cuda::sparse_b<T>::from_host(hb.mask, hb.packed);
    CHECK(dev.nnz() == hb.mask.count());
    CHECK(dev.mask_to_host() == hb.mask);
    {  // from a dense host B: the kept entries, in the same packed order
      std::vector<T> dense_host(static_cast<std::size_t>(d * r));
      std::normal_distribution<double> nd;
      for (index_t i = 0; i < d; ++i)
        for (index_t j = 0; j < r; ++j)
          dense_host[static_cast<std::size_t>(i * r + j)] =
              hb.mask.test(i, j) ? lori::from_float<T>(static_cast<float>(hb(i, j))) : lori::from_float<T>(static_cast<float>(nd(g)));
      const auto dev3 = lori::cuda::sparse_b<T>::from_host_dense(hb.mask, lori::row_major_view<const T>(dense_host.data(), d, r));
      const auto v3 = dev3.value_buffer().download();
      CHECK(v3.size() == hb.packed.size());
      index_t w3 = 0;
      for (std::size_t p = 0; p < v3.size() && p < hb.packed.size(); ++p) w3 += std::memcmp(&v3[p], &hb.packed[p], sizeof(T)) != 0;
      CHECK(w3 == 0);
    }

    // Dense scatter (poisoned first) equals the host dense B.
    device_buffer<T> dense(d * r);
    dense.fill_bytes(0xff);
    dev.scatter_to_dense(dense.data(), r, nullptr);
    const auto back = dense.download();
    index_t wrong = 0;
    for (std::size_t i = 0; i < back.size(); ++i) wrong += static_cast<double>(lori::to_float(back[i])) != hb.dense[i];
    CHECK(wrong == 0);

    // From the device mask: same CSR; gather from the dense B gives back the packed values.
    device_buffer<std::uint64_t> words(hb.mask.words());
    auto dev2 = lori::cuda::sparse_b<T>::from_device_mask(words.data(), d, r, nullptr);
    CHECK(dev2.nnz() == dev.nnz());
    const auto csr = hb.mask.template to_csr<std::int32_t>();
    std::vector<std::int32_t> rp(static_cast<std::size_t>(d + 1)), ci(static_cast<std::size_t>(dev2.nnz()));
    LORI_CUDA_CHECK(cudaMemcpy(rp.data(), dev2.row_ptr(), rp.size() * 4, cudaMemcpyDeviceToHost));
    if (!ci.empty()) LORI_CUDA_CHECK(cudaMemcpy(ci.data(), dev2.col_idx(), ci.size() * 4, cudaMemcpyDeviceToHost));
    CHECK(rp == csr.row_ptr);
    CHECK(ci == csr.col_idx);
    dev2.value_buffer().fill_bytes(0xff);
    dev2.gather_from_dense(dense.data(), r, nullptr);
    const auto vals = dev2.value_buffer().download();
    index_t vwrong = 0;
    for (std::size_t p = 0; p < vals.size(); ++p) vwrong += std::memcmp(&vals[p], &hb.packed[p], sizeof(T)) != 0;
    CHECK(vwrong == 0);
  }
}

// =====================================================================================================
namespace {
template <class T>
void forward_case(lori::cuda::context& ctx, index_t n, index_t k, index_t d, index_t r, index_t pad,
                  std::mt19937_64& g) {
  CAPTURE(n);
  CAPTURE(k);
  CAPTURE(d);
  CAPTURE(r);
  CAPTURE(pad);
  INFO("type " << type_name<T>());
  const double s = 0.5;
  const index_t ldx = k + pad, ldy = d + pad;
  const auto X = random_mat<T>(n, k, 1.0, g, ldx);
  const auto A = random_mat<T>(r, k, 1.0 / std::sqrt(static_cast<double>(k)), g);
  const auto W = random_mat<T>(d, k, 1.0 / std::sqrt(static_cast<double>(k)), g);
  const auto hb = random_sparse<T>(d, r, 0.1, 1.0, g);
  const auto Y0 = random_mat<T>(n, d, 1.0, g, ldy);
  const auto B = lori::cuda::sparse_b<T>::from_host(hb.mask, hb.packed);
  device_buffer<T> dX(X.s), dA(A.s), dW(W.s), dY(static_cast<index_t>(Y0.s.size()));
  device_buffer<unsigned char> ws(static_cast<index_t>(lori::cuda::adapter_forward_workspace_bytes(ctx, n, r)) + 1);

  std::vector<double> H, hl2, Yref, l2, Y0c(static_cast<std::size_t>(n * d));
  ref_project(X, A, H, hl2);
  for (index_t t = 0; t < n; ++t)
    for (index_t c = 0; c < d; ++c) Y0c[static_cast<std::size_t>(t * d + c)] = Y0(t, c);
  const auto xv = cview(dX, n, k, ldx);
  const auto av = cview(dA, r, k);

  // adapter_project: H in fp32.
  {
    device_buffer<float> dH(n * r);
    dH.fill_bytes(0xff);
    lori::cuda::adapter_project<T>(ctx, xv, av, dH.data());
    std::vector<double> hl(hl2.size());
    for (std::size_t i = 0; i < hl.size(); ++i) hl[i] = std::sqrt(hl2[i]);
    INFO("adapter_project");
    LORI_CHECK_CLOSE(check_close<float>(dH.download(), H, hl, tc_slack<T>(), static_cast<double>(k)));
  }
  ref_layer<T>(nullptr, nullptr, H, hl2, hb, s, &Y0c, n, Yref, l2);
  const double K = static_cast<double>(k > r ? k : r);

  // adapter_forward (decode kernel when n <= 64, else project + expand): Y = Y0 + adapter.
  {
    dY.upload(Y0.s);
    ws.fill_bytes(0xff);
    lori::cuda::adapter_forward<T>(ctx, xv, av, B, static_cast<float>(s), mview(dY, n, d, ldy), ws.data(), ws.bytes());
    const auto got = dY.download();
    INFO("adapter_forward");
    LORI_CHECK_CLOSE(check_close<T>(compact(got, n, d, ldy), Yref, l2, tc_slack<T>(), K));
    index_t pad_changed = 0;  // padding columns must be untouched
    for (index_t t = 0; t < n; ++t)
      for (index_t c = d; c < ldy; ++c)
        pad_changed += std::memcmp(&got[static_cast<std::size_t>(t * ldy + c)], &Y0.s[static_cast<std::size_t>(t * ldy + c)], sizeof(T)) != 0;
    CHECK(pad_changed == 0);
  }
  // The two-launch path explicitly (also for small n).
  {
    dY.upload(Y0.s);
    device_buffer<float> dH(n * r);
    dH.fill_bytes(0xff);
    lori::cuda::adapter_project<T>(ctx, xv, av, dH.data());
    lori::cuda::adapter_expand<T>(ctx, dH.data(), n, static_cast<float>(s), B, mview(dY, n, d, ldy), true);
    INFO("adapter_project + adapter_expand");
    LORI_CHECK_CLOSE(check_close<T>(compact(dY.download(), n, d, ldy), Yref, l2, tc_slack<T>(), K));
  }
  // The decode kernel explicitly where it applies.
  if (n >= 1 && n <= lori::cuda::decode_max_tokens && n * r <= 4096 && ctx.cooperative_launch()) {
    dY.upload(Y0.s);
    ws.fill_bytes(0xff);
    lori::cuda::adapter_forward_decode<T>(ctx, xv, av, B, static_cast<float>(s), mview(dY, n, d, ldy), ws.data(),
                                          ws.bytes());
    INFO("adapter_forward_decode");
    LORI_CHECK_CLOSE(check_close<T>(compact(dY.download(), n, d, ldy), Yref, l2, tc_slack<T>(), K));
  }
  // layer_forward: Y poisoned (padding too); base + adapter, one intermediate rounding of a part.
  {
    std::vector<double> Yl, l2l;
    ref_layer<T>(&X, &W, H, hl2, hb, s, nullptr, n, Yl, l2l);
    dY.fill_bytes(0xff);
    ws.fill_bytes(0xff);
    lori::cuda::layer_forward<T>(ctx, xv, cview(dW, d, k), av, B, static_cast<float>(s), mview(dY, n, d, ldy), ws.data(),
                                 ws.bytes());
    const auto got = dY.download();
    INFO("layer_forward");
    LORI_CHECK_CLOSE(check_close<T>(compact(got, n, d, ldy), Yl, l2l, unit_roundoff<T>(), K));
    index_t pad_changed = 0;
    for (index_t t = 0; t < n; ++t)
      for (index_t c = d; c < ldy; ++c) pad_changed += !is_poison(got[static_cast<std::size_t>(t * ldy + c)]);
    CHECK(pad_changed == 0);
    // Pipelined over 3 chunks (aux stream + events) where the decode kernel does not take the call.
    dY.fill_bytes(0xff);
    ws.fill_bytes(0xff);
    lori::cuda::layer_forward<T>(ctx, xv, cview(dW, d, k), av, B, static_cast<float>(s), mview(dY, n, d, ldy), ws.data(),
                                 ws.bytes(), 3);
    {
      INFO("layer_forward, 3 chunks");
      LORI_CHECK_CLOSE(check_close<T>(compact(dY.download(), n, d, ldy), Yl, l2l, unit_roundoff<T>(), K));
    }

    // layer_forward_widened: X_ext = [X | poison], W_ext = [W | B dense] built with scatter_to_dense.
    const index_t kr = k + r;
    std::vector<T> xe(static_cast<std::size_t>(n * kr)), we(static_cast<std::size_t>(d * kr));
    std::memset(static_cast<void*>(xe.data()), 0xff, xe.size() * sizeof(T));
    std::memset(static_cast<void*>(we.data()), 0xff, we.size() * sizeof(T));
    for (index_t t = 0; t < n; ++t)
      for (index_t kk = 0; kk < k; ++kk) xe[static_cast<std::size_t>(t * kr + kk)] = X.s[static_cast<std::size_t>(t * ldx + kk)];
    for (index_t c = 0; c < d; ++c)
      for (index_t kk = 0; kk < k; ++kk) we[static_cast<std::size_t>(c * kr + kk)] = W.s[static_cast<std::size_t>(c * k + kk)];
    device_buffer<T> dXe(xe), dWe(we);
    B.scatter_to_dense(dWe.data() + k, kr, nullptr);
    dY.fill_bytes(0xff);
    lori::cuda::layer_forward_widened<T>(ctx, mview(dXe, n, kr), cview(dWe, d, kr), av, static_cast<float>(s),
                                         mview(dY, n, d, ldy));
    INFO("layer_forward_widened");
    LORI_CHECK_CLOSE(check_close<T>(compact(dY.download(), n, d, ldy), Yl, l2l, unit_roundoff<T>(), K));
    // Pipelined over 3 chunks (aux stream + events); fresh poison in the H columns and in Y.
    dXe.upload(xe);
    dY.fill_bytes(0xff);
    lori::cuda::layer_forward_widened<T>(ctx, mview(dXe, n, kr), cview(dWe, d, kr), av, static_cast<float>(s),
                                         mview(dY, n, d, ldy), 3);
    INFO("layer_forward_widened, 3 chunks");
    LORI_CHECK_CLOSE(check_close<T>(compact(dY.download(), n, d, ldy), Yl, l2l, unit_roundoff<T>(), K));
    // Row strides wider than k + r (docs advise multiples of 64; an odd one here): the columns past
    // k + r are poison and must stay untouched.
    {
      const index_t lde = kr + 9;
      std::vector<T> xp(static_cast<std::size_t>(n * lde)), wp(static_cast<std::size_t>(d * lde));
      std::memset(static_cast<void*>(xp.data()), 0xff, xp.size() * sizeof(T));
      std::memset(static_cast<void*>(wp.data()), 0xff, wp.size() * sizeof(T));
      for (index_t t = 0; t < n; ++t)
        for (index_t kk = 0; kk < k; ++kk) xp[static_cast<std::size_t>(t * lde + kk)] = xe[static_cast<std::size_t>(t * kr + kk)];
      for (index_t c = 0; c < d; ++c)
        for (index_t kk = 0; kk < k; ++kk) wp[static_cast<std::size_t>(c * lde + kk)] = we[static_cast<std::size_t>(c * kr + kk)];
      device_buffer<T> dXp(xp), dWp(wp);
      B.scatter_to_dense(dWp.data() + k, lde, nullptr);
      dY.fill_bytes(0xff);
      lori::cuda::layer_forward_widened<T>(ctx, mview(dXp, n, kr, lde), cview(dWp, d, kr, lde), av, static_cast<float>(s),
                                           mview(dY, n, d, ldy));
      INFO("layer_forward_widened, row stride k + r + 9");
      LORI_CHECK_CLOSE(check_close<T>(compact(dY.download(), n, d, ldy), Yl, l2l, unit_roundoff<T>(), K));
      const auto gx = dXp.download();
      index_t x_pad_changed = 0;
      for (index_t t = 0; t < n; ++t)
        for (index_t c = kr; c < lde; ++c)
          x_pad_changed += std::memcmp(&gx[static_cast<std::size_t>(t * lde + c)], &xp[static_cast<std::size_t>(t * lde + c)], sizeof(T)) != 0;
      CHECK(x_pad_changed == 0);
    }
  }
}
}  // namespace

TEST_CASE_TEMPLATE("adapter forward (decode, two-launch, whole layer) matches the double reference", T, float,
                   lori::bfloat16, lori::half) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(202);
  lori::cuda::context ctx;
  // n: decode sizes (1, 3, 64), odd and large; k, d not multiples of 8; r from 1 to 256.
  forward_case<T>(ctx, 1, 256, 256, 32, 0, g);
  forward_case<T>(ctx, 3, 129, 77, 8, 3, g);
  forward_case<T>(ctx, 64, 256, 300, 32, 0, g);
  forward_case<T>(ctx, 16, 100, 130, 256, 1, g);  // n * r = 4096: decode at its limit
  forward_case<T>(ctx, 65, 131, 203, 32, 5, g);
  forward_case<T>(ctx, 33, 64, 96, 128, 0, g);    // n * r > 4096: two-launch path at small n
  forward_case<T>(ctx, 300, 256, 512, 16, 0, g);
  forward_case<T>(ctx, 70, 64, 100, 1, 2, g);
  forward_case<T>(ctx, 0, 64, 100, 16, 0, g);     // no tokens: nothing happens, nothing throws
  // n = 4096 (d not a multiple of 128), and r = 33 with k = 1000 and padded rows.
  forward_case<T>(ctx, 4096, 136, 264, 32, 0, g);
  forward_case<T>(ctx, 200, 1000, 96, 33, 8, g);
}

TEST_CASE("adapter forward rejects bad shapes and missing workspace") {
  lori::cuda::context ctx;
  using T = lori::bfloat16;
  auto g = lori_test::rng(203);
  const auto hb = random_sparse<T>(40, 8, 0.2, 1.0, g);
  const auto B = lori::cuda::sparse_b<T>::from_host(hb.mask, hb.packed);
  device_buffer<T> X(100 * 64), A(8 * 64), Y(100 * 40), W(40 * 64);
  device_buffer<unsigned char> ws(static_cast<index_t>(lori::cuda::adapter_forward_workspace_bytes(ctx, 100, 8)));
  for (auto* b : {&X, &A, &Y, &W}) b->fill_bytes(0);
  auto xv = cview(X, 100, 64);
  CHECK_THROWS_AS(lori::cuda::adapter_forward<T>(ctx, xv, cview(A, 8, 60), B, 1.0f, mview(Y, 100, 40), ws.data(), ws.bytes()),
                  lori::error);  // k mismatch
  CHECK_THROWS_AS(lori::cuda::adapter_forward<T>(ctx, xv, cview(A, 4, 64), B, 1.0f, mview(Y, 100, 40), ws.data(), ws.bytes()),
                  lori::error);  // r mismatch
  CHECK_THROWS_AS(lori::cuda::adapter_forward<T>(ctx, xv, cview(A, 8, 64), B, 1.0f, mview(Y, 100, 39), ws.data(), ws.bytes()),
                  lori::error);  // Y shape
  CHECK_THROWS_AS(lori::cuda::adapter_forward<T>(ctx, xv, cview(A, 8, 64), B, 1.0f, mview(Y, 100, 40), ws.data(), 3),
                  lori::error);  // workspace too small
  CHECK_THROWS_AS(lori::cuda::layer_forward<T>(ctx, xv, cview(W, 40, 63), cview(A, 8, 64), B, 1.0f, mview(Y, 100, 40),
                                               ws.data(), ws.bytes()),
                  lori::error);  // W shape
  CHECK_THROWS_AS(lori::cuda::adapter_forward_decode<T>(ctx, cview(X, 100, 64), cview(A, 8, 64), B, 1.0f,
                                                        mview(Y, 100, 40), ws.data(), ws.bytes()),
                  lori::error);  // decode: n > 64
  CHECK_NOTHROW(lori::cuda::adapter_forward<T>(ctx, xv, cview(A, 8, 64), B, 1.0f, mview(Y, 100, 40), ws.data(), ws.bytes()));
  LORI_CUDA_CHECK(cudaDeviceSynchronize());
}

// =====================================================================================================
// The decode kernel (adapter_forward_decode), the adapter_forward routes and adapter_expand, at odd
// shapes, unaligned pointers, padded rows, both launch modes; dependent back-to-back calls; bitwise
// determinism. Tolerances: the bound of the file header with u_I = 0 for the decode kernel and the
// expansion (fp32 products and sums, one rounding to T at the store) and u_I = tc_slack for routes
// through cuBLAS (n > 64); K = max(k, r) terms in the longest fp32 sum.
namespace {

// A Y buffer on the device: `off` poisoned elements, then n rows of ld elements whose first d hold Y0
// and whose padding is poisoned. Everything but the n x d block must stay poisoned.
template <class T>
struct poisoned_y {
  index_t n, d, ld, off;
  host_mat<T> y0;
  device_buffer<T> buf;
  poisoned_y(index_t n_, index_t d_, index_t ld_, index_t off_, std::mt19937_64& g)
      : n(n_), d(d_), ld(ld_), off(off_), y0(random_mat<T>(n_, d_, 1.0, g, ld_)), buf(off_ + n_ * ld_ + 1) {
    reset();
  }
  std::vector<T> host() const {
    std::vector<T> h(static_cast<std::size_t>(off + n * ld + 1));
    std::memset(static_cast<void*>(h.data()), 0xff, h.size() * sizeof(T));
    for (index_t t = 0; t < n; ++t)
      for (index_t c = 0; c < d; ++c)
        h[static_cast<std::size_t>(off + t * ld + c)] = y0.s[static_cast<std::size_t>(t * ld + c)];
    return h;
  }
  void reset() { buf.upload(host()); }
  lori::row_major_view<T> view() { return {buf.data() + off, n, d, ld}; }
  std::vector<double> y0c() const {
    std::vector<double> v(static_cast<std::size_t>(n * d));
    for (index_t t = 0; t < n; ++t)
      for (index_t c = 0; c < d; ++c) v[static_cast<std::size_t>(t * d + c)] = y0(t, c);
    return v;
  }
  // Elements outside the n x d block that changed (must be 0).
  index_t outside_changed(const std::vector<T>& got) const {
    index_t bad = 0;
    for (index_t i = 0; i < static_cast<index_t>(got.size()); ++i) {
      const index_t rel = i - off, t = rel >= 0 ? rel / ld : -1, c = rel >= 0 ? rel - t * ld : -1;
      const bool inside = rel >= 0 && t < n && c < d;
      if (!inside) bad += !is_poison(got[static_cast<std::size_t>(i)]);
    }
    return bad;
  }
  std::vector<T> block(const std::vector<T>& got) const {
    std::vector<T> out(static_cast<std::size_t>(n * d));
    for (index_t t = 0; t < n; ++t)
      for (index_t c = 0; c < d; ++c)
        out[static_cast<std::size_t>(t * d + c)] = got[static_cast<std::size_t>(off + t * ld + c)];
    return out;
  }
};

// X (n x k, row stride ldx) at an element offset `off` (off = 1: not 16-byte aligned).
template <class T>
struct offset_x {
  host_mat<T> x;
  index_t off;
  device_buffer<T> buf;
  offset_x(index_t n, index_t k, index_t ldx, index_t off_, std::mt19937_64& g)
      : x(random_mat<T>(n, k, 1.0, g, ldx)), off(off_), buf(upload(x, off_)) {}
  static std::vector<T> upload(const host_mat<T>& x, index_t off) {
    std::vector<T> h(static_cast<std::size_t>(off) + x.s.size() + 1, lori::from_float<T>(0.0f));
    std::copy(x.s.begin(), x.s.end(), h.begin() + off);
    return h;
  }
  lori::row_major_view<const T> view() const { return {buf.data() + off, x.rows, x.cols, x.ld}; }
};

enum class fwd_route { decode, decode_overlap, forward };

// One call through `route` on fresh inputs; checks every element of Y, the untouched padding, exact
// Y0 in the rows of B without kept entries, and bitwise-equal reruns (determinism, both launch modes).
template <class T>
void decode_case(lori::cuda::context& ctx, index_t n, index_t k, index_t d, index_t r, double density, bool odd_layout,
                 fwd_route route, std::mt19937_64& g, int force_tile = 0, index_t force_clusters = 0) {
  CAPTURE(n);
  CAPTURE(k);
  CAPTURE(d);
  CAPTURE(r);
  CAPTURE(density);
  CAPTURE(odd_layout);
  CAPTURE(static_cast<int>(route));
  INFO("type " << type_name<T>());
  const double s = 0.75;
  const index_t xoff = odd_layout ? 1 : 0, yoff = odd_layout ? 3 : 0;
  const index_t ldx = odd_layout ? k + 5 : k, ldy = odd_layout ? d + 3 : d;
  const offset_x<T> X(n, k, ldx, xoff, g);
  const auto A = random_mat<T>(r, k, 1.0 / std::sqrt(static_cast<double>(k)), g);
  const auto hb = random_sparse<T>(d, r, density, 1.0, g);
  const auto B = lori::cuda::sparse_b<T>::from_host(hb.mask, hb.packed);
  poisoned_y<T> Y(n, d, ldy, yoff, g);
  device_buffer<T> dA(A.s);
  device_buffer<unsigned char> ws(static_cast<index_t>(lori::cuda::adapter_forward_workspace_bytes(ctx, n, r)) + 1);
  std::vector<double> H, hl2, Yref, l2;
  ref_project(X.x, A, H, hl2);
  const auto y0 = Y.y0c();
  ref_layer<T>(nullptr, nullptr, H, hl2, hb, s, &y0, n, Yref, l2);
  const bool cublas_route = route == fwd_route::forward && n > lori::cuda::decode_max_tokens;
  auto call = [&](fwd_route how) {
    ws.fill_bytes(0xff);
    if (how == fwd_route::forward)
      lori::cuda::adapter_forward<T>(ctx, X.view(), cview(dA, r, k), B, static_cast<float>(s), Y.view(), ws.data(), ws.bytes());
    else if (force_tile > 0 || force_clusters > 0)  // the tuning overrides of the launch
      lori::cuda::detail_fwd::launch_decode<T>(ctx, X.view(), cview(dA, r, k), B, static_cast<float>(s), Y.view(),
                                               how == fwd_route::decode_overlap ? lori::cuda::decode_overlap::weights
                                                                                : lori::cuda::decode_overlap::none,
                                               force_tile, force_clusters);
    else
      lori::cuda::adapter_forward_decode<T>(ctx, X.view(), cview(dA, r, k), B, static_cast<float>(s), Y.view(), nullptr, 0,
                                            how == fwd_route::decode_overlap ? lori::cuda::decode_overlap::weights
                                                                             : lori::cuda::decode_overlap::none);
  };
  call(route);
  const auto got = Y.buf.download();
  LORI_CHECK_CLOSE(check_close<T>(Y.block(got), Yref, l2, cublas_route ? tc_slack<T>() : 0.0,
                                  static_cast<double>(k > r ? k : r)));
  CHECK(Y.outside_changed(got) == 0);
  index_t empty_changed = 0;  // rows of B without kept entries: Y0 exactly
  for (index_t c = 0; c < d; ++c) {
    bool empty = true;
    for (index_t j = 0; j < r; ++j) empty = empty && !hb.mask.test(c, j);
    if (!empty) continue;
    for (index_t t = 0; t < n; ++t)
      empty_changed += std::memcmp(&got[static_cast<std::size_t>(yoff + t * ldy + c)],
                                   &Y.y0.s[static_cast<std::size_t>(t * ldy + c)], sizeof(T)) != 0;
  }
  CHECK(empty_changed == 0);
  // Determinism: the same call again (and the decode kernel in the other launch mode) gives the same bits.
  const fwd_route other = route == fwd_route::forward ? route
                          : route == fwd_route::decode ? fwd_route::decode_overlap : fwd_route::decode;
  for (const fwd_route again : {route, other}) {
    Y.reset();
    call(again);
    const auto got2 = Y.buf.download();
    CHECK(std::memcmp(got2.data(), got.data(), got.size() * sizeof(T)) == 0);
  }
}

// Reference-side bound for a sum of steps: Σ_i (4 u_T |ref_i| + 8 √K 2^-24 L2_i) (+ fp16 subnormal slack).
template <class T>
index_t count_outside(const std::vector<T>& got, const std::vector<double>& ref, const std::vector<double>& bound) {
  index_t bad = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const double e = std::fabs(static_cast<double>(lori::to_float(got[i])) - ref[i]);
    bad += !(e <= bound[i]);
  }
  return bad;
}

}  // namespace

TEST_CASE_TEMPLATE("adapter_forward_decode: n = 1..64, odd k, d, r, empty rows, unaligned X and Y, both launch modes",
                   T, float, lori::bfloat16, lori::half) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(211);
  lori::cuda::context ctx;
  struct shape {
    index_t n, k, d, r;
    double density;
  };
  // k = 4096 and 14336 (one and four passes over a block's k-slice), k smaller than the cluster (k = 1,
  // 7: empty slices), r = 1, 7, 32, 33, 64, 128, 256, d = 1 and not a multiple of anything, B empty
  // (density 0: only the forced full last row) or dense.
  const shape shapes[] = {{1, 4096, 512, 32, 0.1}, {1, 7, 1, 1, 1.0},       {1, 1, 5, 7, 0.5},
                          {2, 33, 77, 7, 0.3},     {3, 1000, 129, 33, 0.1}, {4, 4096, 4096, 32, 0.1},
                          {5, 129, 203, 64, 0.2},  {7, 130, 96, 128, 0.1},  {16, 100, 130, 256, 0.1},
                          {33, 300, 50, 256, 0.05}, {63, 520, 300, 33, 0.1}, {64, 4096, 1024, 32, 0.1},
                          {64, 14336, 64, 32, 0.1}, {17, 5000, 40, 1, 0.5}, {8, 64, 100, 16, 0.0},
                          {9, 96, 33, 32, 1.0}};
  int i = 0;
  for (const auto& sh : shapes) {
    const bool odd = (i & 1) != 0;
    decode_case<T>(ctx, sh.n, sh.k, sh.d, sh.r, sh.density, odd, (i % 3 == 2) ? fwd_route::decode_overlap : fwd_route::decode, g);
    decode_case<T>(ctx, sh.n, sh.k, sh.d, sh.r, sh.density, !odd, fwd_route::forward, g);
    ++i;
  }
  CHECK_THROWS_AS(decode_case<T>(ctx, 65, 64, 64, 8, 0.1, false, fwd_route::decode, g), lori::error);  // n > 64
  // The launch configurations the tuning benchmarks use: one-token clusters at n up to 64, 4-token
  // clusters at n = 1, and cluster counts from 1 to more than fit at once (several waves).
  const struct {
    index_t n;
    int tile;
    index_t clusters;
  } configs[] = {{1, 4, 16}, {1, 1, 1}, {1, 1, 40}, {3, 4, 2}, {17, 1, 8}, {64, 1, 16}, {64, 4, 40}, {33, 4, 1}};
  for (const auto& cf : configs) {
    CAPTURE(cf.tile);
    CAPTURE(cf.clusters);
    decode_case<T>(ctx, cf.n, 1000, 700, 32, 0.1, (cf.n & 1) != 0, fwd_route::decode, g, cf.tile, cf.clusters);
  }
}

TEST_CASE_TEMPLATE("adapter_forward routes: n = 64, 65, odd n and 4096, aligned and unaligned", T, float, lori::bfloat16,
                   lori::half) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(212);
  lori::cuda::context ctx;
  decode_case<T>(ctx, 64, 256, 300, 32, 0.1, false, fwd_route::forward, g);   // decode kernel
  decode_case<T>(ctx, 65, 256, 300, 32, 0.1, true, fwd_route::forward, g);    // cuBLAS + expand
  decode_case<T>(ctx, 127, 96, 129, 33, 0.1, false, fwd_route::forward, g);
  decode_case<T>(ctx, 200, 64, 256, 256, 0.3, true, fwd_route::forward, g);
  decode_case<T>(ctx, 4096, 136, 264, 32, 0.1, false, fwd_route::forward, g);
  decode_case<T>(ctx, 4096, 64, 128, 32, 0.1, true, fwd_route::forward, g);
}

TEST_CASE_TEMPLATE("adapter_forward_decode: back-to-back dependent calls (Y and X produced by the previous call)", T,
                   float, lori::bfloat16, lori::half) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(213);
  lori::cuda::context ctx;
  const double s = 0.5, ut = unit_roundoff<T>();
  for (const index_t n : {index_t{1}, index_t{5}, index_t{64}}) {
    CAPTURE(n);
    INFO("type " << type_name<T>());
    const index_t k = 384, d = 384, r = 32;  // d = k: Y of one call can be X of the next
    constexpr int calls = 6;
    std::vector<host_mat<T>> As;
    std::vector<host_sparse<T>> hbs;
    std::vector<device_buffer<T>> dAs;
    std::vector<lori::cuda::sparse_b<T>> Bs;
    for (int i = 0; i < calls; ++i) {
      As.push_back(random_mat<T>(r, k, 1.0 / std::sqrt(static_cast<double>(k)), g));
      hbs.push_back(random_sparse<T>(d, r, 0.1, 1.0, g));
      dAs.emplace_back(As.back().s);
      Bs.push_back(lori::cuda::sparse_b<T>::from_host(hbs.back().mask, hbs.back().packed));
    }
    // (a) The same Y accumulated by all calls, same X: each call reads the Y the previous one wrote.
    {
      const auto X = random_mat<T>(n, k, 1.0, g);
      const auto Y0 = random_mat<T>(n, d, 1.0, g);
      device_buffer<T> dX(X.s), dY(Y0.s);
      std::vector<double> ref(static_cast<std::size_t>(n * d)), bound(ref.size(), 0.0);
      for (index_t t = 0; t < n; ++t)
        for (index_t c = 0; c < d; ++c) ref[static_cast<std::size_t>(t * d + c)] = Y0(t, c);
      std::vector<T> results[2];
      for (int mode = 0; mode < 2; ++mode) {
        dY.upload(Y0.s);
        for (int i = 0; i < calls; ++i)
          lori::cuda::adapter_forward_decode<T>(ctx, cview(dX, n, k), cview(dAs[static_cast<std::size_t>(i)], r, k),
                                                Bs[static_cast<std::size_t>(i)], static_cast<float>(s), mview(dY, n, d),
                                                nullptr, 0,
                                                mode == 1 ? lori::cuda::decode_overlap::weights : lori::cuda::decode_overlap::none);
        results[mode] = dY.download();
      }
      for (int i = 0; i < calls; ++i) {
        std::vector<double> H, hl2, step, l2;
        ref_project(X, As[static_cast<std::size_t>(i)], H, hl2);
        ref_layer<T>(nullptr, nullptr, H, hl2, hbs[static_cast<std::size_t>(i)], s, &ref, n, step, l2);
        for (std::size_t e = 0; e < ref.size(); ++e)
          bound[e] += 4.0 * ut * std::fabs(step[e]) + 8.0 * std::sqrt(static_cast<double>(k)) * std::ldexp(1.0, -24) * l2[e] +
                      (std::is_same_v<T, lori::half> ? std::ldexp(1.0, -25) : 0.0);
        ref = step;
      }
      INFO("accumulation chain");
      CHECK(count_outside(results[0], ref, bound) == 0);
      CHECK(std::memcmp(results[0].data(), results[1].data(), results[0].size() * sizeof(T)) == 0);
    }
    // (b) A feed chain: call i reads X = Z_i (written by call i - 1) and adds into Y = Z_{i+1}.
    {
      std::vector<host_mat<T>> Z0;
      std::vector<device_buffer<T>> dZ;
      for (int i = 0; i <= calls; ++i) {
        Z0.push_back(random_mat<T>(n, d, 1.0, g));
        dZ.emplace_back(Z0.back().s);
      }
      for (int i = 0; i < calls; ++i)
        lori::cuda::adapter_forward_decode<T>(ctx, cview(dZ[static_cast<std::size_t>(i)], n, k),
                                              cview(dAs[static_cast<std::size_t>(i)], r, k), Bs[static_cast<std::size_t>(i)],
                                              static_cast<float>(s), mview(dZ[static_cast<std::size_t>(i) + 1], n, d),
                                              nullptr, 0, lori::cuda::decode_overlap::weights);
      for (int i = 0; i < calls; ++i) {
        CAPTURE(i);
        INFO("feed chain");
        host_mat<T> Xi = Z0[static_cast<std::size_t>(i)];  // the values call i must have read
        Xi.s = dZ[static_cast<std::size_t>(i)].download();
        for (std::size_t e = 0; e < Xi.s.size(); ++e) Xi.d[e] = static_cast<double>(lori::to_float(Xi.s[e]));
        std::vector<double> H, hl2, Yref, l2, y0(static_cast<std::size_t>(n * d));
        for (std::size_t e = 0; e < y0.size(); ++e) y0[e] = Z0[static_cast<std::size_t>(i) + 1].d[e];
        ref_project(Xi, As[static_cast<std::size_t>(i)], H, hl2);
        ref_layer<T>(nullptr, nullptr, H, hl2, hbs[static_cast<std::size_t>(i)], s, &y0, n, Yref, l2);
        LORI_CHECK_CLOSE(check_close<T>(dZ[static_cast<std::size_t>(i) + 1].download(), Yref, l2, 0.0, static_cast<double>(k)));
      }
    }
  }
}

namespace {
// adapter_expand on fresh inputs: every element of Y against the double reference, the bytes around
// the n x d block untouched (Y poisoned first when it is overwritten).
template <class T>
void expand_case(lori::cuda::context& ctx, index_t n, index_t d, index_t r, double density, bool accumulate, bool odd,
                 std::mt19937_64& g) {
  CAPTURE(n);
  CAPTURE(d);
  CAPTURE(r);
  CAPTURE(density);
  CAPTURE(accumulate);
  CAPTURE(odd);
  INFO("type " << type_name<T>());
  const double s = 0.5;
  const index_t ldy = odd ? d + 1 : ((d + 7) / 8) * 8, yoff = odd ? 1 : 0;
  std::normal_distribution<double> nd;
  std::vector<float> hh(static_cast<std::size_t>(n * r));
  for (auto& v : hh) v = static_cast<float>(nd(g));
  const auto hb = random_sparse<T>(d, r, density, 1.0, g);
  const auto B = lori::cuda::sparse_b<T>::from_host(hb.mask, hb.packed);
  poisoned_y<T> Y(n, d, ldy, yoff, g);
  device_buffer<float> dH(hh);
  std::vector<double> ref(static_cast<std::size_t>(n * d)), l2(ref.size());
  for (index_t t = 0; t < n; ++t)
    for (index_t c = 0; c < d; ++c) {
      double y = accumulate ? Y.y0(t, c) : 0.0, q = y * y;
      for (index_t j = 0; j < r; ++j) {
        const double term = s * static_cast<double>(hh[static_cast<std::size_t>(t * r + j)]) * hb(c, j);
        y += term;
        q += term * term;
      }
      ref[static_cast<std::size_t>(t * d + c)] = y;
      l2[static_cast<std::size_t>(t * d + c)] = std::sqrt(q);
    }
  if (!accumulate) Y.buf.fill_bytes(0xff);  // overwrite: the n x d block must be written, so poison it too
  lori::cuda::adapter_expand<T>(ctx, dH.data(), n, static_cast<float>(s), B, Y.view(), accumulate);
  const auto got = Y.buf.download();
  LORI_CHECK_CLOSE(check_close<T>(Y.block(got), ref, l2, 0.0, static_cast<double>(r)));
  CHECK(Y.outside_changed(got) == 0);
}
}  // namespace

TEST_CASE_TEMPLATE("adapter_expand: odd shapes, unaligned Y, accumulate and overwrite, match the double reference", T,
                   float, lori::bfloat16, lori::half) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(214);
  lori::cuda::context ctx;
  struct shape {
    index_t n, d, r;
    double density;
  };
  const shape shapes[] = {{1, 1, 1, 1.0},    {31, 16, 7, 0.5},   {32, 17, 32, 0.1},   {33, 128, 33, 1.0},
                          {100, 129, 32, 0.1}, {70, 300, 256, 1.0}, {4096, 520, 32, 0.1}, {45, 48, 256, 0.02}};
  int i = 0;
  for (const auto& sh : shapes)
    for (const bool accumulate : {true, false}) {
      const bool odd = ((i++) & 1) != 0;
      expand_case<T>(ctx, sh.n, sh.d, sh.r, sh.density, accumulate, odd, g);
    }
}

// Small cases of the decode kernel (both variants, both launch modes, a dependent chain) and of the
// expansion kernel (both variants), sized for compute-sanitizer (memcheck, racecheck, synccheck).
TEST_CASE("decode and expand kernels: small cases for the sanitizers") {
  using T = lori::bfloat16;
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(215);
  lori::cuda::context ctx;
  decode_case<T>(ctx, 1, 64, 100, 8, 0.2, false, fwd_route::decode, g);
  decode_case<T>(ctx, 3, 33, 40, 32, 0.1, true, fwd_route::decode_overlap, g);
  decode_case<T>(ctx, 17, 64, 70, 32, 0.1, false, fwd_route::decode, g);
  decode_case<T>(ctx, 5, 100, 64, 33, 0.3, true, fwd_route::decode, g, 4, 3);
  // Three dependent calls into one Y with programmatic dependent launch; ordinary launches agree bitwise.
  const index_t n = 2, k = 96, d = 80, r = 16;
  const auto X = random_mat<T>(n, k, 1.0, g);
  const auto Y0 = random_mat<T>(n, d, 1.0, g);
  const auto A = random_mat<T>(r, k, 0.1, g);
  const auto hb = random_sparse<T>(d, r, 0.2, 1.0, g);
  const auto B = lori::cuda::sparse_b<T>::from_host(hb.mask, hb.packed);
  device_buffer<T> dX(X.s), dA(A.s), dY(Y0.s);
  std::vector<T> res[2];
  for (int mode = 0; mode < 2; ++mode) {
    dY.upload(Y0.s);
    for (int i = 0; i < 3; ++i)
      lori::cuda::adapter_forward_decode<T>(ctx, cview(dX, n, k), cview(dA, r, k), B, 0.5f, mview(dY, n, d), nullptr, 0,
                                            mode == 1 ? lori::cuda::decode_overlap::weights : lori::cuda::decode_overlap::none);
    res[mode] = dY.download();
  }
  CHECK(std::memcmp(res[0].data(), res[1].data(), res[0].size() * sizeof(T)) == 0);
  expand_case<T>(ctx, 40, 50, 8, 0.3, true, true, g);
  expand_case<T>(ctx, 70, 33, 32, 0.1, false, false, g);
}

// =====================================================================================================
namespace {
template <class T>
void sddmm_case(lori::cuda::context& ctx, index_t n, index_t d, index_t r, index_t pad, std::mt19937_64& g) {
  CAPTURE(n);
  CAPTURE(d);
  CAPTURE(r);
  CAPTURE(pad);
  INFO("type " << type_name<T>());
  const double s = 0.75;
  const index_t ldg = d + pad;
  const auto G = random_mat<T>(n, d, 1.0, g, ldg);
  std::vector<float> H(static_cast<std::size_t>(n * r));  // fp32, generally not representable in T
  std::normal_distribution<double> nd;
  for (auto& h : H) h = static_cast<float>(nd(g));
  const auto hb = random_sparse<T>(d, r, 0.1, 1.0, g);
  const auto B = lori::cuda::sparse_b<T>::from_host(hb.mask, hb.packed);
  const auto csr = hb.mask.template to_csr<std::int32_t>();
  std::vector<double> ref(static_cast<std::size_t>(B.nnz())), l2(ref.size());
  for (index_t i = 0; i < d; ++i)
    for (std::int32_t p = csr.row_ptr[static_cast<std::size_t>(i)]; p < csr.row_ptr[static_cast<std::size_t>(i + 1)]; ++p) {
      const index_t j = csr.col_idx[static_cast<std::size_t>(p)];
      double acc = 0, q = 0;
      for (index_t t = 0; t < n; ++t) {
        const double v = s * G(t, i) * static_cast<double>(H[static_cast<std::size_t>(t * r + j)]);
        acc += v;
        q += v * v;
      }
      ref[static_cast<std::size_t>(p)] = acc;
      l2[static_cast<std::size_t>(p)] = std::sqrt(q);
    }
  device_buffer<T> dG(G.s), out(B.nnz());
  device_buffer<float> dH(H);
  device_buffer<unsigned char> ws(static_cast<index_t>(lori::cuda::grad_b_workspace_bytes(ctx, n, d, r, B.nnz())) + 1);
  out.fill_bytes(0xff);
  ws.fill_bytes(0xff);
  lori::cuda::grad_b_sddmm<T>(ctx, cview(dG, n, d, ldg), dH.data(), static_cast<float>(s), B, out.data(), ws.data(),
                              ws.bytes());
  // 16-bit types round H to T for the tensor cores: an intermediate rounding.
  const double ui = std::is_same_v<T, float> ? 0.0 : unit_roundoff<T>();
  LORI_CHECK_CLOSE(check_close<T>(out.download(), ref, l2, ui, static_cast<double>(n)));
}

template <class T>
void grad_x_case(lori::cuda::context& ctx, index_t n, index_t k, index_t d, index_t r, std::mt19937_64& g) {
  CAPTURE(n);
  CAPTURE(k);
  CAPTURE(d);
  CAPTURE(r);
  INFO("type " << type_name<T>());
  const double s = 0.5;
  const auto G = random_mat<T>(n, d, 1.0, g);
  const auto W = random_mat<T>(d, k, 1.0 / std::sqrt(static_cast<double>(d)), g);
  const auto A = random_mat<T>(r, k, 1.0, g);
  const auto hb = random_sparse<T>(d, r, 0.1, 1.0 / std::sqrt(static_cast<double>(d)), g);
  const auto B = lori::cuda::sparse_b<T>::from_host(hb.mask, hb.packed);
  std::vector<double> ref(static_cast<std::size_t>(n * k)), l2(ref.size());
  std::vector<double> U(static_cast<std::size_t>(r)), Uq(static_cast<std::size_t>(r));
  for (index_t t = 0; t < n; ++t) {
    for (index_t j = 0; j < r; ++j) {
      double u = 0, q = 0;
      for (index_t c = 0; c < d; ++c) {
        const double v = G(t, c) * hb(c, j);
        u += v;
        q += v * v;
      }
      U[static_cast<std::size_t>(j)] = u;
      Uq[static_cast<std::size_t>(j)] = q;
    }
    for (index_t kk = 0; kk < k; ++kk) {
      double x = 0, q = 0;
      for (index_t c = 0; c < d; ++c) {
        const double v = G(t, c) * W(c, kk);
        x += v;
        q += v * v;
      }
      for (index_t j = 0; j < r; ++j) {
        const double v = s * U[static_cast<std::size_t>(j)] * A(j, kk);
        x += v;
        q += v * v + (s * A(j, kk)) * (s * A(j, kk)) * Uq[static_cast<std::size_t>(j)];
      }
      ref[static_cast<std::size_t>(t * k + kk)] = x;
      l2[static_cast<std::size_t>(t * k + kk)] = std::sqrt(q);
    }
  }
  device_buffer<T> dG(G.s), dW(W.s), dA(A.s), dX(n * k);
  device_buffer<unsigned char> ws(static_cast<index_t>(lori::cuda::grad_x_workspace_bytes<T>(n, d, r)) + 1);
  dX.fill_bytes(0xff);
  ws.fill_bytes(0xff);
  lori::cuda::grad_x<T>(ctx, cview(dG, n, d), cview(dW, d, k), cview(dA, r, k), B, static_cast<float>(s), mview(dX, n, k),
                        ws.data(), ws.bytes());
  const double ui = std::is_same_v<T, float> ? 0.0 : unit_roundoff<T>();  // G·B and G·W rounded to T
  LORI_CHECK_CLOSE(check_close<T>(dX.download(), ref, l2, ui, static_cast<double>(d)));
}
}  // namespace

TEST_CASE_TEMPLATE("grad_b_sddmm: masked dB into compact values matches the double reference", T, float,
                   lori::bfloat16, lori::half) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(303);
  lori::cuda::context ctx;
  sddmm_case<T>(ctx, 1, 256, 32, 0, g);
  sddmm_case<T>(ctx, 3, 77, 8, 1, g);      // d odd, ld odd: scalar staging path
  sddmm_case<T>(ctx, 65, 300, 32, 0, g);
  sddmm_case<T>(ctx, 2048, 512, 32, 0, g);  // several token splits + deterministic reduction
  sddmm_case<T>(ctx, 1000, 203, 17, 3, g);  // r not a multiple of 16
  sddmm_case<T>(ctx, 700, 136, 128, 8, g);  // r at its limit, vector staging with ld padding
  sddmm_case<T>(ctx, 0, 64, 16, 0, g);      // no tokens: zeros
  // n = 4096 with a partial last 128-column tile (520 = 4·128 + 8); r = 33 and r = 1; more shapes.
  sddmm_case<T>(ctx, 4096, 520, 32, 0, g);
  sddmm_case<T>(ctx, 333, 136, 33, 0, g);
  sddmm_case<T>(ctx, 64, 96, 1, 8, g);
  sddmm_case<T>(ctx, 130, 1000, 8, 0, g);
}

TEST_CASE("grad_b_sddmm is deterministic and rejects bad arguments") {
  lori::cuda::context ctx;
  using T = lori::bfloat16;
  auto g = lori_test::rng(304);
  const index_t n = 4096, d = 256, r = 32;
  const auto G = random_mat<T>(n, d, 1.0, g);
  std::vector<float> H(static_cast<std::size_t>(n * r), 0.25f);
  const auto hb = random_sparse<T>(d, r, 0.1, 1.0, g);
  const auto B = lori::cuda::sparse_b<T>::from_host(hb.mask, hb.packed);
  device_buffer<T> dG(G.s), o1(B.nnz()), o2(B.nnz());
  device_buffer<float> dH(H);
  device_buffer<unsigned char> ws(static_cast<index_t>(lori::cuda::grad_b_workspace_bytes(ctx, n, d, r, B.nnz())) + 1);
  lori::cuda::grad_b_sddmm<T>(ctx, cview(dG, n, d), dH.data(), 1.0f, B, o1.data(), ws.data(), ws.bytes());
  lori::cuda::grad_b_sddmm<T>(ctx, cview(dG, n, d), dH.data(), 1.0f, B, o2.data(), ws.data(), ws.bytes());
  const auto a = o1.download(), b = o2.download();
  CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
  CHECK_THROWS_AS(lori::cuda::grad_b_sddmm<T>(ctx, cview(dG, n, d - 1), dH.data(), 1.0f, B, o1.data(), ws.data(), ws.bytes()),
                  lori::error);
  if (lori::cuda::grad_b_workspace_bytes(ctx, n, d, r, B.nnz()) > 0) {
    CHECK_THROWS_AS(lori::cuda::grad_b_sddmm<T>(ctx, cview(dG, n, d), dH.data(), 1.0f, B, o1.data(), nullptr, 0),
                    lori::error);
  }
}

// ---- skinny tensor-core SDDMM kernels (lori/detail/skinny_gemm.cuh), called directly ----------------
// The public path above reaches them only at aligned shapes; here every knob is forced: the token
// split count (cap 1, 3, 8: 1 block, a non-power-of-two cluster, the full cluster), tails of the
// 64-token stages and 128-column tiles, r = 1, 4, 8, 12, 28, 31, 32, TMA loads and cp.async loads
// (16-byte H staging when r % 4 == 0 and H is 16-byte aligned, else 4-byte), padded leading
// dimensions, both L2 policies. Bound as in the file header with u_I = u_T (H is rounded to T).
// Every configuration runs twice and must be bit-identical (fixed cluster-rank summation order).
namespace {
template <class T>
void skinny_sddmm_case(lori::cuda::context& ctx, index_t n, index_t d, index_t r, index_t pad, bool h_misaligned,
                       int cap, std::mt19937_64& g, bool evict_first = true, int ws = 0) {
  CAPTURE(ws);
  CAPTURE(evict_first);
  CAPTURE(n);
  CAPTURE(d);
  CAPTURE(r);
  CAPTURE(pad);
  CAPTURE(h_misaligned);
  CAPTURE(cap);
  INFO("type " << type_name<T>());
  const double s = 0.75;
  const index_t ldg = d + pad;
  const auto G = random_mat<T>(n, d, 1.0, g, ldg);
  const index_t h0 = h_misaligned ? 1 : 0;
  std::vector<float> H(static_cast<std::size_t>(n * r + h0), std::nanf(""));
  std::normal_distribution<double> nd;
  for (std::size_t i = static_cast<std::size_t>(h0); i < H.size(); ++i) H[i] = static_cast<float>(nd(g));
  const auto hb = random_sparse<T>(d, r, 0.1, 1.0, g);
  const auto B = lori::cuda::sparse_b<T>::from_host(hb.mask, hb.packed);
  const auto csr = hb.mask.template to_csr<std::int32_t>();
  // Reference from the fp32 H; the kernel's rounding of H to T is the intermediate rounding u_I = u_T.
  std::vector<double> ref(static_cast<std::size_t>(B.nnz())), l2(ref.size());
  for (index_t i = 0; i < d; ++i)
    for (std::int32_t p = csr.row_ptr[static_cast<std::size_t>(i)]; p < csr.row_ptr[static_cast<std::size_t>(i + 1)]; ++p) {
      const index_t j = csr.col_idx[static_cast<std::size_t>(p)];
      double acc = 0, q = 0;
      for (index_t t = 0; t < n; ++t) {
        const double v = s * G(t, i) * static_cast<double>(H[static_cast<std::size_t>(h0 + t * r + j)]);
        acc += v;
        q += v * v;
      }
      ref[static_cast<std::size_t>(p)] = acc;
      l2[static_cast<std::size_t>(p)] = std::sqrt(q);
    }
  device_buffer<T> dG(G.s);
  device_buffer<float> dH(H);
  REQUIRE(lori::detail::skinny::sddmm_applies(dG.data(), d, ldg, r));
  std::vector<T> first;
  for (int run = 0; run < 2; ++run) {
    device_buffer<T> out(B.nnz() + 1);  // one extra element: must stay poisoned
    out.fill_bytes(0xff);
    if (ws > 0) {  // the warp-specialised kernel with ws ring stages
      REQUIRE(lori::detail::skinny::sddmm_tma_applies(dG.data(), d, ldg, r, dH.data() + h0));
      if (ws == 4)
        lori::detail::skinny::launch_sddmm_ws<T, 4>(ctx.stream(), dG.data(), n, d, ldg, dH.data() + h0,
                                                    static_cast<float>(s), B, out.data(), cap, evict_first);
      else
        lori::detail::skinny::launch_sddmm_ws<T, 8>(ctx.stream(), dG.data(), n, d, ldg, dH.data() + h0,
                                                    static_cast<float>(s), B, out.data(), cap, evict_first);
    } else {
      lori::detail::skinny::launch_sddmm<T>(ctx.stream(), dG.data(), n, d, ldg, dH.data() + h0,
                                            static_cast<float>(s), B, out.data(), cap);
    }
    LORI_CUDA_CHECK(cudaDeviceSynchronize());
    auto got = out.download();
    CHECK(is_poison(got.back()));
    got.pop_back();
    if (run == 0) {
      LORI_CHECK_CLOSE(check_close<T>(got, ref, l2, unit_roundoff<T>(), static_cast<double>(n)));
      first = got;
    } else {
      CHECK(std::memcmp(first.data(), got.data(), got.size() * sizeof(T)) == 0);
    }
  }
}
}  // namespace

TEST_CASE_TEMPLATE("skinny SDDMM kernel at the benchmark shape matches the double reference", T, lori::bfloat16,
                   lori::half) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(313);
  lori::cuda::context ctx;
  skinny_sddmm_case<T>(ctx, 4096, 4096, 32, 0, false, 8, g);  // grad_b_sddmm at n = d = 4096
}

TEST_CASE_TEMPLATE("skinny SDDMM kernel: masked s·Gᵀ·T(H) into compact values matches the double reference", T,
                   lori::bfloat16, lori::half) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(312);
  lori::cuda::context ctx;
  for (int cap : {1, 3, 8}) {
    skinny_sddmm_case<T>(ctx, 1000, 520, 32, 8, false, cap, g);  // token tail (1000 = 15·64 + 40), column tail
    skinny_sddmm_case<T>(ctx, 333, 136, 31, 0, false, cap, g);   // 4-byte H path
  }
  skinny_sddmm_case<T>(ctx, 64, 96, 1, 8, false, 8, g);
  skinny_sddmm_case<T>(ctx, 1, 256, 8, 0, false, 8, g);
  skinny_sddmm_case<T>(ctx, 700, 384, 12, 0, true, 8, g);   // H misaligned: 4-byte path with r % 4 == 0
  skinny_sddmm_case<T>(ctx, 2048, 1024, 12, 0, false, 8, g);  // 16-byte H path, r < 32
  device_buffer<T> buf(64 * 72 + 1);
  CHECK_FALSE(lori::detail::skinny::sddmm_applies(buf.data() + 1, index_t{64}, index_t{72}, index_t{8}));
  CHECK_FALSE(lori::detail::skinny::sddmm_applies(buf.data(), index_t{60}, index_t{60}, index_t{8}));
  CHECK_FALSE(lori::detail::skinny::sddmm_applies(buf.data(), index_t{64}, index_t{64}, index_t{33}));
}

// A few small launches of the cp.async SDDMM kernel (clusters of 1 and 3, tails, 16- and 4-byte H
// staging) for compute-sanitizer.
TEST_CASE("skinny kernels: small shapes (the compute-sanitizer subset)") {
  LORI_TEST_SEED_INFO();
  using T = lori::bfloat16;
  auto g = lori_test::rng(314);
  lori::cuda::context ctx;
  skinny_sddmm_case<T>(ctx, 150, 136, 32, 8, false, 3, g);
  skinny_sddmm_case<T>(ctx, 70, 64, 12, 0, true, 8, g);
  skinny_sddmm_case<T>(ctx, 10, 40, 1, 0, false, 1, g);
}

// The warp-specialised SDDMM (TMA producer warp, full/empty mbarrier ring of 8 or 4 stages, H
// rounded to T in registers, CSR rows prefetched into shared memory, two token halves + cluster
// ranks summed in a fixed order): the benchmark shapes n = 4096 and 16384, token tails (n not a
// multiple of the 64-token stage or of the split), column tails (d not a multiple of the 128-column
// tile), r = 4 … 32, padded G rows, split caps 1, 3, 8 (and the one-wave choice), both L2 policies;
// every configuration twice, bit-identical. Same bound as above (u_I = u_T: H rounded to T).
TEST_CASE_TEMPLATE("skinny SDDMM kernel, warp-specialised: shapes, tails, splits, determinism", T, lori::bfloat16,
                   lori::half) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(318);
  lori::cuda::context ctx;
  skinny_sddmm_case<T>(ctx, 4096, 4096, 32, 0, false, 8, g, true, 8);   // the benchmark shape n = d = 4096
  skinny_sddmm_case<T>(ctx, 4097, 4104, 32, 8, false, 8, g, true, 8);   // one token and 8 columns past
  for (int cap : {1, 3, 8}) {
    skinny_sddmm_case<T>(ctx, 1000, 520, 32, 8, false, cap, g, true, 8);  // token and column tails
    skinny_sddmm_case<T>(ctx, 333, 136, 28, 0, false, cap, g, true, 8);
  }
  skinny_sddmm_case<T>(ctx, 64, 96, 4, 8, false, 8, g, true, 8);
  skinny_sddmm_case<T>(ctx, 1, 256, 8, 0, false, 8, g, true, 8);
  skinny_sddmm_case<T>(ctx, 2048, 1024, 12, 0, false, 8, g, true, 8);
  skinny_sddmm_case<T>(ctx, 1000, 520, 32, 8, false, 8, g, false, 8);  // evict-normal policy
  skinny_sddmm_case<T>(ctx, 4096, 4096, 32, 0, false, 8, g, true, 4);  // 4-stage ring, two blocks per SM
  skinny_sddmm_case<T>(ctx, 1000, 520, 20, 8, false, 3, g, true, 4);
}

TEST_CASE("skinny SDDMM kernel, warp-specialised: n = 16384 (grad_b_sddmm's large benchmark shape)") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(319);
  lori::cuda::context ctx;
  skinny_sddmm_case<lori::bfloat16>(ctx, 16384, 4096, 32, 0, false, 8, g, true, 8);
}

// Small launches of the warp-specialised kernel for compute-sanitizer: clusters of 1 and 3, tails, 4
// and 8 stages (more stages than steps), both L2 policies.
TEST_CASE("skinny kernels: warp-specialised, small shapes (the compute-sanitizer subset)") {
  LORI_TEST_SEED_INFO();
  using T = lori::bfloat16;
  auto g = lori_test::rng(317);
  lori::cuda::context ctx;
  skinny_sddmm_case<T>(ctx, 150, 136, 32, 8, false, 3, g, true, 8);
  skinny_sddmm_case<T>(ctx, 700, 264, 12, 0, false, 1, g, false, 8);
  skinny_sddmm_case<T>(ctx, 600, 136, 32, 0, false, 3, g, true, 4);
}

TEST_CASE_TEMPLATE("grad_x = G·W + s·(G·B)·A matches the double reference", T, float, lori::bfloat16, lori::half) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(404);
  lori::cuda::context ctx;
  grad_x_case<T>(ctx, 1, 64, 96, 16, g);
  grad_x_case<T>(ctx, 3, 129, 77, 8, g);
  grad_x_case<T>(ctx, 65, 100, 203, 32, g);
  grad_x_case<T>(ctx, 256, 256, 256, 32, g);
  lori::cuda::device_buffer<T> z(4);
  const auto hb = random_sparse<T>(4, 2, 0.5, 1.0, g);
  const auto B = lori::cuda::sparse_b<T>::from_host(hb.mask, hb.packed);
  CHECK_THROWS_AS(lori::cuda::grad_x<T>(ctx, cview(z, 1, 4), cview(z, 4, 1), cview(z, 2, 2), B, 1.0f, mview(z, 1, 1),
                                        nullptr, 0),
                  lori::error);  // A is 2 x 2 but must be r x k = 2 x 1
}

// =====================================================================================================
TEST_CASE_TEMPLATE("adamw_step and sgd_step: one fused launch over many tensors matches torch's rule", T, float,
                   lori::bfloat16, lori::half) {
  LORI_TEST_SEED_INFO();
  INFO("type " << type_name<T>());
  auto g = lori_test::rng(505);
  lori::cuda::context ctx;
  // Sizes: empty, tiny, odd, exactly one chunk, more than one chunk.
  // The last tensor starts one element into its buffers: misaligned for the 2-element vector path,
  // so the kernel's scalar path runs too (and element 0 must stay untouched).
  const std::vector<index_t> sizes = {0, 1, 3, 4095, 4096, 4097, 10000, 257, 1001};
  const std::vector<index_t> offs = {0, 0, 0, 0, 0, 0, 0, 0, 1};
  std::normal_distribution<double> nd;
  std::vector<host_mat<T>> P, Gr;
  std::vector<std::vector<float>> M, V;
  std::vector<device_buffer<T>> dP, dG;
  std::vector<device_buffer<float>> dM, dV;
  std::vector<lori::cuda::optim_tensor<T>> tensors;
  for (const index_t n : sizes) {
    P.push_back(random_mat<T>(1, n, 1.0, g));
    Gr.push_back(random_mat<T>(1, n, 0.1, g));
    std::vector<float> m(static_cast<std::size_t>(n)), v(static_cast<std::size_t>(n));
    for (auto& x : m) x = static_cast<float>(0.05 * nd(g));
    for (auto& x : v) x = static_cast<float>(0.01 * std::fabs(nd(g)));
    M.push_back(m);
    V.push_back(v);
  }
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    dP.emplace_back(P[i].s);
    dG.emplace_back(Gr[i].s);
    dM.emplace_back(M[i]);
    dV.emplace_back(V[i]);
  }
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    const index_t o = offs[i];
    tensors.push_back({dP[i].data() + o, dG[i].data() + o, dM[i].data() + o, dV[i].data() + o, sizes[i] - o});
  }
  const lori::cuda::multi_tensor_plan<T> plan(tensors);
  index_t expect_chunks = 0;
  for (std::size_t i = 0; i < sizes.size(); ++i) expect_chunks += (sizes[i] - offs[i] + 4095) / 4096;
  CHECK(plan.chunks() == expect_chunks);

  const double u = unit_roundoff<T>(), u32 = std::ldexp(1.0, -24);
  // fp16 values below 2^-14 are subnormal: rounding error up to half their spacing, 2^-25, absolute.
  const double sub = std::is_same_v<T, lori::half> ? std::ldexp(1.0, -25) : 0.0;
  for (const std::int64_t step : {std::int64_t{1}, std::int64_t{7}, std::int64_t{1000}}) {
    CAPTURE(step);
    lori::cuda::adamw_params hp;
    hp.lr = 1e-2f;
    hp.weight_decay = 0.1f;
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      dP[i].upload(P[i].s);
      dM[i].upload(M[i]);
      dV[i].upload(V[i]);
    }
    lori::cuda::adamw_step<T>(ctx, plan, hp, step);
    index_t bad = 0;
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      const auto p = dP[i].download();
      const auto m = dM[i].download();
      const auto v = dV[i].download();
      const double b1 = hp.beta1, b2 = hp.beta2, lr = hp.lr, wd = hp.weight_decay, eps = hp.eps;
      const double bc1 = 1 - std::pow(b1, static_cast<double>(step)), bc2 = 1 - std::pow(b2, static_cast<double>(step));
      for (index_t e = 0; e < offs[i]; ++e) {  // outside the tensor: untouched
        const auto ei = static_cast<std::size_t>(e);
        bad += std::memcmp(&p[ei], &P[i].s[ei], sizeof(T)) != 0 || m[ei] != M[i][ei] || v[ei] != V[i][ei];
      }
      for (index_t e = offs[i]; e < sizes[i]; ++e) {
        const auto ei = static_cast<std::size_t>(e);
        const double gg = Gr[i].d[ei], p0 = P[i].d[ei] * (1 - lr * wd);
        const double mr = b1 * M[i][ei] + (1 - b1) * gg;
        const double vr = b2 * V[i][ei] + (1 - b2) * gg * gg;
        const double upd = (lr / bc1) * mr / (std::sqrt(vr) / std::sqrt(bc2) + eps);
        const double pr = p0 - upd;
        // p: final rounding to T plus a few fp32 roundings of each part; m, v: fp32 roundings.
        bad += !(std::fabs(lori::to_float(p[ei]) - pr) <= 2 * u * std::fabs(pr) + 16 * u32 * (std::fabs(p0) + std::fabs(upd)) + sub);
        bad += !(std::fabs(m[ei] - mr) <= 4 * u32 * (std::fabs(b1 * M[i][ei]) + std::fabs((1 - b1) * gg)));
        bad += !(std::fabs(v[ei] - vr) <= 4 * u32 * (b2 * V[i][ei] + (1 - b2) * gg * gg));
      }
    }
    CHECK(bad == 0);
  }
  // SGD with weight decay on the same plan.
  for (std::size_t i = 0; i < sizes.size(); ++i) dP[i].upload(P[i].s);
  const double lr = 0.05, wd = 0.01;
  lori::cuda::sgd_step<T>(ctx, plan, static_cast<float>(lr), static_cast<float>(wd));
  index_t bad = 0;
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    const auto p = dP[i].download();
    for (index_t e = 0; e < offs[i]; ++e) bad += std::memcmp(&p[static_cast<std::size_t>(e)], &P[i].s[static_cast<std::size_t>(e)], sizeof(T)) != 0;
    for (index_t e = offs[i]; e < sizes[i]; ++e) {
      const auto ei = static_cast<std::size_t>(e);
      const double p0 = P[i].d[ei], gg = Gr[i].d[ei];
      const double pr = p0 - lr * (gg + wd * p0);
      bad += !(std::fabs(lori::to_float(p[ei]) - pr) <= 2 * u * std::fabs(pr) + 8 * u32 * (std::fabs(p0) + lr * std::fabs(gg)) + sub);
    }
  }
  CHECK(bad == 0);
  CHECK_THROWS_AS(lori::cuda::adamw_step<T>(ctx, plan, lori::cuda::adamw_params{}, 0), lori::error);
  const lori::cuda::multi_tensor_plan<T> sgd_only({{dP[1].data(), dG[1].data(), nullptr, nullptr, 1}}, false);
  CHECK_THROWS_AS(lori::cuda::adamw_step<T>(ctx, sgd_only, lori::cuda::adamw_params{}, 1), lori::error);
  CHECK_THROWS_AS(lori::cuda::multi_tensor_plan<T>({{dP[1].data(), dG[1].data(), nullptr, nullptr, 1}}), lori::error);
}

// =====================================================================================================
namespace {
// Layout options of one merge case: pad_w > 0 gives W a leading dimension k + pad_w (the padding must
// come back untouched); pad_ops gives every A and dense B an odd leading dimension (unaligned rows).
struct merge_layout {
  index_t pad_w = 0;
  bool pad_ops = false;
  index_t offset_w = 0;    // W starts this many elements into its buffer (odd: not 16-byte aligned)
  int expect_stream = -1;  // 1 / 0: the case must (not) take the streaming kernel; -1: either
  int probe = 0;           // != 0: run detail_merge::merge_stream_route with these probe bits (e.g. no PDL)
                           // where the streaming kernel applies, instead of merge_into
  double density0 = 0.1;   // kept fraction of the first adapter's mask when sparse (the others: 0.1)
};

template <class T>
void merge_case(lori::cuda::context& ctx, index_t d, index_t k, const std::vector<index_t>& ranks,
                const std::vector<bool>& sparse, const std::vector<double>& scales, std::mt19937_64& g,
                merge_layout lay = {}) {
  CAPTURE(d);
  CAPTURE(k);
  CAPTURE(lay.pad_w);
  CAPTURE(lay.pad_ops);
  INFO("type " << type_name<T>() << ", adapters " << ranks.size());
  const index_t ldw = k + lay.pad_w;
  const auto W = random_mat<T>(d, k, 1.0, g, ldw);
  std::vector<host_mat<T>> As, Bd;
  std::vector<host_sparse<T>> Bs;
  std::vector<device_buffer<T>> dA, dB;
  std::vector<lori::cuda::sparse_b<T>> sB;
  sB.reserve(ranks.size());
  for (std::size_t t = 0; t < ranks.size(); ++t) {
    const index_t r = ranks[t];
    As.push_back(random_mat<T>(r, k, 1.0 / std::sqrt(static_cast<double>(r)), g, lay.pad_ops ? k + 3 : k));
    Bd.push_back(random_mat<T>(d, r, 1.0, g, lay.pad_ops ? r + 1 : r));
    Bs.push_back(random_sparse<T>(d, r, t == 0 ? lay.density0 : 0.1, 1.0, g));
    dA.emplace_back(As.back().s);
    dB.emplace_back(Bd.back().s);
    sB.push_back(lori::cuda::sparse_b<T>::from_host(Bs.back().mask, Bs.back().packed));
  }
  std::vector<lori::cuda::merge_source<T>> src;
  for (std::size_t t = 0; t < ranks.size(); ++t) {
    lori::cuda::merge_source<T> m;
    m.scale = static_cast<float>(scales[t]);
    m.A = cview(dA[t], ranks[t], k, As[t].ld);
    if (sparse[t]) m.B_sparse = &sB[t];
    else m.B_dense = cview(dB[t], d, ranks[t], Bd[t].ld);
    src.push_back(m);
  }
  // Reference in double: ref = W + Σ_t Σ_j (s_t·B_t(i, j))·A_t(j, :), row by row (zero terms skipped);
  // l2 = sqrt(W² + Σ of the squared terms).
  std::vector<double> ref(static_cast<std::size_t>(d * k)), l2(ref.size());
  for (index_t i = 0; i < d; ++i) {
    double* w = ref.data() + i * k;
    double* q = l2.data() + i * k;
    for (index_t c = 0; c < k; ++c) {
      w[c] = W(i, c);
      q[c] = w[c] * w[c];
    }
    for (std::size_t t = 0; t < ranks.size(); ++t)
      for (index_t j = 0; j < ranks[t]; ++j) {
        const double sb = static_cast<double>(static_cast<float>(scales[t])) * (sparse[t] ? Bs[t](i, j) : Bd[t](i, j));
        if (sb == 0.0) continue;
        const double* a = As[t].d.data() + j * As[t].ld;
        for (index_t c = 0; c < k; ++c) {
          const double v = sb * a[c];
          w[c] += v;
          q[c] += v * v;
        }
      }
    for (index_t c = 0; c < k; ++c) q[c] = std::sqrt(q[c]);
  }
  index_t R = 0;
  for (const index_t r : ranks) R += r;
  // Runs merge_into on a fresh copy of W (at element offset lay.offset_w of its buffer) and checks every
  // element of W, its padding and the elements before it.
  const std::size_t off = static_cast<std::size_t>(lay.offset_w);
  std::vector<T> wbuf(off + W.s.size());
  for (std::size_t i = 0; i < off; ++i) wbuf[i] = W.s[i % W.s.size()];
  std::copy(W.s.begin(), W.s.end(), wbuf.begin() + static_cast<std::ptrdiff_t>(off));
  device_buffer<T> dW(wbuf);
  const lori::row_major_view<T> wv(dW.data() + off, d, k, ldw);
  const bool stream = lori::cuda::detail_merge::stream_kernel_applies(wv, src);
  if (lay.expect_stream >= 0) CHECK(stream == (lay.expect_stream == 1));
  INFO("path " << (stream ? "streaming kernel" : "cuBLAS"));
  // Error models. Streaming kernel (16-bit W): products exact in fp32, fp32 tensor-core accumulation per
  // scale segment (tc_slack covers truncating accumulation), s·acc one fp32 rounding, W + delta rounded
  // ONCE to T: the tight bound with u_I = tc_slack. cuBLAS route, 16-bit W: its 16-bit-output epilogue
  // forms alpha*(B·A) in T before adding beta*W, i.e. one rounding of the delta in T (the same model the
  // beta = 1 layer_forward checks use above); the first H100 run showed exactly that (errors 17.9x
  // (bf16) and 2.7x (fp16) over a bound assuming fp32 accumulation end to end). fp32 keeps the tight bound.
  const double ui = stream || std::is_same_v<T, float> ? tc_slack<T>() : unit_roundoff<T>();
  const std::size_t need = lori::cuda::merge_workspace_bytes<T>(d, k, src);
  device_buffer<unsigned char> ws(static_cast<index_t>(need) + 1);
  ws.fill_bytes(0xff);
  bool routed = false;
  if constexpr (!std::is_same_v<T, float>) {  // the streaming route exists for 16-bit W only
    if (lay.probe != 0 && stream) {
      lori::cuda::detail_merge::merge_stream_route<T>(ctx, wv, src, ws.data(), lay.probe);
      routed = true;
    }
  }
  if (!routed) lori::cuda::merge_into<T>(ctx, wv, src, ws.data(), ws.bytes());
  const auto all = dW.download();
  const std::vector<T> got(all.begin() + static_cast<std::ptrdiff_t>(off), all.end());
  LORI_CHECK_CLOSE(check_close<T>(compact(got, d, k, ldw), ref, l2, ui, static_cast<double>(R)));
  index_t pad_changed = 0;  // read-modify-write must leave the padding of W and what precedes W alone
  for (index_t i = 0; i < d; ++i)
    for (index_t c = k; c < ldw; ++c)
      pad_changed += std::memcmp(&got[static_cast<std::size_t>(i * ldw + c)], &W.s[static_cast<std::size_t>(i * ldw + c)], sizeof(T)) != 0;
  for (std::size_t i = 0; i < off; ++i) pad_changed += std::memcmp(&all[i], &wbuf[i], sizeof(T)) != 0;
  CHECK(pad_changed == 0);
}
}  // namespace

TEST_CASE_TEMPLATE("merge_into: odd shapes, W += Σ s·B·A in one pass, dense and sparse B, matches the double reference", T, float,
                   lori::bfloat16, lori::half) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(606);
  lori::cuda::context ctx;
  merge_case<T>(ctx, 448, 256, {32, 32, 32, 32}, {true, true, false, true}, {0.5, 0.5, 0.5, 0.5}, g);
  merge_case<T>(ctx, 77, 129, {8, 16}, {false, true}, {0.3, -1.7}, g);
  merge_case<T>(ctx, 1, 1, {1}, {false}, {2.0}, g);
  merge_case<T>(ctx, 300, 203, {32}, {true}, {1.0}, g);
  // T = 8 with unequal scales, ranks not multiples of 16 (odd pack offsets and GEMM depth 181).
  merge_case<T>(ctx, 129, 72, {5, 16, 17, 31, 32, 1, 40, 8}, {false, true, false, true, false, true, true, false},
                {0.25, -0.5, 1.5, 0.75, -1.25, 3.0, 0.125, 2.0}, g);
  // Padded leading dimensions: W aligned (ld = k + 8) and unaligned (odd ld), operands unaligned.
  merge_case<T>(ctx, 200, 136, {32, 24}, {false, true}, {0.5, -0.75}, g, {8, false});
  merge_case<T>(ctx, 131, 70, {16, 3}, {false, false}, {1.0, 1.0}, g, {5, true});
  // Total rank 169 (> 128) over four mixed adapters.
  merge_case<T>(ctx, 260, 100, {48, 48, 40, 33}, {false, true, false, true}, {0.5, 0.25, -0.5, 1.0}, g);
  // Large ranks (1100 in total) and a sparse B with 8 mask words per row.
  merge_case<T>(ctx, 33, 40, {600, 500}, {false, true}, {0.5, -0.25}, g);
  {  // 17 adapters: more than one pack launch (16 per launch), mixed dense/sparse, unequal scales
    std::vector<index_t> ranks;
    std::vector<bool> sparse;
    std::vector<double> scales;
    for (int t = 0; t < 17; ++t) {
      ranks.push_back(1 + t % 3);
      sparse.push_back(t % 2 == 0);
      scales.push_back(0.25 * (t + 1));
    }
    merge_case<T>(ctx, 40, 24, ranks, sparse, scales, g);
  }
  lori::cuda::device_buffer<T> z(16);
  std::vector<lori::cuda::merge_source<T>> bad(1);
  bad[0].A = cview(z, 2, 4);
  bad[0].B_dense = cview(z, 4, 3);  // rank 3 but A has 2 rows
  CHECK_THROWS_AS(lori::cuda::merge_into<T>(ctx, mview(z, 4, 4), bad, nullptr, 0), lori::error);
  if constexpr (std::is_same_v<T, float>) {  // the fp32 path needs its workspace
    std::vector<lori::cuda::merge_source<T>> one(1);
    one[0].A = cview(z, 2, 4);
    one[0].B_dense = cview(z, 4, 2);
    CHECK_THROWS_AS(lori::cuda::merge_into<T>(ctx, mview(z, 4, 4), one, nullptr, 0), lori::error);
  }
}

TEST_CASE_TEMPLATE("merge_into: large shapes, matches the double reference", T,
                   float, lori::bfloat16, lori::half) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(607);
  lori::cuda::context ctx;
  // Larger W (6000 x 1000, 4100 x 520: cuBLAS tiles with ragged edges), per-adapter scales with mixed
  // dense/sparse B, then equal scales (the GEMM's alpha) with sparse B.
  merge_case<T>(ctx, 6000, 1000, {32, 32}, {false, true}, {0.5, 0.75}, g);
  merge_case<T>(ctx, 4100, 520, {32, 32, 32, 32}, {true, true, true, true}, {0.5, 0.5, 0.5, 0.5}, g);
}

// The streaming tensor-core route of merge_into (16-bit W, 16-byte rows, padded depth <= 128): partial
// tiles in both directions, ranks 1..48, T = 1..8, scale segments (equal neighbours share one), depth
// exactly 128 over eight segments, padded and offset W; and the cases that must fall back to cuBLAS
// (deeper sums, zero or far-apart scales, unaligned W or leading dimension, fp32).
TEST_CASE_TEMPLATE("merge_into: streaming kernel, odd shapes and its fallbacks, matches the double reference", T,
                   float, lori::bfloat16, lori::half) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(608);
  lori::cuda::context ctx;
  const int on = std::is_same_v<T, float> ? 0 : 1;  // fp32 W always takes cuBLAS
  merge_case<T>(ctx, 77, 136, {1}, {false}, {0.75}, g, {0, false, 0, on});
  merge_case<T>(ctx, 129, 128, {32, 32, 32}, {false, true, false}, {0.5, 0.5, -0.25}, g, {0, false, 0, on});
  // Eight scale segments, each padded to 16: depth exactly 128 (the kernel's limit), unaligned operands.
  merge_case<T>(ctx, 300, 200, {1, 2, 3, 5, 8, 13, 16, 4}, {false, true, false, true, false, true, true, false},
                {0.25, -0.5, 1.5, 0.75, -1.25, 3.0, 0.125, 2.0}, g, {0, true, 0, on});
  // Equal scales: one segment of depth 121 -> 128; then mixed: segments 32 + 48 + 16.
  merge_case<T>(ctx, 260, 264, {48, 40, 33}, {false, true, false}, {0.5, 0.5, 0.5}, g, {0, false, 0, on});
  merge_case<T>(ctx, 133, 384, {17, 9, 31, 10}, {true, false, false, true}, {0.75, -0.5, -0.5, 2.0}, g, {0, false, 0, on});
  // W with a leading dimension k + 8 (16-byte rows) and W 8 elements into its buffer: still the kernel.
  merge_case<T>(ctx, 200, 136, {32, 24}, {false, true}, {0.5, -0.75}, g, {8, false, 8, on});
  // Scales 2^20 apart: the kernel's running rescale (acc *= s_j / s_j+1) at its widest common use.
  merge_case<T>(ctx, 100, 96, {8, 8, 8}, {false, true, false}, {std::ldexp(1.0, -12), std::ldexp(1.0, 8), -0.5}, g,
                {0, false, 0, on});
  // A sparse B_t of rank 72 (two mask words per row: the tiled pack's sparse chunks past the first word).
  merge_case<T>(ctx, 90, 136, {72, 24}, {true, false}, {0.5, -1.0}, g, {0, false, 0, on});
  // Fallbacks: padded depth > 128 (208 over eight segments; 176 in one), a zero scale and scales 2^33
  // apart (cuBLAS), leading dimension k + 4, W one element into its buffer, depth 1104, k % 8 != 0.
  merge_case<T>(ctx, 150, 72, {5, 16, 17, 31, 32, 1, 40, 8}, {false, true, false, true, false, true, true, false},
                {0.25, -0.5, 1.5, 0.75, -1.25, 3.0, 0.125, 2.0}, g, {0, false, 0, 0});
  merge_case<T>(ctx, 96, 136, {48, 48, 40, 33}, {false, true, false, true}, {0.5, 0.5, 0.5, 0.5}, g, {0, false, 0, 0});
  merge_case<T>(ctx, 64, 64, {8, 8}, {false, false}, {0.0, 0.5}, g, {0, false, 0, 0});
  merge_case<T>(ctx, 64, 64, {8, 8}, {false, true}, {std::ldexp(1.0, -22), std::ldexp(1.0, 11)}, g, {0, false, 0, 0});
  merge_case<T>(ctx, 70, 64, {16, 8}, {true, false}, {1.0, 0.5}, g, {4, false, 0, 0});
  merge_case<T>(ctx, 64, 64, {32}, {false}, {0.5}, g, {0, false, 1, 0});
  merge_case<T>(ctx, 40, 48, {600, 504}, {false, true}, {0.5, -0.25}, g, {0, false, 0, 0});
  merge_case<T>(ctx, 50, 60, {8}, {false}, {0.5}, g, {0, false, 0, 0});
}

TEST_CASE_TEMPLATE("merge_into: streaming kernel, large shapes (several tiles per block), matches the double reference", T,
                   lori::bfloat16, lori::half) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(609);
  lori::cuda::context ctx;
  // 1100 x 4096 (9 bands x 32 column tiles: 2-3 tiles per block, band changes inside a block's run),
  // four rank-32 adapters as in the benchmark: dense with unequal scales, then sparse with equal ones.
  merge_case<T>(ctx, 1100, 4096, {32, 32, 32, 32}, {false, false, false, false}, {0.5, 0.75, 1.0, 1.25}, g, {0, false, 0, 1});
  merge_case<T>(ctx, 700, 4096, {32, 32, 32, 32}, {true, true, true, true}, {0.5, 0.5, 0.5, 0.5}, g, {0, false, 0, 1});
  // Three scale segments (32 + 32 + 48) with mixed B over 1100 x 2048.
  merge_case<T>(ctx, 1100, 2048, {32, 24, 40}, {false, true, false}, {0.5, 0.25, -0.5}, g, {0, false, 0, 1});
}

// The tiled pack (pack_tiled_kernel) across launches: 20 adapters of ranks 1..3 with one scale (depth 40
// -> 48) need two pack launches (16 + 4 sources) whose column ranges meet inside a 16-byte chunk (column
// 31); mixed dense / sparse B, unaligned operands; then the kernel launched without PDL.
TEST_CASE_TEMPLATE("merge_into: streaming kernel, tiled pack across launches and without PDL, matches the double reference", T,
                   lori::bfloat16, lori::half) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(611);
  lori::cuda::context ctx;
  std::vector<index_t> ranks;
  std::vector<bool> sparse;
  std::vector<double> scales;
  for (int t = 0; t < 20; ++t) {
    ranks.push_back(1 + t % 3);
    sparse.push_back(t % 3 == 1);
    scales.push_back(0.75);
  }
  merge_case<T>(ctx, 150, 264, ranks, sparse, scales, g, {0, false, 0, 1});
  merge_case<T>(ctx, 70, 200, ranks, sparse, scales, g, {0, true, 0, 1});
  merge_case<T>(ctx, 150, 264, ranks, sparse, scales, g, {0, false, 0, 1, lori::cuda::detail_merge::probe_no_pdl});
  merge_case<T>(ctx, 1100, 2048, {32, 24, 40}, {false, true, false}, {0.5, 0.25, -0.5}, g,
                {0, false, 0, 1, lori::cuda::detail_merge::probe_no_pdl});
}

// LoRI-S adapters (every B sparse) on the routes that merge them (streaming kernel or cuBLAS, each check
// names its route): partial column tiles (k = 8, 264, 520, 1032), fewer rows than a tile (d = 1, 7, 9),
// ranks 1..128 (two mask words), T = 1..20 and 33, unequal, zero and 2^20-apart scales, padded and offset
// W, unaligned A, an empty adapter, rows without any entry, rows with ~58 entries (density 0.9), a sparse
// B next to a dense one, W leading dimension k + 4 or W one element in. (Kept from session 6's sparse
// CUDA-core route, which was dropped: see docs/cuda.md.)
TEST_CASE_TEMPLATE("merge_into: LoRI-S adapters (sparse B), edge cases, matches the double reference", T, lori::bfloat16,
                   lori::half) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(612);
  lori::cuda::context ctx;
  merge_case<T>(ctx, 1, 8, {1}, {true}, {2.0}, g);
  merge_case<T>(ctx, 9, 8, {5}, {true}, {0.5}, g);
  merge_case<T>(ctx, 7, 520, {1, 17, 33}, {true, true, true}, {0.5, -1.5, 0.25}, g);
  merge_case<T>(ctx, 300, 264, {32, 24}, {true, true}, {0.5, -0.75}, g, {8, false, 8, -1, 0, 0.1});
  // Scales 2^20 apart and a zero scale (results stay within fp16's range).
  merge_case<T>(ctx, 133, 384, {17, 9, 31, 10}, {true, true, true, true}, {std::ldexp(1.0, -12), 0.0, -0.5, std::ldexp(1.0, 8)},
                g);
  merge_case<T>(ctx, 260, 1024, {72, 56}, {true, true}, {0.5, -1.0}, g);
  merge_case<T>(ctx, 150, 136, {128}, {true}, {0.25}, g);
  merge_case<T>(ctx, 150, 72, {5, 16, 17, 31, 24, 1, 26, 8}, {true, true, true, true, true, true, true, true},
                {0.25, -0.5, 1.5, 0.75, -1.25, 3.0, 0.125, 2.0}, g);
  merge_case<T>(ctx, 70, 200, {16, 3}, {true, true}, {1.0, 1.0}, g, {0, true, 0, -1, 0, 0.1});  // unaligned A
  merge_case<T>(ctx, 2, 64, {8, 8}, {true, true}, {1.0, -2.0}, g, {0, false, 0, -1, 0, 0.0});   // empty adapter
  merge_case<T>(ctx, 300, 512, {32, 32}, {true, true}, {0.5, 0.75}, g, {0, false, 0, -1, 0, 0.0});
  merge_case<T>(ctx, 200, 264, {64, 32}, {true, true}, {0.5, -0.25}, g, {0, false, 0, -1, 0, 0.9});  // dense rows
  {  // 20 adapters of ranks 1..3, then 33
    std::vector<index_t> ranks;
    std::vector<bool> sparse;
    std::vector<double> scales;
    for (int t = 0; t < 20; ++t) {
      ranks.push_back(1 + t % 3);
      sparse.push_back(true);
      scales.push_back(0.25 * (t + 1));
    }
    merge_case<T>(ctx, 150, 264, ranks, sparse, scales, g);
    ranks.resize(33, 1);
    sparse.resize(33, true);
    scales.resize(33, 0.5);
    merge_case<T>(ctx, 40, 24, ranks, sparse, scales, g);
  }
  merge_case<T>(ctx, 64, 64, {32, 8}, {true, false}, {0.5, 0.5}, g);
  merge_case<T>(ctx, 70, 64, {16, 8}, {true, true}, {1.0, 0.5}, g, {4, false, 0, 0, 0, 0.1});
  merge_case<T>(ctx, 64, 64, {32}, {true}, {0.5}, g, {0, false, 1, 0, 0, 0.1});
  // Four rank-32 adapters over 1100 x 4096 (unequal scales) and two over 2000 x 1032 (a partial column tile).
  merge_case<T>(ctx, 1100, 4096, {32, 32, 32, 32}, {true, true, true, true}, {0.5, 0.75, 1.0, 1.25}, g, {0, false, 0, 1});
  merge_case<T>(ctx, 2000, 1032, {32, 32}, {true, true}, {0.5, 0.5}, g);
}

// The merge target's shape, 14336 x 4096 bf16 with four rank-32 adapters at unequal scales: 3584 tiles,
// 27-28 per block, so every ring slot's barrier phase wraps many times and each block crosses a band.
// W uniform in [-2, 2) (splitmix64: fast at 58.7 M elements).
template <class T>
std::vector<T> merge_target_w(index_t d, index_t k, std::mt19937_64& g) {
  std::vector<T> w(static_cast<std::size_t>(d * k));
  std::uint64_t z = g();
  for (auto& x : w) {
    z += 0x9E3779B97F4A7C15ull;
    std::uint64_t h = z;
    h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ull;
    h = (h ^ (h >> 27)) * 0x94D049BB133111EBull;
    h ^= h >> 31;
    x = lori::from_float<T>(static_cast<float>(static_cast<double>(h >> 40) * std::ldexp(1.0, -22) - 2.0));
  }
  return w;
}

// merge_into on a device copy of w through the streaming kernel (checked to apply), workspace poisoned;
// then checked against the double reference on sampled rows (every 61st, plus the first and last rows of
// several bands), and everywhere for writes: W + delta equals W (bitwise) only where |delta| is below half
// an ulp (~0.2 % of elements here), so a 32 x 32 block left unwritten (100 % unchanged) fails the per-block
// check (finer than the 128 x 128 tile). b(t, i, j) is adapter t's B entry (0 where not kept); skip_row0:
// row 0 of W is unchanged by design (empty in every mask) and is left out of the write check.
template <class T, class BEntry>
void merge_target_check(lori::cuda::context& ctx, const std::vector<T>& w, index_t d, index_t k, index_t r,
                        const std::vector<double>& scales, const std::vector<host_mat<T>>& As, BEntry b,
                        const std::vector<lori::cuda::merge_source<T>>& src, bool skip_row0) {
  device_buffer<T> dW(w);
  const auto wv = mview(dW, d, k);
  CHECK(lori::cuda::detail_merge::stream_kernel_applies(wv, src));
  device_buffer<unsigned char> ws(static_cast<index_t>(lori::cuda::merge_workspace_bytes<T>(d, k, src)));
  ws.fill_bytes(0xff);
  lori::cuda::merge_into<T>(ctx, wv, src, ws.data(), ws.bytes());
  const auto got = dW.download();
  std::vector<index_t> rows;
  for (index_t i = 0; i < d; i += 61) rows.push_back(i);
  for (const index_t band : {index_t{1}, index_t{47}, index_t{111}}) {
    rows.push_back(band * 128 - 1);
    rows.push_back(band * 128);
  }
  rows.push_back(d - 1);
  std::vector<T> got_rows;
  std::vector<double> ref, l2;
  for (const index_t i : rows) {
    for (index_t c = 0; c < k; ++c) {
      double v = static_cast<double>(lori::to_float(w[static_cast<std::size_t>(i * k + c)])), q = v * v;
      for (std::size_t t = 0; t < scales.size(); ++t)
        for (index_t j = 0; j < r; ++j) {
          const double term = static_cast<double>(static_cast<float>(scales[t])) * b(t, i, j) * As[t](j, c);
          v += term;
          q += term * term;
        }
      got_rows.push_back(got[static_cast<std::size_t>(i * k + c)]);
      ref.push_back(v);
      l2.push_back(std::sqrt(q));
    }
  }
  // Error model of the streaming kernel (see merge_case): the fp32-accumulation bound.
  LORI_CHECK_CLOSE(check_close<T>(got_rows, ref, l2, tc_slack<T>(), static_cast<double>(4 * r)));
  index_t bad_tiles = 0;
  for (index_t band = 0; band < d / 32; ++band)
    for (index_t ct = 0; ct < k / 32; ++ct) {
      index_t same = 0;
      for (index_t i = band * 32; i < band * 32 + 32; ++i)
        for (index_t c = ct * 32; c < ct * 32 + 32; ++c)
          same += (!skip_row0 || i > 0) &&
                  std::memcmp(&got[static_cast<std::size_t>(i * k + c)], &w[static_cast<std::size_t>(i * k + c)], sizeof(T)) == 0;
      bad_tiles += same > 32 * 32 / 2;
    }
  CHECK(bad_tiles == 0);
}

TEST_CASE("merge_into: streaming kernel at 14336 x 4096 (27 tiles per block), sampled rows against the double reference") {
  using T = lori::bfloat16;
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(610);
  lori::cuda::context ctx;
  const index_t d = 14336, k = 4096, r = 32;
  const std::vector<double> scales{0.5, 0.75, 1.0, 1.25};
  const std::vector<T> w = merge_target_w<T>(d, k, g);
  std::vector<host_mat<T>> As, Bs;
  std::vector<device_buffer<T>> dA, dB;
  std::vector<lori::cuda::merge_source<T>> src;
  for (std::size_t t = 0; t < scales.size(); ++t) {
    As.push_back(random_mat<T>(r, k, 1.0 / std::sqrt(static_cast<double>(r)), g));
    Bs.push_back(random_mat<T>(d, r, 1.0, g));
    dA.emplace_back(As.back().s);
    dB.emplace_back(Bs.back().s);
  }
  for (std::size_t t = 0; t < scales.size(); ++t) {
    lori::cuda::merge_source<T> m;
    m.scale = static_cast<float>(scales[t]);
    m.A = cview(dA[t], r, k);
    m.B_dense = cview(dB[t], d, r);
    src.push_back(m);
  }
  merge_target_check<T>(ctx, w, d, k, r, scales, As, [&](std::size_t t, index_t i, index_t j) { return static_cast<double>(Bs[t](i, j)); },
                        src, false);
}

// The same with LoRI-S adapters (90 % zeros): the streaming kernel's tiled pack at full size with sparse chunks.
TEST_CASE("merge_into: LoRI-S adapters at 14336 x 4096, sampled rows against the double reference") {
  using T = lori::bfloat16;
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(614);
  lori::cuda::context ctx;
  const index_t d = 14336, k = 4096, r = 32;
  const std::vector<double> scales{0.5, 0.75, 1.0, 1.25};
  const std::vector<T> w = merge_target_w<T>(d, k, g);
  std::vector<host_mat<T>> As;
  std::vector<host_sparse<T>> Bs;
  std::vector<device_buffer<T>> dA;
  std::vector<lori::cuda::sparse_b<T>> sB;
  sB.reserve(scales.size());
  std::vector<lori::cuda::merge_source<T>> src;
  for (std::size_t t = 0; t < scales.size(); ++t) {
    As.push_back(random_mat<T>(r, k, 1.0 / std::sqrt(static_cast<double>(r)), g));
    Bs.push_back(random_sparse<T>(d, r, 0.1, 1.0, g));
    dA.emplace_back(As.back().s);
    sB.push_back(lori::cuda::sparse_b<T>::from_host(Bs.back().mask, Bs.back().packed));
  }
  for (std::size_t t = 0; t < scales.size(); ++t) {
    lori::cuda::merge_source<T> m;
    m.scale = static_cast<float>(scales[t]);
    m.A = cview(dA[t], r, k);
    m.B_sparse = &sB[t];
    src.push_back(m);
  }
  merge_target_check<T>(ctx, w, d, k, r, scales, As, [&](std::size_t t, index_t i, index_t j) { return static_cast<double>(Bs[t](i, j)); },
                        src, true);
}
