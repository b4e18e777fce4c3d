// Bitmask-sparse GEMV for decode (one token): y[n] = sum_k W[n,k] x[k], W stored as
//   mask:   one bit per weight, row-major, K/8 bytes per row (bit i of byte j = weight 8j+i is non-zero);
//   values: the non-zeros in row order, INT8 (one byte each) or INT4 (two's-complement nibbles, low nibble
//           first), each row starting on a byte; padded with 16 bytes at the end so loads may over-read;
//   scales: INT8 — one float per row; INT4 — one float per row and group of 64 weights (K/64 per row);
//   offsets: where each row's values start (bytes).
// The kernel expands each mask byte's packed values into 8 lanes with a shuffle table (AVX2 has no
// expand instruction), so it reads fewer bytes than a dense INT4 row but does a dense row's arithmetic.
// Rows are split over OpenMP threads. Built by benchmarks/sparse_kernel/run.py (g++ -O3 -fopenmp).
#include <immintrin.h>
#include <omp.h>
#include <cstdint>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

// Everything below is compiled for AVX2 + FMA; the caller checks has_avx2() first (run time).
#pragma GCC target("avx2,fma,popcnt")

namespace {
alignas(16) uint8_t LUT[2][256][16];  // [nibble offset][mask] -> pshufb control placing packed values in lanes

struct Init {
  Init() {
    for (int odd = 0; odd < 2; ++odd)
      for (int m = 0; m < 256; ++m) {
        int next = odd;
        for (int lane = 0; lane < 16; ++lane) LUT[odd][m][lane] = 0x80;
        for (int lane = 0; lane < 8; ++lane)
          if (m >> lane & 1) LUT[odd][m][lane] = static_cast<uint8_t>(next++);
      }
  }
} init;

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

float row_int8(const uint8_t* mask, const int8_t* values, const float* x, int K, float scale) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  const int8_t* v = values;
  for (int j = 0; j < K / 8; j += 2) {
    const unsigned m0 = mask[j], m1 = mask[j + 1];
    __m128i p0 = _mm_shuffle_epi8(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(v)),
                                  _mm_load_si128(reinterpret_cast<const __m128i*>(LUT[0][m0])));
    v += __builtin_popcount(m0);
    __m128i p1 = _mm_shuffle_epi8(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(v)),
                                  _mm_load_si128(reinterpret_cast<const __m128i*>(LUT[0][m1])));
    v += __builtin_popcount(m1);
    acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(p0)), _mm256_loadu_ps(x + 8 * j), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(p1)), _mm256_loadu_ps(x + 8 * j + 8), acc1);
  }
  return hsum(_mm256_add_ps(acc0, acc1)) * scale;
}

// 16 nibbles starting at nibble index `at` of `values`, as 16 bytes in order (low nibble first).
inline __m128i nibbles(const uint8_t* values, size_t at) {
  __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(values + (at >> 1)));
  const __m128i low = _mm_set1_epi8(0x0F);
  return _mm_unpacklo_epi8(_mm_and_si128(b, low), _mm_and_si128(_mm_srli_epi16(b, 4), low));
}

inline __m256 expand_int4(const uint8_t* mask_byte_ptr, const uint8_t* values, size_t& at) {
  const unsigned m = *mask_byte_ptr;
  __m128i p = _mm_shuffle_epi8(nibbles(values, at),
                               _mm_load_si128(reinterpret_cast<const __m128i*>(LUT[at & 1][m])));
  at += __builtin_popcount(m);
  __m256i w = _mm256_srai_epi32(_mm256_slli_epi32(_mm256_cvtepu8_epi32(p), 28), 28);  // sign-extend nibble
  return _mm256_cvtepi32_ps(w);
}

float row_int4(const uint8_t* mask, const uint8_t* values, const float* x, int K, const float* scales) {
  __m256 acc = _mm256_setzero_ps();
  size_t at = 0;  // nibble index
  for (int g = 0; g < K / 64; ++g) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    const uint8_t* mg = mask + 8 * g;
    const float* xg = x + 64 * g;
    for (int j = 0; j < 8; j += 2) {
      a0 = _mm256_fmadd_ps(expand_int4(mg + j, values, at), _mm256_loadu_ps(xg + 8 * j), a0);
      a1 = _mm256_fmadd_ps(expand_int4(mg + j + 1, values, at), _mm256_loadu_ps(xg + 8 * j + 8), a1);
    }
    acc = _mm256_fmadd_ps(_mm256_add_ps(a0, a1), _mm256_set1_ps(scales[g]), acc);
  }
  return hsum(acc);
}
// The integer path, as OpenVINO's own INT4 kernels compute: x quantized to INT8 per group of 64 once per
// layer (dynamic quantization), products summed in integers with maddubs. 32 weights a step: four mask
// bytes, two 16-byte value loads, one 256-bit shuffle whose control is two 8-lane table entries per half,
// the second shifted by the first's popcount (0x80 + small stays >= 0x80: still a zero lane).
inline __m128i control16(unsigned m0, unsigned m1) {
  __m128i a = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(LUT[0][m0]));
  __m128i b = _mm_add_epi8(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(LUT[0][m1])),
                           _mm_set1_epi8(static_cast<char>(__builtin_popcount(m0))));
  return _mm_unpacklo_epi64(a, b);
}

float row_int8q(const uint8_t* mask, const int8_t* values, const int8_t* xq, const uint8_t* xabs,
                const float* xscale, int K, float scale) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc = _mm256_setzero_ps();
  const int8_t* v = values;
  for (int g = 0; g < K / 64; ++g) {
    __m256i sum = _mm256_setzero_si256();
    for (int j = 0; j < 2; ++j) {
      const int k = 64 * g + 32 * j;
      uint32_t m;
      std::memcpy(&m, mask + k / 8, 4);
      const unsigned m0 = m & 0xFF, m1 = m >> 8 & 0xFF, m2 = m >> 16 & 0xFF, m3 = m >> 24;
      const int low = __builtin_popcount(m & 0xFFFF);
      __m256i packed = _mm256_inserti128_si256(
          _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v))),
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(v + low)), 1);
      __m256i ctrl = _mm256_inserti128_si256(_mm256_castsi128_si256(control16(m0, m1)), control16(m2, m3), 1);
      v += __builtin_popcount(m);
      __m256i w = _mm256_shuffle_epi8(packed, ctrl);
      __m256i signed_w = _mm256_sign_epi8(w, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + k)));
      __m256i pairs = _mm256_maddubs_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xabs + k)), signed_w);
      sum = _mm256_add_epi32(sum, _mm256_madd_epi16(pairs, ones));
    }
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_set1_ps(xscale[g]), acc);
  }
  return hsum(acc) * scale;
}
}  // namespace

extern "C" {
int has_avx2() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }  // no AVX2 op

void gemv_int8(const uint8_t* mask, const int8_t* values, const int64_t* offsets, const float* scales,
               const float* x, float* y, int N, int K, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int n = 0; n < N; ++n)
    y[n] = row_int8(mask + static_cast<size_t>(n) * (K / 8), values + offsets[n], x, K, scales[n]);
}

void gemv_int4(const uint8_t* mask, const uint8_t* values, const int64_t* offsets, const float* scales,
               const float* x, float* y, int N, int K, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int n = 0; n < N; ++n)
    y[n] = row_int4(mask + static_cast<size_t>(n) * (K / 8), values + offsets[n], x, K,
                    scales + static_cast<size_t>(n) * (K / 64));
}

// x (K floats) -> INT8 per group of 64 (xq), its magnitudes (xabs) and the groups' scales (xscale).
void quantize_x(const float* x, int K, int8_t* xq, uint8_t* xabs, float* xscale) {
  for (int g = 0; g < K / 64; ++g) {
    float peak = 0.f;
    for (int i = 0; i < 64; ++i) peak = std::max(peak, std::abs(x[64 * g + i]));
    const float s = peak > 0.f ? peak / 127.f : 1.f;
    xscale[g] = s;
    for (int i = 0; i < 64; ++i) {
      const int q = static_cast<int>(std::nearbyint(x[64 * g + i] / s));
      xq[64 * g + i] = static_cast<int8_t>(q);
      xabs[64 * g + i] = static_cast<uint8_t>(q < 0 ? -q : q);
    }
  }
}

void gemv_int8q(const uint8_t* mask, const int8_t* values, const int64_t* offsets, const float* scales,
                const float* x, float* y, int N, int K, int threads) {
  static thread_local std::vector<int8_t> xq;
  static thread_local std::vector<uint8_t> xabs;
  static thread_local std::vector<float> xscale;
  xq.resize(K); xabs.resize(K); xscale.resize(K / 64);
  quantize_x(x, K, xq.data(), xabs.data(), xscale.data());
  const int8_t* q = xq.data(); const uint8_t* a = xabs.data(); const float* s = xscale.data();
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int n = 0; n < N; ++n)
    y[n] = row_int8q(mask + static_cast<size_t>(n) * (K / 8), values + offsets[n], q, a, s, K, scales[n]);
}

// A chain of layers, as a decoder's MLPs run one after another: layer i reads x_i, writes x_{i+1}.
// kind: 0 INT8 values (float math), 1 INT4 values (float math), 2 INT8 values (integer math).
// One OpenMP region per layer, as one FullyConnected node per layer in OpenVINO.
void chain(int kind, int L, const uint8_t** masks, const void** values, const int64_t** offsets,
           const float** scales, float** xs, const int* Ns, const int* Ks, int threads) {
  for (int i = 0; i < L; ++i) {
    if (kind == 2)
      gemv_int8q(masks[i], static_cast<const int8_t*>(values[i]), offsets[i], scales[i], xs[i], xs[i + 1], Ns[i],
                 Ks[i], threads);
    else if (kind == 1)
      gemv_int4(masks[i], static_cast<const uint8_t*>(values[i]), offsets[i], scales[i], xs[i], xs[i + 1], Ns[i],
                Ks[i], threads);
    else
      gemv_int8(masks[i], static_cast<const int8_t*>(values[i]), offsets[i], scales[i], xs[i], xs[i + 1], Ns[i],
                Ks[i], threads);
  }
}
}
