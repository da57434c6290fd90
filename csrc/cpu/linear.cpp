// Linear layer for calls with few rows (decode): out[M, N] = x[M, K] @ W[N, K]^T
// (+ bias).
//
// At decode M is 1 to a few dozen, so the call is bound by reading W once, not
// by arithmetic. Each task walks a range of output features in tiles of kNB
// weight rows; a tile is read from memory once and, while it sits in L1, is
// dotted with every x row, kMB rows at a time, in kMB x kNB vector
// accumulators. Weight rows are read along K (the checkpoint layout), so the
// weights are used as loaded, with no packing.
//
// Each out[m, n] is one 8-lane dot product of x row m and W row n, summed
// lane-wise then across lanes, whatever M, the tiling or the thread count:
// a row's result does not depend on the other rows in the batch.
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../ops.h"
#include "cpu_utils.h"
#include "vec.h"

namespace vllm_cpu {
namespace {

// 3 x 4 accumulators plus 4 weight vectors fill the 16 AVX2 registers; the x
// vector is an FMA memory operand.
constexpr int kMB = 3;
constexpr int kNB = 4;
static_assert(kMB == 3, "dot_rows dispatches blocks of 1 to 3 rows");
// Calls with at most this many x rows (batch-1 decode) read W row by row.
constexpr int64_t kSingleStreamRows = 3;

struct LinearShape {
  int64_t m, n, k;
  int64_t xs, ws, os;  // row strides of x, W and out (elements)
};

// out[i][j] = x row i . W row j for an MB x NB tile.
// With PF, `next` is the tile the task reads after this one: it is prefetched
// while this tile computes, so its load from memory overlaps the arithmetic.
// (A template flag, not a null check, keeps the loop without it free of the
// extra registers.)
template <int MB, int NB, bool PF, typename T, typename W>
inline void dot_tile(const T* x, const W* w, const W* next, const LinearShape& s,
                     float (&res)[kMB][kNB]) {
  Vec8 acc[MB][NB];
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NB; ++j) acc[i][j] = set1(0.f);
  int64_t p = 0;
  for (; p + kLanes <= s.k; p += kLanes) {
    Vec8 wv[NB];
    for (int j = 0; j < NB; ++j) wv[j] = load8(w + j * s.ws + p);
    if (PF && p % (64 / sizeof(W)) == 0) {  // one prefetch per cache line
      for (int j = 0; j < NB; ++j) __builtin_prefetch(next + j * s.ws + p);
    }
    for (int i = 0; i < MB; ++i) {
      const Vec8 xv = load8(x + i * s.xs + p);
      for (int j = 0; j < NB; ++j) acc[i][j] = fma(xv, wv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MB; ++i) {
    for (int j = 0; j < NB; ++j) {
      float r = hsum(acc[i][j]);
      for (int64_t q = p; q < s.k; ++q) {
        r += to_float(x[i * s.xs + q]) * to_float(w[j * s.ws + q]);
      }
      res[i][j] = r;
    }
  }
}

// dot_tile for a block of mb <= kMB rows (the row count picked at run time).
template <int NB, bool PF, typename T, typename W>
inline void dot_rows(int64_t mb, const T* x, const W* w, const W* next,
                     const LinearShape& s, float (&res)[kMB][kNB]) {
  if (mb == 3) {
    dot_tile<3, NB, PF>(x, w, next, s, res);
  } else if (mb == 2) {
    dot_tile<2, NB, PF>(x, w, next, s, res);
  } else {
    dot_tile<1, NB, PF>(x, w, next, s, res);
  }
}

// Every x row against the NB weight rows at wt, rows n0... of W.
template <int NB, typename T, typename W>
void rows_tile(const T* x, const W* wt, const W* next, const T* bias, T* out,
               const LinearShape& s, int64_t n0) {
  float res[kMB][kNB];
  int64_t mb = 0;
  for (int64_t m0 = 0; m0 < s.m; m0 += mb) {
    const T* xt = x + m0 * s.xs;
    // Blocks of 3 rows, ending 2 + 2 rather than 3 + 1 (a 1-row block does
    // one FMA per weight load).
    const int64_t rest = s.m - m0;
    mb = rest == 4 ? 2 : std::min<int64_t>(kMB, rest);
    if (m0 == 0 && next) {  // the first pass streams W from memory
      dot_rows<NB, true>(mb, xt, wt, next, s, res);
    } else {
      dot_rows<NB, false>(mb, xt, wt, next, s, res);
    }
    for (int64_t i = 0; i < mb; ++i) {
      T* o = out + (m0 + i) * s.os + n0;
      for (int j = 0; j < NB; ++j) {
        const float b = bias ? to_float(bias[n0 + j]) : 0.f;
        o[j] = from_float<T>(res[i][j] + b);
      }
    }
  }
}

// rows_tile for 16-bit weights under fp32 x: the tile is widened once into buf
// [NB, K] (prefetching the next tile meanwhile), so the conversion is not
// repeated for every block of x rows; the arithmetic is then the fp32 path's.
template <int NB, typename W>
void widened_tile(const float* x, const W* wt, const W* next, const float* bias,
                  float* out, const LinearShape& s, int64_t n0, float* buf) {
  for (int j = 0; j < NB; ++j) {
    const W* row = wt + j * s.ws;
    float* dst = buf + j * s.k;
    int64_t p = 0;
    for (; p + kLanes <= s.k; p += kLanes) {
      if (next && p % (64 / sizeof(W)) == 0) __builtin_prefetch(next + j * s.ws + p);
      store8(dst + p, load8(row + p));
    }
    for (; p < s.k; ++p) dst[p] = to_float(row[p]);
  }
  LinearShape dense = s;
  dense.ws = s.k;
  rows_tile<NB, float, float>(x, buf, nullptr, bias, out, dense, n0);
}

template <typename T, typename W>
void linear_impl(const T* x, const W* w, const T* bias, T* out,
                 const LinearShape& s) {
  const int64_t tiles = (s.n + kNB - 1) / kNB;
  // At least ~64 KiB of fp32 weights per task, so tiny layers stay on one
  // thread, while every decode-sized layer of a real model splits.
  const int64_t grain = std::max<int64_t>(1, (1 << 14) / (kNB * s.k));
  if (s.m <= kSingleStreamRows) {
    // One weight row at a time: each thread reads one sequential stream,
    // which the hardware prefetcher follows at about 1.5x the bandwidth of
    // kNB interleaved row streams (benchmarks/README.md, "Few-row linear
    // kernel"); with so few x rows there is no reuse for a tile to win.
    at::parallel_for(0, s.n, grain * kNB, [&](int64_t b, int64_t e) {
      for (int64_t n = b; n < e; ++n) {
        const W* next = n + kNB < e ? w + (n + kNB) * s.ws : nullptr;
        rows_tile<1, T, W>(x, w + n * s.ws, next, bias, out, s, n);
      }
    });
    return;
  }
  constexpr bool kWiden = !std::is_same_v<T, W>;
  at::parallel_for(0, tiles, grain, [&](int64_t b, int64_t e) {
    std::vector<float> buf(kWiden ? kNB * s.k : 0);
    for (int64_t t = b; t < e; ++t) {
      const int64_t n0 = t * kNB;
      const bool full_next = t + 1 < e && n0 + 2 * kNB <= s.n;
      const W* next = full_next ? w + (n0 + kNB) * s.ws : nullptr;
      if (n0 + kNB > s.n) {
        for (int64_t n = n0; n < s.n; ++n) {
          rows_tile<1, T, W>(x, w + n * s.ws, nullptr, bias, out, s, n);
        }
      } else if constexpr (kWiden) {
        widened_tile<kNB>(x, w + n0 * s.ws, next, bias, out, s, n0, buf.data());
      } else {
        rows_tile<kNB>(x, w + n0 * s.ws, next, bias, out, s, n0);
      }
    }
  });
}

}  // namespace
}  // namespace vllm_cpu

void linear(at::Tensor& out, const at::Tensor& x, const at::Tensor& weight,
            const std::optional<at::Tensor>& bias) {
  using namespace vllm_cpu;
  check_rows(out, "out");
  check_rows(x, "x");
  check_rows(weight, "weight");
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && out.dim() == 2,
              "expected x [M, K], weight [N, K] and out [M, N]");
  const int64_t m = x.size(0), k = x.size(1), n = weight.size(0);
  TORCH_CHECK(weight.size(1) == k, "weight has ", weight.size(1),
              " input features, x has ", k);
  TORCH_CHECK(out.size(0) == m && out.size(1) == n, "out must be [", m, ", ", n,
              "]");
  // Weights in x's dtype, or fp16/bf16 weights with fp32 activations.
  const auto wt = weight.scalar_type();
  const bool mixed = x.scalar_type() == at::kFloat &&
                     (wt == at::kHalf || wt == at::kBFloat16);
  if (!mixed) check_same_dtype(x, weight, "weight");
  check_same_dtype(x, out, "out");
  if (bias) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == n && bias->stride(0) == 1,
                "bias must be a contiguous [N] tensor");
    check_same_dtype(x, *bias, "bias");
  }
  if (m == 0 || n == 0) return;
  const LinearShape s{m, n, k, x.stride(0), weight.stride(0), out.stride(0)};
  if (mixed) {
    const float* bp = bias ? bias->const_data_ptr<float>() : nullptr;
    if (wt == at::kHalf) {
      linear_impl(x.const_data_ptr<float>(), weight.const_data_ptr<c10::Half>(), bp,
                  out.data_ptr<float>(), s);
    } else {
      linear_impl(x.const_data_ptr<float>(),
                  weight.const_data_ptr<c10::BFloat16>(), bp, out.data_ptr<float>(),
                  s);
    }
    return;
  }
  VLLM_DISPATCH_FLOAT_BF16(x.scalar_type(), "linear", [&] {
    const scalar_t* bp = bias ? bias->const_data_ptr<scalar_t>() : nullptr;
    linear_impl(x.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(), bp,
                out.data_ptr<scalar_t>(), s);
  });
}
