// Bitmask-sparse GEMV for decode (one token): y[n] = sum_k W[n,k] x[k], W stored as
//   mask:   one bit per weight, row-major, K/8 bytes per row (bit i of byte j = weight 8j+i is non-zero);
//   values: the non-zeros in row order, INT8 (one byte each) or INT4 (two's-complement nibbles, low nibble
//           first, each block of 64 weights starting on a byte); padded with 64 bytes at the end so loads
//           may over-read;
//   scales: INT8 — one float per row; INT4 — one float per row and group of 64 weights (K/64 per row);
//   offsets: where each row's values start (bytes, int32).
// The AVX2 kernels expand each mask byte's packed values into 8 lanes with a shuffle table (AVX2 has no
// expand instruction); the AVX-512 kernels expand 64 bytes with one vpexpandb (AVX512_VBMI2) and, for integer
// math, sum with vpdpbusd (AVX512_VNNI) — those are the package's own kernels, the ones its
// SparseFullyConnected extension runs (sqft_ov/io/sparse_fc/bitmask_gemv.hpp, which also documents the
// layout). Either reads fewer bytes than a dense INT4 row but does a dense row's arithmetic. Rows are split
// over OpenMP threads; the instruction set is chosen by the caller at run time (has_avx2 / has_avx512). Built by benchmarks/sparse_kernel/run.py (g++ -O3 -fopenmp).
#include <immintrin.h>
#include <omp.h>
#include <cstdint>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "../../sqft_ov/io/sparse_fc/bitmask_gemv.hpp"

// The AVX2 kernels are compiled for AVX2 + FMA; the caller checks has_avx2() first (run time).
#pragma GCC push_options
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
    at = (at + 1) & ~static_cast<size_t>(1);  // the next block starts on a byte
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

// x (K floats) -> INT8 per group of 64 (xq), its magnitudes (xabs) and the groups' scales (xscale): the AVX2
// integer kernel's input (the AVX-512 ones take sqft_sparse::QuantizedInput, the package's own).
struct QuantizedX {
  std::vector<int8_t> q;
  std::vector<uint8_t> abs;
  std::vector<float> scale;
  void set(const float* x, int K) {
    q.resize(K); abs.resize(K); scale.resize(K / 64);
    for (int g = 0; g < K / 64; ++g) {
      float peak = 0.f;
      for (int i = 0; i < 64; ++i) peak = std::max(peak, std::abs(x[64 * g + i]));
      const float s = peak > 0.f ? peak / 127.f : 1.f;
      scale[g] = s;
      for (int i = 0; i < 64; ++i) {
        const int v = static_cast<int>(std::nearbyint(x[64 * g + i] / s));
        q[64 * g + i] = static_cast<int8_t>(v);
        abs[64 * g + i] = static_cast<uint8_t>(v < 0 ? -v : v);
      }
    }
  }
};

void gemv_avx2(int kind, const uint8_t* mask, const uint8_t* values, const int32_t* offsets, const float* scales,
               const float* x, float* y, int N, int K, int threads, const QuantizedX& xq) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int n = 0; n < N; ++n) {
    const uint8_t* m = mask + static_cast<size_t>(n) * (K / 8);
    const uint8_t* v = values + offsets[n];
    if (kind == 0)
      y[n] = row_int8(m, reinterpret_cast<const int8_t*>(v), x, K, scales[n]);
    else if (kind == 1)
      y[n] = row_int4(m, v, x, K, scales + static_cast<size_t>(n) * (K / 64));
    else
      y[n] = row_int8q(m, reinterpret_cast<const int8_t*>(v), xq.q.data(), xq.abs.data(), xq.scale.data(), K,
                       scales[n]);
  }
}
}  // namespace
#pragma GCC pop_options

// The AVX-512 kernels: 64 weights a step, one 64-bit mask word, one vpexpandb.
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx512vbmi2,avx512vnni,popcnt,fma")
namespace {
using sqft_sparse::mask_word;  // the package's: one block's 64 mask bits

// 64 expanded INT8 weights times x[0..64) in float, added to acc.
inline __m512 fma64(__m512i w, const float* x, __m512 acc) {
  for (int i = 0; i < 4; ++i) {
    __m512 f = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(w, i)));
    acc = _mm512_fmadd_ps(f, _mm512_loadu_ps(x + 16 * i), acc);
  }
  return acc;
}

// The packed nibbles of one block (starting on a byte) as 64 sign-extended bytes, low nibble first.
inline __m512i nibbles64(const uint8_t* v) {
  __m512i w16 = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(v)));
  __m512i bytes = _mm512_or_si512(_mm512_and_si512(w16, _mm512_set1_epi16(0x000F)),
                                  _mm512_and_si512(_mm512_slli_epi16(w16, 4), _mm512_set1_epi16(0x0F00)));
  const __m512i eight = _mm512_set1_epi8(8);
  return _mm512_sub_epi8(_mm512_xor_si512(bytes, eight), eight);  // nibble n -> n - 16 when n >= 8
}

float row512_int8(const uint8_t* mask, const int8_t* v, const float* x, int K, float scale) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  for (int g = 0; g < K / 64; g += 2) {
    const uint64_t m0 = mask_word(mask, g), m1 = mask_word(mask, g + 1);
    __m512i w0 = _mm512_maskz_expand_epi8(m0, _mm512_loadu_si512(v));
    v += __builtin_popcountll(m0);
    __m512i w1 = _mm512_maskz_expand_epi8(m1, _mm512_loadu_si512(v));
    v += __builtin_popcountll(m1);
    acc0 = fma64(w0, x + 64 * g, acc0);
    acc1 = fma64(w1, x + 64 * g + 64, acc1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) * scale;
}

float row512_int4(const uint8_t* mask, const uint8_t* v, const float* x, int K, const float* scales) {
  __m512 acc = _mm512_setzero_ps();
  for (int g = 0; g < K / 64; ++g) {
    const uint64_t m = mask_word(mask, g);
    const int count = __builtin_popcountll(m);
    __m512i w = _mm512_maskz_expand_epi8(m, nibbles64(v));
    v += (count + 1) / 2;
    acc = _mm512_fmadd_ps(fma64(w, x + 64 * g, _mm512_setzero_ps()), _mm512_set1_ps(scales[g]), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// Float math here; the integer kinds are the package's kernels (sqft_ov/io/sparse_fc/bitmask_gemv.hpp), the
// ones the SparseFullyConnected extension runs.
void gemv_avx512(int kind, const uint8_t* mask, const uint8_t* values, const int32_t* offsets,
                 const float* scales, const float* x, float* y, int N, int K, int threads,
                 const sqft_sparse::QuantizedInput& xq) {
  const sqft_sparse::BitmaskWeight w{mask, values, offsets, scales, N, K, kind == 2 ? 8 : 4};
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int n = 0; n < N; ++n) {
    const uint8_t* m = mask + static_cast<size_t>(n) * (K / 8);
    const uint8_t* v = values + offsets[n];
    if (kind == 0)
      y[n] = row512_int8(m, reinterpret_cast<const int8_t*>(v), x, K, scales[n]);
    else if (kind == 1)
      y[n] = row512_int4(m, v, x, K, scales + static_cast<size_t>(n) * (K / 64));
    else
      y[n] = sqft_sparse::row_avx512(w, n, xq);
  }
}
}  // namespace
#pragma GCC pop_options

extern "C" {
int has_avx2() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
int has_avx512() { return sqft_sparse::has_avx512_kernels(); }

// A chain of layers, as a decoder's MLPs run one after another: layer i reads x_i, writes x_{i+1}.
// kind: 0 INT8 values (float math), 1 INT4 values (float math), 2 INT8 values (integer math),
// 3 INT4 values (integer math, AVX-512 only). isa: 0 AVX2, 1 AVX-512.
// One OpenMP region per layer, as one FullyConnected node per layer in OpenVINO; the integer kinds
// quantize the layer's input first, on one thread (OpenVINO's dynamic quantization does the same work).
// Returns 0, or -1 for a kind / isa this build does not run (the caller checked the CPU).
int chain(int kind, int isa, int L, const uint8_t** masks, const void** values, const int32_t** offsets,
          const float** scales, float** xs, const int* Ns, const int* Ks, int threads) {
  if (kind < 0 || kind > 3 || isa < 0 || isa > 1 || (isa == 0 && kind == 3)) return -1;
  static thread_local QuantizedX xq;
  static thread_local sqft_sparse::QuantizedInput xq512;
  for (int i = 0; i < L; ++i) {
    const uint8_t* v = static_cast<const uint8_t*>(values[i]);
    if (isa == 1) {
      if (kind >= 2) xq512.set(xs[i], Ks[i]);
      gemv_avx512(kind, masks[i], v, offsets[i], scales[i], xs[i], xs[i + 1], Ns[i], Ks[i], threads, xq512);
    } else {
      if (kind >= 2) xq.set(xs[i], Ks[i]);
      gemv_avx2(kind, masks[i], v, offsets[i], scales[i], xs[i], xs[i + 1], Ns[i], Ks[i], threads, xq);
    }
  }
  return 0;
}
}
