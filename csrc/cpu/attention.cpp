// Decode attention over the paged KV cache: one query token per sequence.
//
// One task per (sequence, kv head). The task handles all G query heads that
// share the kv head (GQA), so each K and V row is read from memory once and
// reused G times from L1. Two passes: scores for the whole context into a
// scratch row per head, an exact softmax, then the probability-weighted sum
// of V rows. Decode is bound by reading the cache, and two passes read it
// exactly once, like an online softmax would, with simpler arithmetic.
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <vector>

#include "../ops.h"
#include "cpu_utils.h"
#include "vec.h"

namespace vllm_cpu {
namespace {

constexpr int64_t kMaxGroup = 64;  // query heads per kv head

struct DecodeShape {
  int64_t kv_heads, group, head_size, block_size, num_blocks;
  int64_t q_seq, q_head, o_seq, o_head;  // query / out strides (elements)
  int64_t c_blk, c_head, c_tok;          // cache strides, same for K and V
  int64_t table_stride;
  float scale;
};

// Per-thread buffers, sized once per worker for the longest context.
struct Scratch {
  std::vector<float> q;       // [G, D] scaled query rows
  std::vector<float> scores;  // [G, ctx] logits, then probabilities
  std::vector<float> acc;     // [G, D] weighted V sums
};

// Rows of kv head kvh in the j-th block of a sequence (block table entry j).
template <typename T>
const T* block_rows(const DecodeShape& s, const T* cache, const int32_t* table,
                    int64_t kvh, int64_t j) {
  const int64_t blk = table[j];
  TORCH_CHECK(blk >= 0 && blk < s.num_blocks, "block table entry ", blk,
              " is out of range");
  return cache + blk * s.c_blk + kvh * s.c_head;
}

// Blocks sit at random places in the cache, so the hardware prefetcher stalls
// at each block boundary; while reading row t of a block we ask for row t of
// the next one, which hides that latency.
template <typename T>
inline void prefetch_row(const T* p, int64_t n) {
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t off = 0; off < n * static_cast<int64_t>(sizeof(T)); off += 64) {
    __builtin_prefetch(c + off);
  }
}

// scores[g][p] = q_g . k_p for every cached position p < ctx.
template <typename T>
void qk_scores(const DecodeShape& s, const float* q, const T* kc, const int32_t* table,
               int64_t kvh, int64_t ctx, float* scores) {
  const int64_t d = s.head_size, bs = s.block_size;
  const T* rows = block_rows(s, kc, table, kvh, 0);
  for (int64_t j = 0; j * bs < ctx; ++j) {
    const int64_t n = std::min(bs, ctx - j * bs);
    const T* next = (j + 1) * bs < ctx ? block_rows(s, kc, table, kvh, j + 1) : nullptr;
    for (int64_t t = 0; t < n; ++t) {
      const T* k = rows + t * s.c_tok;
      if (next) prefetch_row(next + t * s.c_tok, d);
      for (int64_t g = 0; g < s.group; ++g) {
        scores[g * ctx + j * bs + t] = dot(q + g * d, k, d);
      }
    }
    rows = next;
  }
}

// Softmax of one row in place, minus the final division: returns 1 / sum.
float exp_row(float* x, int64_t n) {
  Vec8 vm = set1(-std::numeric_limits<float>::infinity());
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) vm = vmax(vm, load8(x + i));
  float m = hmax(vm);
  for (int64_t j = i; j < n; ++j) m = std::max(m, x[j]);
  const Vec8 vmx = set1(m);
  Vec8 vs = set1(0.f);
  for (i = 0; i + kLanes <= n; i += kLanes) {
    Vec8 e = exp8(load8(x + i) - vmx);
    store8(x + i, e);
    vs = vs + e;
  }
  float sum = hsum(vs);
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] - m);
    sum += x[i];
  }
  return 1.f / sum;
}

// acc[g] = sum_p probs[g][p] * v_p.
template <typename T>
void pv_sum(const DecodeShape& s, const float* probs, const T* vc, const int32_t* table,
            int64_t kvh, int64_t ctx, float* acc) {
  const int64_t d = s.head_size, bs = s.block_size;
  std::fill(acc, acc + s.group * d, 0.f);
  const T* rows = block_rows(s, vc, table, kvh, 0);
  for (int64_t j = 0; j * bs < ctx; ++j) {
    const int64_t n = std::min(bs, ctx - j * bs);
    const T* next = (j + 1) * bs < ctx ? block_rows(s, vc, table, kvh, j + 1) : nullptr;
    for (int64_t t = 0; t < n; ++t) {
      const T* v = rows + t * s.c_tok;
      if (next) prefetch_row(next + t * s.c_tok, d);
      for (int64_t g = 0; g < s.group; ++g) {
        axpy(acc + g * d, probs[g * ctx + j * bs + t], v, d);
      }
    }
    rows = next;
  }
}

template <typename T>
void attend(const DecodeShape& s, Scratch& w, T* out, const T* query, const T* kc,
            const T* vc, const int32_t* table, int64_t ctx, int64_t kvh) {
  const int64_t d = s.head_size;
  for (int64_t g = 0; g < s.group; ++g) {
    const T* q = query + (kvh * s.group + g) * s.q_head;
    for (int64_t i = 0; i < d; ++i) w.q[g * d + i] = to_float(q[i]) * s.scale;
  }
  float* scores = w.scores.data();
  qk_scores(s, w.q.data(), kc, table, kvh, ctx, scores);
  float inv[kMaxGroup];  // 1 / softmax denominators
  for (int64_t g = 0; g < s.group; ++g) inv[g] = exp_row(scores + g * ctx, ctx);
  pv_sum(s, scores, vc, table, kvh, ctx, w.acc.data());
  for (int64_t g = 0; g < s.group; ++g) {
    T* o = out + (kvh * s.group + g) * s.o_head;
    for (int64_t i = 0; i < d; ++i) o[i] = from_float<T>(w.acc[g * d + i] * inv[g]);
  }
}

template <typename T>
void decode(const DecodeShape& s, int64_t batch, int64_t max_ctx, T* out,
            const T* query, const T* kc, const T* vc, const int32_t* tables,
            const int32_t* ctx_lens) {
  // One task per (sequence, kv head). Context lengths differ across a batch,
  // so threads pull tasks from a shared counter instead of taking fixed
  // ranges. at::parallel_for runs on torch's OpenMP pool, so the thread count
  // follows torch.set_num_threads in each worker.
  const int64_t tasks = batch * s.kv_heads;
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), tasks);
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    Scratch w{std::vector<float>(s.group * s.head_size),
              std::vector<float>(s.group * std::max<int64_t>(max_ctx, 1)),
              std::vector<float>(s.group * s.head_size)};
    for (int64_t task; (task = next.fetch_add(1)) < tasks;) {
      const int64_t seq = task / s.kv_heads, kvh = task % s.kv_heads;
      const int64_t ctx = ctx_lens[seq];
      T* o = out + seq * s.o_seq;
      if (ctx == 0) {  // nothing to attend to: define the output as zeros
        for (int64_t g = 0; g < s.group; ++g) {
          T* row = o + (kvh * s.group + g) * s.o_head;
          std::fill_n(row, s.head_size, from_float<T>(0.f));
        }
        continue;
      }
      const int32_t* table = tables + seq * s.table_stride;
      attend(s, w, o, query + seq * s.q_seq, kc, vc, table, ctx, kvh);
    }
  });
}

void check_decode_args(const at::Tensor& out, const at::Tensor& query,
                       const at::Tensor& kc, const at::Tensor& vc,
                       const at::Tensor& tables, const at::Tensor& lens) {
  using Tensors = std::initializer_list<const at::Tensor*>;
  for (const at::Tensor* t : Tensors{&out, &query, &kc, &vc}) {
    check_rows(*t, "out/query/cache");
    check_same_dtype(query, *t, "out/query/cache");
  }
  TORCH_CHECK(query.dim() == 3 && out.sizes() == query.sizes(), "expected [B, Hq, D]");
  TORCH_CHECK(kc.dim() == 4 && kc.sizes() == vc.sizes() && kc.strides() == vc.strides(),
              "caches must be [num_blocks, Hkv, block_size, D] with equal strides");
  const int64_t hq = query.size(1), hkv = kc.size(1);
  TORCH_CHECK(kc.size(3) == query.size(2), "cache head_size mismatch");
  TORCH_CHECK(hq % hkv == 0 && hq / hkv <= kMaxGroup, "bad GQA ratio ", hq, "/", hkv);
  TORCH_CHECK(tables.scalar_type() == at::kInt && tables.dim() == 2 &&
                  tables.size(0) == query.size(0),
              "block_tables must be int32 [B, max_blocks]");
  TORCH_CHECK(lens.scalar_type() == at::kInt && lens.numel() == query.size(0),
              "context_lens must be int32 [B]");
}

// Longest context, checking that each one fits its block-table row.
int64_t max_context(const int32_t* lens, int64_t batch, int64_t capacity) {
  int64_t longest = 0;
  for (int64_t i = 0; i < batch; ++i) {
    TORCH_CHECK(lens[i] >= 0 && lens[i] <= capacity, "context length ", lens[i],
                " does not fit the block table");
    longest = std::max<int64_t>(longest, lens[i]);
  }
  return longest;
}

}  // namespace
}  // namespace vllm_cpu

void paged_attention_decode(at::Tensor& out, const at::Tensor& query,
                            const at::Tensor& key_cache, const at::Tensor& value_cache,
                            const at::Tensor& block_tables,
                            const at::Tensor& context_lens, double scale) {
  using namespace vllm_cpu;
  check_decode_args(out, query, key_cache, value_cache, block_tables, context_lens);
  const at::Tensor tables = block_tables.contiguous();
  const at::Tensor lens = context_lens.contiguous();
  const int64_t batch = query.size(0), hkv = key_cache.size(1), bs = key_cache.size(2);
  const int32_t* lp = lens.const_data_ptr<int32_t>();
  const int64_t max_ctx = max_context(lp, batch, tables.size(1) * bs);
  // Grouped as the fields of DecodeShape: sizes, query/out, cache, table.
  const DecodeShape s{hkv, query.size(1) / hkv, query.size(2), bs, key_cache.size(0),
                      query.stride(0), query.stride(1), out.stride(0), out.stride(1),
                      key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
                      tables.stride(0), static_cast<float>(scale)};
  VLLM_DISPATCH_FLOAT_BF16(query.scalar_type(), "paged_attention_decode", [&] {
    decode(s, batch, max_ctx, out.data_ptr<scalar_t>(),
           query.const_data_ptr<scalar_t>(), key_cache.const_data_ptr<scalar_t>(),
           value_cache.const_data_ptr<scalar_t>(), tables.const_data_ptr<int32_t>(),
           lp);
  });
}
