// The small vector interface the x86 kernels are written against. Each x86 translation
// unit is compiled with one path's flags; this header picks the matching implementation,
// so matmul.cpp / attention.cpp are written once and built per path.
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace corelm::x86 {

inline float hsum_f32x8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

#if defined(__AVX512F__)
using vf = __m512;
constexpr int kLanes = 16;
inline vf vf_zero() { return _mm512_setzero_ps(); }
inline vf vf_set1(float v) { return _mm512_set1_ps(v); }
inline vf vf_load(const float* p) { return _mm512_loadu_ps(p); }
inline void vf_store(float* p, vf v) { _mm512_storeu_ps(p, v); }
inline vf vf_load_f16(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline vf vf_load_bf16(const uint16_t* p) {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
inline vf vf_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
inline vf vf_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
inline vf vf_add(vf a, vf b) { return _mm512_add_ps(a, b); }
inline float vf_sum(vf v) { return _mm512_reduce_add_ps(v); }
inline vf vf_max(vf a, vf b) { return _mm512_max_ps(a, b); }
// v where lo <= j < hi, -infinity elsewhere
inline vf vf_keep_in(vf v, vf j, vf lo, vf hi) {
    const __mmask16 in = _mm512_cmp_ps_mask(j, lo, _CMP_GE_OQ) & _mm512_cmp_ps_mask(j, hi, _CMP_LT_OQ);
    return _mm512_mask_blend_ps(in, _mm512_set1_ps(-__builtin_inff()), v);
}
#elif defined(__AVX2__)
using vf = __m256;
constexpr int kLanes = 8;
inline vf vf_zero() { return _mm256_setzero_ps(); }
inline vf vf_set1(float v) { return _mm256_set1_ps(v); }
inline vf vf_load(const float* p) { return _mm256_loadu_ps(p); }
inline void vf_store(float* p, vf v) { _mm256_storeu_ps(p, v); }
inline vf vf_load_f16(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline vf vf_load_bf16(const uint16_t* p) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
inline vf vf_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
inline vf vf_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
inline vf vf_add(vf a, vf b) { return _mm256_add_ps(a, b); }
inline float vf_sum(vf v) { return hsum_f32x8(v); }
inline vf vf_max(vf a, vf b) { return _mm256_max_ps(a, b); }
inline vf vf_keep_in(vf v, vf j, vf lo, vf hi) {
    const __m256 in = _mm256_and_ps(_mm256_cmp_ps(j, lo, _CMP_GE_OQ), _mm256_cmp_ps(j, hi, _CMP_LT_OQ));
    return _mm256_blendv_ps(_mm256_set1_ps(-__builtin_inff()), v, in);
}
#else
#error "x86 kernels need at least AVX2 + FMA + F16C"
#endif

// acc (8 x int32) += the sums of four adjacent u8 * s8 products. With AVX-512 VNNI this is
// one vpdpbusd; AVX2 needs vpmaddubsw (saturating int16 pairs: callers keep |u| <= 128 and
// |s| <= 127, so a pair never exceeds 32512) then vpmaddwd.
inline __m256i dot_u8s8(__m256i acc, __m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(acc, u, s);
#else
    const __m256i pairs = _mm256_maddubs_epi16(u, s);
    return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
#endif
}

// ---- row slices for the packed 16-row layouts: a vector of int32 lanes, one row per lane,
// each lane holding 4 u8 weight codes of its row ----
#if defined(__AVX512VNNI__)
using Slice = __m512i;
constexpr int kSliceRows = 16;
inline Slice slice_load(const uint8_t* p) { return _mm512_loadu_si512(p); }
inline Slice slice_low4(Slice v) { return _mm512_and_si512(v, _mm512_set1_epi8(0x0f)); }
inline Slice slice_high4(Slice v) { return _mm512_and_si512(_mm512_srli_epi16(v, 4), _mm512_set1_epi8(0x0f)); }
inline Slice slice_set1(int32_t v) { return _mm512_set1_epi32(v); }
inline Slice slice_and(Slice a, Slice b) { return _mm512_and_si512(a, b); }
inline Slice slice_or(Slice a, Slice b) { return _mm512_or_si512(a, b); }
inline Slice slice_add(Slice a, Slice b) { return _mm512_add_epi32(a, b); }
inline Slice slice_srl16(Slice v, int n) { return _mm512_srli_epi16(v, unsigned(n)); }
inline Slice slice_sll16(Slice v, int n) { return _mm512_slli_epi16(v, unsigned(n)); }
inline vf slice_to_float(Slice v) { return _mm512_cvtepi32_ps(v); }
// Per lane: byte e = 0x10 where bit shift + e of the lane is set (e < 4); a 16-entry table lookup.
inline Slice slice_bits_to_0x10(Slice bits, int shift) {
    const __m512i table = _mm512_setr_epi32(0x00000000, 0x00000010, 0x00001000, 0x00001010, 0x00100000, 0x00100010,
                                            0x00101000, 0x00101010, 0x10000000, 0x10000010, 0x10001000, 0x10001010,
                                            0x10100000, 0x10100010, 0x10101000, 0x10101010);
    return _mm512_permutexvar_epi32(_mm512_srli_epi32(bits, unsigned(shift)), table);  // uses the index's low 4 bits
}
// The packed codes carry an offset (8 or 128) that is taken back once per block: start the
// sum at -offset * sum(x).
inline Slice slice_offset_sum(int32_t offset, int32_t x_sum) { return _mm512_set1_epi32(-offset * x_sum); }
inline Slice slice_q8_start(int32_t x_sum) { return slice_offset_sum(128, x_sum); }
inline Slice slice_dot_small(Slice acc, Slice u, Slice s) { return _mm512_dpbusd_epi32(acc, u, s); }
inline Slice slice_dot_q8(Slice acc, Slice u, Slice s) { return _mm512_dpbusd_epi32(acc, u, s); }
#else
using Slice = __m256i;
constexpr int kSliceRows = 8;
inline Slice slice_load(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline Slice slice_low4(Slice v) { return _mm256_and_si256(v, _mm256_set1_epi8(0x0f)); }
inline Slice slice_high4(Slice v) { return _mm256_and_si256(_mm256_srli_epi16(v, 4), _mm256_set1_epi8(0x0f)); }
inline Slice slice_set1(int32_t v) { return _mm256_set1_epi32(v); }
inline Slice slice_and(Slice a, Slice b) { return _mm256_and_si256(a, b); }
inline Slice slice_or(Slice a, Slice b) { return _mm256_or_si256(a, b); }
inline Slice slice_add(Slice a, Slice b) { return _mm256_add_epi32(a, b); }
inline Slice slice_srl16(Slice v, int n) { return _mm256_srli_epi16(v, n); }
inline Slice slice_sll16(Slice v, int n) { return _mm256_slli_epi16(v, n); }
inline vf slice_to_float(Slice v) { return _mm256_cvtepi32_ps(v); }
// Per lane: byte e = 0x10 where bit shift + e of the lane is set (e < 4): the 4 bits times
// 0x00204081 put bit e at bit 8e of the product.
inline Slice slice_bits_to_0x10(Slice bits, int shift) {
    const __m256i t = _mm256_and_si256(_mm256_srli_epi32(bits, shift), _mm256_set1_epi32(0xf));
    const __m256i spread = _mm256_and_si256(_mm256_mullo_epi32(t, _mm256_set1_epi32(0x00204081)), _mm256_set1_epi32(0x01010101));
    return _mm256_slli_epi32(spread, 4);
}
inline Slice slice_offset_sum(int32_t offset, int32_t x_sum) { return _mm256_set1_epi32(-offset * x_sum); }
// Codes below 128 times int8 stay clear of vpmaddubsw's int16 saturation (2 * 127 * 127 < 32768).
inline Slice slice_dot_small(Slice acc, Slice u, Slice s) { return dot_u8s8(acc, u, s); }
// Q8 codes (w + 128) would saturate vpmaddubsw: take w back and multiply |w| by x with w's
// sign (at most 2 * 128 * 127 per pair), so no offset is needed.
inline Slice slice_q8_start(int32_t) { return _mm256_setzero_si256(); }
inline Slice slice_dot_q8(Slice acc, Slice u, Slice s) {
    const __m256i w = _mm256_xor_si256(u, _mm256_set1_epi8(char(0x80)));
    return dot_u8s8(acc, _mm256_abs_epi8(w), _mm256_sign_epi8(s, w));
}
#endif

// 16 bytes (one per row of a packed group) -> the float lanes of rows h*kLanes .. h*kLanes+kLanes-1.
template <bool Signed>
inline vf bytes_to_vf(__m128i v, int h) {
#if defined(__AVX512F__)
    (void)h;
    return _mm512_cvtepi32_ps(Signed ? _mm512_cvtepi8_epi32(v) : _mm512_cvtepu8_epi32(v));
#else
    const __m128i part = h ? _mm_srli_si128(v, 8) : v;
    return _mm256_cvtepi32_ps(Signed ? _mm256_cvtepi8_epi32(part) : _mm256_cvtepu8_epi32(part));
#endif
}

}  // namespace corelm::x86
