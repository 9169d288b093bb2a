#include <lori/config.hpp>
#include <lori/core/float16.hpp>

static_assert(LORI_COMPILING_CUDA == 1, "nvcc must be detected");

__global__ void touch(float* out) { out[0] = lori::bf16_bits_to_float(lori::float_to_bf16_bits(1.0f)); }

// Host-only check: the kernel compiles and links against lori::cuda; it is not launched (CI has no GPU).
int consumer_cuda_check() {
  void (*k)(float*) = touch;
  return k != nullptr ? 1 : 0;
}
