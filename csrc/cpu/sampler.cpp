// Random sampling by inverting a row's CDF at a given point, without
// materialising probabilities or a cumulative sum.
//
// For row r with temperature t and point u in (0, 1], the token is the first i
// with  sum_{j<=i} w_j >= u * sum_j w_j,  where w_j = exp(x_j / t - max_k x_k / t)
// (softmax up to its normaliser). Pass 1 finds the max; pass 2 sums w in blocks
// of 64 (fp32 within a block, fp64 across blocks, so the tail of a 50k
// vocabulary still moves the total); pass 3 walks the block sums to the block
// that holds the point and scans it in fp64. Weights below e^-87 count as 0:
// masked (-inf) logits can never be drawn, and nothing that likely would be.
#include <ATen/Parallel.h>

#include <limits>
#include <vector>

#include "cpu_utils.h"
#include "../ops.h"
#include "vec.h"

namespace {

using namespace vllm_cpu;

constexpr int64_t kBlock = 64;
constexpr float kMinExponent = -87.0f;

float row_max(const float* x, int64_t n) {
  Vec8 m = set1(-std::numeric_limits<float>::infinity());
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) m = vmax(m, load8(x + i));
  float best = hmax(m);
  for (; i < n; ++i) best = std::max(best, x[i]);
  return best;
}

// w for x[0:n] (n <= kBlock) into w; identical values in passes 2 and 3.
void block_weights(const float* x, int64_t n, float t, float m, float* w) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    Vec8 e = load8(x + i) / set1(t) - set1(m);
    store8(w + i, keep_ge(e, kMinExponent, exp8(e)));
  }
  for (; i < n; ++i) {
    float e = x[i] / t - m;
    w[i] = e >= kMinExponent ? std::exp(e) : 0.f;
  }
}

int64_t sample_row(const float* x, int64_t vocab, float t, double u,
                   double* sums) {
  const float m = row_max(x, vocab) / t;  // x / t is monotone: max commutes
  const int64_t blocks = (vocab + kBlock - 1) / kBlock;
  float w[kBlock];
  double total = 0.0;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t n = std::min(kBlock, vocab - b * kBlock);
    block_weights(x + b * kBlock, n, t, m, w);
    float s = 0.f;
    for (int64_t i = 0; i < n; ++i) s += w[i];
    sums[b] = s;
    total += s;
  }
  const double target = u * total;
  double cum = 0.0;
  int64_t b = 0;
  while (b + 1 < blocks && cum + sums[b] < target) cum += sums[b++];
  // fp32 block sums and the fp64 scan below may disagree in the last bits, so
  // the scan may run on into later blocks; past the end it keeps the last
  // token with weight (the top token always has weight 1).
  int64_t last = -1;
  for (; b < blocks; ++b) {
    const int64_t n = std::min(kBlock, vocab - b * kBlock);
    block_weights(x + b * kBlock, n, t, m, w);
    for (int64_t i = 0; i < n; ++i) {
      if (w[i] <= 0.f) continue;
      last = b * kBlock + i;
      cum += w[i];
      if (cum >= target) return last;
    }
  }
  return last;
}

}  // namespace

void sample_from_logits(at::Tensor& tokens, const at::Tensor& logits,
                        const at::Tensor& temperature, const at::Tensor& points) {
  vllm_cpu::check_rows(logits, "logits");
  TORCH_CHECK(logits.dim() == 2 && logits.scalar_type() == at::kFloat,
              "logits must be [R, V] float32");
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  TORCH_CHECK(vocab > 0, "logits must have a vocabulary");
  TORCH_CHECK(tokens.is_contiguous() && tokens.scalar_type() == at::kLong &&
                  tokens.numel() == rows,
              "tokens must be [R] int64");
  TORCH_CHECK(temperature.is_contiguous() &&
                  temperature.scalar_type() == at::kFloat &&
                  temperature.numel() == rows,
              "temperature must be [R] float32");
  TORCH_CHECK(points.is_contiguous() && points.scalar_type() == at::kDouble &&
                  points.numel() == rows,
              "points must be [R] float64");
  const float* x = logits.data_ptr<float>();
  const int64_t stride = logits.stride(0);
  const float* temps = temperature.data_ptr<float>();
  const double* us = points.data_ptr<double>();
  int64_t* out = tokens.data_ptr<int64_t>();
  const int64_t blocks = (vocab + kBlock - 1) / kBlock;
  at::parallel_for(0, rows, vllm_cpu::grain_for(vocab), [&](int64_t lo, int64_t hi) {
    std::vector<double> sums(blocks);
    for (int64_t r = lo; r < hi; ++r) {
      TORCH_CHECK(temps[r] > 0.f, "sample_from_logits: temperature must be > 0");
      out[r] = sample_row(x + r * stride, vocab, temps[r], us[r], sums.data());
    }
  });
}
