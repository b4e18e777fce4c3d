// Bitmask-sparse weights times a token's activations, as SQFT's sparse layers run at decode.
//
// Layout of one weight W [N out, K in] (K a multiple of 64), written by sqft_ov/io/sparse_fc/pack.py:
//   mask:    one bit per weight, row-major, K/8 bytes per row (bit i of byte j: weight 8j+i is non-zero);
//   values:  the non-zeros in row order; INT8: one signed byte each; INT4: two's-complement nibbles, low nibble
//            first, each block of 64 weights starting on a byte; 64 bytes of padding at the end (loads over-read);
//   offsets: the byte where each row's values start;
//   scales:  INT8: one per row; INT4: one per row and block of 64 (N x K/64); floats here (an IR stores them as
//            f16, which the CPU plugin hands over as f32).
// The input is quantized to INT8 per group of 64 (as OpenVINO's dynamic quantization does), the products summed
// in integers. AVX-512 (VBMI, VBMI2, VNNI): one vpexpandb places a block's non-zeros in their 64 lanes, and
// vpdpbusd multiplies them, offset to unsigned (INT8 + 128, INT4 + 8; a pruned weight becomes the offset), by the
// signed input; the offset's share, offset * sum(x) per group, is known once per token and subtracted once per
// row. Elsewhere a plain C++ path computes the same sums (slower: correctness, not speed).
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace sqft_sparse {

struct BitmaskWeight {
  const uint8_t* mask;
  const uint8_t* values;
  const int32_t* offsets;  // int32: OpenVINO's CPU plugin turns i64 constants into i32
  const float* scales;
  int N, K, bits;
};

// IEEE half -> float (scales read from an f16 constant outside the CPU plugin).
inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16, exponent = (h >> 10) & 0x1F, mantissa = h & 0x3FF;
  uint32_t bits;
  if (exponent == 0x1F) {
    bits = sign | 0x7F800000 | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {  // subnormal half: normalize
    int e = -1;
    uint32_t m = mantissa;
    do { ++e; m <<= 1; } while (!(m & 0x400));
    bits = sign | ((112 - e) << 23) | ((m & 0x3FF) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// One token's input, quantized once and shared by the threads.
struct QuantizedInput {
  std::vector<int8_t> q;
  std::vector<float> scale;        // per group of 64
  std::vector<float> scaled_sum;   // per group: scale * sum of q (what an offset on every weight adds)
  float total = 0.f;               // the sum of scaled_sum
  void set(const float* x, int K) {
    q.resize(K); scale.resize(K / 64); scaled_sum.resize(K / 64);
    total = 0.f;
    for (int g = 0; g < K / 64; ++g) {
      float peak = 0.f;
      for (int i = 0; i < 64; ++i) peak = std::max(peak, std::abs(x[64 * g + i]));
      const float s = peak > 0.f ? peak / 127.f : 1.f;
      int sum = 0;
      for (int i = 0; i < 64; ++i) {
        const int v = static_cast<int>(std::nearbyint(x[64 * g + i] / s));
        q[64 * g + i] = static_cast<int8_t>(v);
        sum += v;
      }
      scale[g] = s;
      scaled_sum[g] = s * static_cast<float>(sum);
      total += scaled_sum[g];
    }
  }
};

inline uint64_t mask_word(const uint8_t* mask, int g) {
  uint64_t m;
  std::memcpy(&m, mask + 8 * g, 8);
  return m;
}

// Row n of W times the quantized input, in plain C++ (the reference the vector path must equal).
inline float row_plain(const BitmaskWeight& w, int n, const QuantizedInput& x) {
  const uint8_t* mask = w.mask + static_cast<size_t>(n) * (w.K / 8);
  const uint8_t* v = w.values + w.offsets[n];
  float acc = 0.f;
  size_t at = 0;  // INT8: byte index; INT4: nibble index
  for (int g = 0; g < w.K / 64; ++g) {
    const uint64_t m = mask_word(mask, g);
    int32_t dot = 0;
    for (int i = 0; i < 64; ++i) {
      if (!(m >> i & 1)) continue;
      int code;
      if (w.bits == 8) {
        code = static_cast<int8_t>(v[at++]);
      } else {
        const int nibble = (v[at >> 1] >> (4 * (at & 1))) & 0x0F;
        code = nibble >= 8 ? nibble - 16 : nibble;
        ++at;
      }
      dot += code * x.q[64 * g + i];
    }
    if (w.bits == 4) at = (at + 1) & ~static_cast<size_t>(1);  // the next block starts on a byte
    acc += static_cast<float>(dot) * x.scale[g] *
           (w.bits == 4 ? w.scales[static_cast<size_t>(n) * (w.K / 64) + g] : 1.f);
  }
  return w.bits == 8 ? acc * w.scales[n] : acc;
}

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx512vbmi2,avx512vnni,popcnt,fma")

inline __m512 dot64(__m512i offset_w, const QuantizedInput& x, int g, __m512 acc) {
  __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), offset_w, _mm512_loadu_si512(x.q.data() + 64 * g));
  return _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_set1_ps(x.scale[g]), acc);
}

inline float row512_int8(const uint8_t* mask, const int8_t* v, const QuantizedInput& x, int K, float scale) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  const __m512i offset = _mm512_set1_epi8(static_cast<char>(0x80));
  int g = 0;
  for (; g + 1 < K / 64; g += 2) {
    const uint64_t m0 = mask_word(mask, g), m1 = mask_word(mask, g + 1);
    __m512i w0 = _mm512_xor_si512(_mm512_maskz_expand_epi8(m0, _mm512_loadu_si512(v)), offset);
    v += __builtin_popcountll(m0);
    __m512i w1 = _mm512_xor_si512(_mm512_maskz_expand_epi8(m1, _mm512_loadu_si512(v)), offset);
    v += __builtin_popcountll(m1);
    acc0 = dot64(w0, x, g, acc0);
    acc1 = dot64(w1, x, g + 1, acc1);
  }
  if (g < K / 64) {  // an odd number of blocks
    const uint64_t m = mask_word(mask, g);
    acc0 = dot64(_mm512_xor_si512(_mm512_maskz_expand_epi8(m, _mm512_loadu_si512(v)), offset), x, g, acc0);
  }
  return (_mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) - 128.f * x.total) * scale;
}

// A block's packed nibbles (starting on a byte) as 64 bytes q + 8, in order: vpermb puts bytes 4i..4i+3 at the
// start of qword i, vpmultishiftqb takes the byte at bit 4j of it for lane j, one ternary-logic op keeps the
// nibble and adds the offset (two's complement q xor 8 = q + 8).
inline __m512i offset_nibbles64(const uint8_t* v) {
  const __m512i spread = _mm512_set_epi8(
      63, 31, 30, 29, 31, 30, 29, 28, 63, 27, 26, 25, 27, 26, 25, 24, 63, 23, 22, 21, 23, 22, 21, 20,
      63, 19, 18, 17, 19, 18, 17, 16, 63, 15, 14, 13, 15, 14, 13, 12, 63, 11, 10, 9, 11, 10, 9, 8,
      63, 7, 6, 5, 7, 6, 5, 4, 63, 3, 2, 1, 3, 2, 1, 0);
  const __m512i shifts = _mm512_set1_epi64(0x1C1814100C080400LL);  // 0, 4, ..., 28
  __m512i bytes = _mm512_permutexvar_epi8(
      spread, _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(v))));
  __m512i t = _mm512_multishift_epi64_epi8(shifts, bytes);
  return _mm512_ternarylogic_epi32(t, _mm512_set1_epi8(0x0F), _mm512_set1_epi8(0x08), 0x6A);  // (t & 15) ^ 8
}

inline float row512_int4(const uint8_t* mask, const uint8_t* v, const QuantizedInput& x, int K, const float* scales) {
  __m512 acc = _mm512_setzero_ps(), correction = _mm512_setzero_ps();
  const __m512i zero_code = _mm512_set1_epi8(8);
  for (int g = 0; g < K / 64; ++g) {
    const uint64_t m = mask_word(mask, g);
    const int count = __builtin_popcountll(m);
    __m512i w = _mm512_mask_expand_epi8(zero_code, m, offset_nibbles64(v));
    v += (count + 1) / 2;
    __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, _mm512_loadu_si512(x.q.data() + 64 * g));
    acc = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(d), _mm512_set1_ps(x.scale[g])),
                          _mm512_set1_ps(scales[g]), acc);
  }
  int g = 0;  // the offset's share, block by block: 8 * sum_g scaled_sum[g] * scale[g]
  for (; g + 16 <= K / 64; g += 16)
    correction = _mm512_fmadd_ps(_mm512_loadu_ps(x.scaled_sum.data() + g),
                                 _mm512_loadu_ps(scales + g), correction);
  float rest = 0.f;
  for (; g < K / 64; ++g) rest += x.scaled_sum[g] * scales[g];
  return _mm512_reduce_add_ps(acc) - 8.f * (_mm512_reduce_add_ps(correction) + rest);
}

inline float row_avx512(const BitmaskWeight& w, int n, const QuantizedInput& x) {
  const uint8_t* mask = w.mask + static_cast<size_t>(n) * (w.K / 8);
  const uint8_t* v = w.values + w.offsets[n];
  if (w.bits == 8) return row512_int8(mask, reinterpret_cast<const int8_t*>(v), x, w.K, w.scales[n]);
  return row512_int4(mask, v, x, w.K, w.scales + static_cast<size_t>(n) * (w.K / 64));
}

#pragma GCC pop_options

inline bool has_avx512_kernels() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vbmi") &&
         __builtin_cpu_supports("avx512vbmi2") && __builtin_cpu_supports("avx512vnni");
}

}  // namespace sqft_sparse
