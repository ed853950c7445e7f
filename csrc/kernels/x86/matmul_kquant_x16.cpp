// x86 matrix products of the packed k-quant groups (block_q4_Kx16, block_q5_Kx16, block_q6_Kx16),
// compiled once per path (avx2, avx512; simd.h). As for packed Q4_0: each vector of codes holds a
// 4-element slice of kSliceRows rows (a row per 32-bit lane), so one vpdpbusd (AVX-512 VNNI) or
// vpmaddubsw/vpmaddwd (AVX2) against the broadcast slice of the activations adds 4 products to
// every row's lane - no decoding to memory and no horizontal sums. The per-row sub-block scales
// sit transposed in the group, so the 16 rows' scales of a sub-block are one 16-byte load.
#include <type_traits>

#include "../../core/kernel_table.h"
#include "groups.h"
#include "simd.h"

#ifndef CORELM_ISA_NS
#error "compile with -DCORELM_ISA_NS=<path name>"
#endif

namespace corelm::CORELM_ISA_NS {

using namespace corelm::x86;

namespace {

inline __m128i load128(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }

// Q4_K / Q5_K: value = d * sc_j * q - dmin * m_j per sub-block j of 32, q in 0..15 / 0..31
// (sub-blocks 2c and 2c + 1 are the low and high nibbles of the 32 bytes of chunk c; Q5_K's
// fifth bit of byte l's values is bit j of qh[l]).
template <bool Q5, int C>
void tile_q45_k_x16(const MatmulArgs& a, int64_t n, int64_t m) {
    using Block = std::conditional_t<Q5, block_q5_Kx16, block_q4_Kx16>;
    const int64_t n_super = a.k / kQK_K, nb = a.k / kQK;
    const auto* grp = reinterpret_cast<const Block*>(a.w + n * a.w_stride);
    const block_q8_act* x[C];
    for (int c = 0; c < C; ++c) x[c] = a.xq + (m + c) * nb;
    GroupAcc<C> acc;
    for (int64_t sb = 0; sb < n_super; ++sb) {
        const Block& g = grp[sb];
        if constexpr (C == 1) prefetch_ahead(&g, sizeof(Block));
        __m128i s[12];  // byte b of the 16 rows' packed 6-bit scales and mins
        for (int b = 0; b < 12; ++b) s[b] = load128(g.scales + kPackRows * b);
        const __m128i low6 = _mm_set1_epi8(63), low4 = _mm_set1_epi8(0x0f), three = _mm_set1_epi8(3);
        __m128i sc[8], mn[8];  // sub-block j's 6-bit scale and min of the 16 rows (ggml's get_scale_min_k4)
        for (int j = 0; j < 4; ++j) {
            sc[j] = _mm_and_si128(s[j], low6);
            mn[j] = _mm_and_si128(s[j + 4], low6);
            sc[j + 4] = _mm_or_si128(_mm_and_si128(s[j + 8], low4),
                                     _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(s[j], 6), three), 4));
            mn[j + 4] = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(s[j + 8], 4), low4),
                                     _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(s[j + 4], 6), three), 4));
        }
        for (int h = 0; h < kHalves; ++h) {
            const vf d = vf_load_f16(g.d + kSliceRows * h), dmin = vf_load_f16(g.dmin + kSliceRows * h);
            for (int chunk = 0; chunk < kQK_K / 64; ++chunk) {  // sub-blocks 2 chunk (low nibbles) and +1 (high)
                Slice lo[8], hi[8];
                for (int i = 0; i < 8; ++i) {
                    const Slice v = slice_load(g.qs + 64 * (8 * chunk + i) + 4 * kSliceRows * h);
                    lo[i] = slice_low4(v);
                    hi[i] = slice_high4(v);
                    if constexpr (Q5) {
                        const Slice qh = slice_load(g.qh + 64 * i + 4 * kSliceRows * h), one = slice_set1(0x01010101);
                        lo[i] = slice_or(lo[i], slice_sll16(slice_and(slice_srl16(qh, 2 * chunk), one), 4));
                        hi[i] = slice_or(hi[i], slice_sll16(slice_and(slice_srl16(qh, 2 * chunk + 1), one), 4));
                    }
                }
                const int j = 2 * chunk;
                const vf d_lo = vf_mul(d, bytes_to_vf<false>(sc[j], h)), d_hi = vf_mul(d, bytes_to_vf<false>(sc[j + 1], h));
                const vf m_lo = vf_mul(dmin, bytes_to_vf<false>(mn[j], h));
                const vf m_hi = vf_mul(dmin, bytes_to_vf<false>(mn[j + 1], h));
                for (int c = 0; c < C; ++c) {
                    const block_q8_act& xl = x[c][sb * (kQK_K / kQK) + j];
                    const block_q8_act& xh = x[c][sb * (kQK_K / kQK) + j + 1];
                    const auto* ql = reinterpret_cast<const int32_t*>(xl.qs);
                    const auto* qh = reinterpret_cast<const int32_t*>(xh.qs);
                    Slice sum_lo = slice_set1(0), sum_hi = slice_set1(0);
                    for (int i = 0; i < 8; ++i) {
                        sum_lo = slice_dot_small(sum_lo, lo[i], slice_set1(ql[i]));
                        sum_hi = slice_dot_small(sum_hi, hi[i], slice_set1(qh[i]));
                    }
                    vf t = vf_fma(slice_to_float(sum_lo), vf_mul(d_lo, vf_set1(xl.d)), acc[c][h]);
                    t = vf_fma(slice_to_float(sum_hi), vf_mul(d_hi, vf_set1(xh.d)), t);
                    t = vf_fma(m_lo, vf_set1(-xl.d * float(xl.s)), t);
                    acc[c][h] = vf_fma(m_hi, vf_set1(-xh.d * float(xh.s)), t);
                }
            }
        }
    }
    acc.store(a, n, m);
}

// Sum of the first 16 int8 of an activation block (the other 16: s minus it).
inline int32_t sum16(const int8_t* q) {
    const __m128i biased = _mm_xor_si128(load128(q), _mm_set1_epi8(char(0x80)));  // q + 128, unsigned
    const __m128i sad = _mm_sad_epu8(biased, _mm_setzero_si128());
    return _mm_cvtsi128_si32(sad) + _mm_extract_epi16(sad, 4) - 16 * 128;
}

// Q6_K: value = d * sc_g * (q - 32) per sub-block g of 16, q in 0..63 from 4 bits of ql and 2 of
// qh. Each 32 elements 128t + 32i .. are one activation block and sub-blocks 8t + 2i, 8t + 2i + 1;
// the -32 enters through the activations' sums of 16 (the starting value of the dot).
template <int C>
void tile_q6_k_x16(const MatmulArgs& a, int64_t n, int64_t m) {
    const int64_t n_super = a.k / kQK_K, nb = a.k / kQK;
    const auto* grp = reinterpret_cast<const block_q6_Kx16*>(a.w + n * a.w_stride);
    const block_q8_act* x[C];
    for (int c = 0; c < C; ++c) x[c] = a.xq + (m + c) * nb;
    GroupAcc<C> acc;
    const Slice low4 = slice_set1(0x0f0f0f0f), two_bits = slice_set1(0x03030303);
    for (int64_t sb = 0; sb < n_super; ++sb) {
        const block_q6_Kx16& g = grp[sb];
        if constexpr (C == 1) prefetch_ahead<Ahead::Always>(&g, sizeof(g));  // on Zen 4 too
        for (int h = 0; h < kHalves; ++h) {
            // Load the super-block's ql and qh once, in address order, then decode in registers/L1:
            // codes[8 * (4t + i) + e] holds elements 128t + 32i + 4e .. +3. (Loads interleaved with the
            // decoding streamed from DRAM at 8 GB/s, against 18 this way.)
            Slice codes[64], tops[16];
            for (int j = 0; j < 32; ++j) codes[j] = slice_load(g.ql + 64 * j + 4 * kSliceRows * h);  // in address order
            for (int j = 0; j < 16; ++j) tops[j] = slice_load(g.qh + 64 * j + 4 * kSliceRows * h);
            for (int t = 1; t >= 0; --t) {  // in place: half t's codes go to 32t .. 32t + 31, over inputs already used
                for (int e = 0; e < 8; ++e) {
                    const Slice a_lo = codes[16 * t + e], b_lo = codes[16 * t + 8 + e], top = tops[8 * t + e];
                    const Slice nibs[4] = {slice_and(a_lo, low4), slice_and(b_lo, low4), slice_and(slice_srl16(a_lo, 4), low4),
                                           slice_and(slice_srl16(b_lo, 4), low4)};
                    for (int i = 0; i < 4; ++i)
                        codes[8 * (4 * t + i) + e] =
                            slice_or(nibs[i], slice_sll16(slice_and(slice_srl16(top, 2 * i), two_bits), 4));
                }
            }
            const vf d = vf_load_f16(g.d + kSliceRows * h);
            for (int blk = 0; blk < kQK_K / kQK; ++blk) {  // activation block blk: sub-blocks 2 blk, 2 blk + 1
                const vf d_lo = vf_mul(d, bytes_to_vf<true>(load128(g.scales + kPackRows * (2 * blk)), h));
                const vf d_hi = vf_mul(d, bytes_to_vf<true>(load128(g.scales + kPackRows * (2 * blk + 1)), h));
                const Slice* w = codes + 8 * blk;
                for (int c = 0; c < C; ++c) {
                    const block_q8_act& xb = x[c][sb * (kQK_K / kQK) + blk];
                    const auto* xq = reinterpret_cast<const int32_t*>(xb.qs);
                    const int32_t s_lo = sum16(xb.qs);
                    Slice lo = slice_offset_sum(32, s_lo), hi = slice_offset_sum(32, xb.s - s_lo);
                    for (int e = 0; e < 4; ++e) lo = slice_dot_small(lo, w[e], slice_set1(xq[e]));
                    for (int e = 4; e < 8; ++e) hi = slice_dot_small(hi, w[e], slice_set1(xq[e]));
                    const vf xd = vf_set1(xb.d);
                    acc[c][h] = vf_fma(slice_to_float(lo), vf_mul(d_lo, xd), acc[c][h]);
                    acc[c][h] = vf_fma(slice_to_float(hi), vf_mul(d_hi, xd), acc[c][h]);
                }
            }
        }
    }
    acc.store(a, n, m);
}

template <WeightType T>
struct KQuantX16 {
    template <int C>
    static void tile(const MatmulArgs& a, int64_t n, int64_t m) {
        if constexpr (T == WeightType::Q6_K) tile_q6_k_x16<C>(a, n, m);
        else tile_q45_k_x16<T == WeightType::Q5_K, C>(a, n, m);
    }
};

}  // namespace

void fill_matmul_kquant_x16(KernelTable& t) {
    t.matmul_q4_kx16 = matmul_groups<KQuantX16<WeightType::Q4_K>>;
    t.matmul_q5_kx16 = matmul_groups<KQuantX16<WeightType::Q5_K>>;
    t.matmul_q6_kx16 = matmul_groups<KQuantX16<WeightType::Q6_K>>;
}

}  // namespace corelm::CORELM_ISA_NS
