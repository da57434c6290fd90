// SiLU-and-multiply of the gated MLP: out = silu(gate) * up, one row per task.
#include <ATen/Parallel.h>

#include <cmath>

#include "../ops.h"
#include "cpu_utils.h"
#include "vec.h"

namespace vllm_cpu {
namespace {

inline float silu(float g) { return g / (1.f + std::exp(-g)); }

template <typename T>
void silu_and_mul_row(T* out, const T* gate, const T* up, int64_t d) {
  const Vec8 one = set1(1.f), zero = set1(0.f);
  int64_t i = 0;
  for (; i + kLanes <= d; i += kLanes) {
    Vec8 g = load8(gate + i);
    // exp8 clamps its input, so a very negative gate gives g / huge ~ -0.
    Vec8 s = g / (one + exp8(zero - g));
    store8(out + i, s * load8(up + i));
  }
  for (; i < d; ++i) out[i] = from_float<T>(silu(to_float(gate[i])) * to_float(up[i]));
}

}  // namespace
}  // namespace vllm_cpu

void silu_and_mul(at::Tensor& out, const at::Tensor& x) {
  using namespace vllm_cpu;
  check_rows(out, "out");
  check_rows(x, "x");
  check_same_dtype(x, out, "out");
  TORCH_CHECK(x.dim() == 2 && out.dim() == 2 && x.size(0) == out.size(0) &&
                  x.size(1) == 2 * out.size(1),
              "expected out [T, I] and x [T, 2 * I]");
  const int64_t t = out.size(0), d = out.size(1);
  const int64_t xs = x.stride(0), os = out.stride(0);
  VLLM_DISPATCH_FLOAT_BF16(x.scalar_type(), "silu_and_mul", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, t, grain_for(d), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        silu_and_mul_row(op + r * os, xp + r * xs, xp + r * xs + d, d);
      }
    });
  });
}
