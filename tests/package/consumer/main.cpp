#include <lori.hpp>

#include <cstdio>
#include <vector>

#if defined(CONSUMER_HAS_CUDA)
int consumer_cuda_check();
#endif

int main() {
  std::vector<float> buf = {1, 2, 3, 4, 5, 6};
  lori::row_major_view<float> v(buf.data(), 2, 3);
  lori::bitmask m(2, 3);
  m.set(1, 2);
  bool ok = v(1, 2) == 6.0f && m.count() == 1;
  try {
    lori::row_major_view<float>(buf.data(), -1, 3);
    ok = false;
  } catch (const lori::error&) {
  }
#if defined(CONSUMER_HAS_CUDA)
  ok = ok && consumer_cuda_check() == 1;
#endif
  std::printf(ok ? "consumer: ok\n" : "consumer: FAILED\n");
  return ok ? 0 : 1;
}
