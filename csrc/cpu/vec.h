// Eight-lane float vector used by every CPU kernel.
//
// With AVX2+FMA (the build adds -mavx2 -mfma only when the build machine runs
// them) a Vec8 is one __m256 register. Otherwise it is a plain float[8] whose
// loops the compiler may still auto-vectorise, so each kernel is written once.
// Storage types are float and c10::BFloat16 (and c10::Half for loads of fp16
// weights); arithmetic is always fp32.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define VLLM_CPU_AVX2 1
#endif

namespace vllm_cpu {

constexpr int kLanes = 8;

inline float to_float(float x) { return x; }
inline float to_float(c10::BFloat16 x) { return static_cast<float>(x); }
inline float to_float(c10::Half x) { return static_cast<float>(x); }

template <typename T>
inline T from_float(float x) {
  return static_cast<T>(x);  // c10::BFloat16 rounds to nearest even
}

#ifdef VLLM_CPU_AVX2

struct Vec8 {
  __m256 v;
};

inline Vec8 set1(float x) { return {_mm256_set1_ps(x)}; }
inline Vec8 load8(const float* p) { return {_mm256_loadu_ps(p)}; }
inline Vec8 load8(const c10::BFloat16* p) {
  // bf16 is the top half of an fp32: widen each lane and shift it up.
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  __m256i w = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
  return {_mm256_castsi256_ps(w)};
}
// fp16 weights (F16C: every AVX2 CPU has it, and the build probes for it).
inline Vec8 load8(const c10::Half* p) {
  return {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))};
}
inline void store8(float* p, Vec8 a) { _mm256_storeu_ps(p, a.v); }
inline void store8(c10::BFloat16* p, Vec8 a) {
  // Round to nearest even on the 16 dropped bits, as c10::BFloat16 does.
  __m256i b = _mm256_castps_si256(a.v);
  __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
  b = _mm256_add_epi32(b, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
  b = _mm256_srli_epi32(b, 16);
  __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(b),
                                    _mm256_extracti128_si256(b, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
}
inline Vec8 operator+(Vec8 a, Vec8 b) { return {_mm256_add_ps(a.v, b.v)}; }
inline Vec8 operator-(Vec8 a, Vec8 b) { return {_mm256_sub_ps(a.v, b.v)}; }
inline Vec8 operator*(Vec8 a, Vec8 b) { return {_mm256_mul_ps(a.v, b.v)}; }
inline Vec8 operator/(Vec8 a, Vec8 b) { return {_mm256_div_ps(a.v, b.v)}; }
inline Vec8 fma(Vec8 a, Vec8 b, Vec8 c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
inline Vec8 vmax(Vec8 a, Vec8 b) { return {_mm256_max_ps(a.v, b.v)}; }
// v where x >= lo, else 0 (NaN lanes give 0).
inline Vec8 keep_ge(Vec8 x, float lo, Vec8 v) {
  return {_mm256_and_ps(_mm256_cmp_ps(x.v, _mm256_set1_ps(lo), _CMP_GE_OQ), v.v)};
}

inline float hsum(Vec8 a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float hmax(Vec8 a) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

// exp(x) to a few ulp: x = n*ln2 + r with |r| <= ln2/2, e^r by its degree-7
// Taylor series (truncation error < 1e-8 relative), 2^n built in the exponent
// bits. Inputs are clamped so 2^n stays a normal float.
inline Vec8 exp8(Vec8 a) {
  __m256 x = _mm256_min_ps(_mm256_max_ps(a.v, _mm256_set1_ps(-87.0f)),
                           _mm256_set1_ps(88.0f));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // ln2 split in two so n*ln2_hi is exact and r keeps its low bits.
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  __m256i e = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return {_mm256_mul_ps(p, _mm256_castsi256_ps(e))};
}

#else  // portable fallback: same interface, scalar loops

struct Vec8 {
  float v[kLanes];
};

template <typename F>
inline Vec8 map8(F f) {
  Vec8 r;
  for (int i = 0; i < kLanes; ++i) r.v[i] = f(i);
  return r;
}

inline Vec8 set1(float x) {
  return map8([&](int) { return x; });
}
template <typename T>
inline Vec8 load8(const T* p) {
  return map8([&](int i) { return to_float(p[i]); });
}
template <typename T>
inline void store8(T* p, Vec8 a) {
  for (int i = 0; i < kLanes; ++i) p[i] = from_float<T>(a.v[i]);
}
inline Vec8 operator+(Vec8 a, Vec8 b) {
  return map8([&](int i) { return a.v[i] + b.v[i]; });
}
inline Vec8 operator-(Vec8 a, Vec8 b) {
  return map8([&](int i) { return a.v[i] - b.v[i]; });
}
inline Vec8 operator*(Vec8 a, Vec8 b) {
  return map8([&](int i) { return a.v[i] * b.v[i]; });
}
inline Vec8 operator/(Vec8 a, Vec8 b) {
  return map8([&](int i) { return a.v[i] / b.v[i]; });
}
inline Vec8 fma(Vec8 a, Vec8 b, Vec8 c) {
  return map8([&](int i) { return a.v[i] * b.v[i] + c.v[i]; });
}
inline Vec8 vmax(Vec8 a, Vec8 b) {
  return map8([&](int i) { return std::max(a.v[i], b.v[i]); });
}
inline Vec8 keep_ge(Vec8 x, float lo, Vec8 v) {
  return map8([&](int i) { return x.v[i] >= lo ? v.v[i] : 0.f; });
}
inline float hsum(Vec8 a) {
  float s = 0.f;
  for (float x : a.v) s += x;
  return s;
}
inline float hmax(Vec8 a) {
  float m = a.v[0];
  for (float x : a.v) m = std::max(m, x);
  return m;
}
inline Vec8 exp8(Vec8 a) {
  return map8([&](int i) { return std::exp(a.v[i]); });
}

#endif  // VLLM_CPU_AVX2

// Dot product of two length-n rows; n need not be a multiple of 8. Two
// accumulators so consecutive FMAs do not wait on each other's latency.
template <typename A, typename B>
inline float dot(const A* a, const B* b, int64_t n) {
  Vec8 acc0 = set1(0.f), acc1 = set1(0.f);
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    acc0 = fma(load8(a + i), load8(b + i), acc0);
    acc1 = fma(load8(a + i + kLanes), load8(b + i + kLanes), acc1);
  }
  for (; i + kLanes <= n; i += kLanes) acc0 = fma(load8(a + i), load8(b + i), acc0);
  float s = hsum(acc0 + acc1);
  for (; i < n; ++i) s += to_float(a[i]) * to_float(b[i]);
  return s;
}

// acc[i] += p * v[i] for a length-n row.
template <typename T>
inline void axpy(float* acc, float p, const T* v, int64_t n) {
  const Vec8 vp = set1(p);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    store8(acc + i, fma(vp, load8(v + i), load8(acc + i)));
  }
  for (; i < n; ++i) acc[i] += p * to_float(v[i]);
}

}  // namespace vllm_cpu
