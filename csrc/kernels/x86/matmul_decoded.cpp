// x86 matrix products of the types decoded before they are multiplied (decode.h): the k-quants
// (Q4_K, Q5_K, Q6_K) and Q4_1 / Q5_0 / Q5_1, compiled once per path (avx2, avx512; simd.h).
// A tile of R weight rows decodes each row's block (a k-quant super-block: 8 sub-blocks of 32)
// once, to int8 codes and float scales, then every 32 codes meet C activation rows in one
// vpdpbusd (AVX-512 VNNI) or vpmaddubsw/vpmaddwd (AVX2) dot of 8 int32 lanes, scaled in float:
// lanes 0-3 cover elements 0-15 and lanes 4-7 elements 16-31, so Q6_K's scale per 16 is a
// per-lane float and needs no integer multiply. Mins (Q4_K, Q5_K, Q4_1, Q5_1) are applied once
// per 32 through the activation block's sum.
#include "../../core/decode.h"
#include "../../core/kernel_table.h"
#include "simd.h"

#include <cstring>

#ifndef CORELM_ISA_NS
#error "compile with -DCORELM_ISA_NS=<path name>"
#endif

namespace corelm::CORELM_ISA_NS {

using namespace corelm::x86;

namespace {

constexpr bool is_kquant(WeightType t) { return t == WeightType::Q4_K || t == WeightType::Q5_K || t == WeightType::Q6_K; }

// One decoded block of a row: G sub-blocks of 32 codes. value = scale * q + min, where the
// scale is per 32 (lanes[8j .. 8j+7] all equal) or, for Q6_K, per 16 (lanes 0-3 and 4-7 differ).
template <WeightType T>
struct Block {
    static constexpr int G = is_kquant(T) ? kQK_K / kQK : 1;
    static constexpr bool kSigned = T == WeightType::Q6_K || T == WeightType::Q5_0;  // codes may be < 0
    static constexpr bool kMin = T != WeightType::Q6_K && T != WeightType::Q5_0;
    alignas(32) int8_t q[kQK * G];
    alignas(32) float lane_scale[8 * G];
    float min[G];

    void decode(const uint8_t* p);

    void store(int i, __m256i codes) { _mm256_store_si256(reinterpret_cast<__m256i*>(q + i), codes); }
    void scale_per_32(int j, float s) { _mm256_store_ps(lane_scale + 8 * j, _mm256_set1_ps(s)); }
};

inline __m256i load256(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline __m256i low4(__m256i v) { return _mm256_and_si256(v, _mm256_set1_epi8(0x0f)); }
inline __m256i high4(__m256i v) { return _mm256_and_si256(_mm256_srli_epi16(v, 4), _mm256_set1_epi8(0x0f)); }

// 32 bytes, byte i = 0x10 where bit i of qh is set (the fifth bit of element i).
inline __m256i fifth_bits(const uint8_t* qh4) {
    uint32_t qh;
    std::memcpy(&qh, qh4, 4);
    const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32(int(qh)),
        _mm256_setr_epi64x(0, 0x0101010101010101, 0x0202020202020202, 0x0303030303030303));
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201);
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit), _mm256_set1_epi8(0x10));
}

// The 32-element blocks: 16 bytes of nibbles (element i low, i + 16 high) and for Q5 a fifth bit.
template <WeightType T>
void decode_32_simd(const uint8_t* p, Block<T>& out) {
    const uint8_t* qs;
    const uint8_t* qh = nullptr;
    float d, m = 0.0f;
    if constexpr (T == WeightType::Q4_1) {
        const auto& b = *reinterpret_cast<const block_q4_1*>(p);
        qs = b.qs, d = _cvtsh_ss(b.d), m = _cvtsh_ss(b.m);
    } else if constexpr (T == WeightType::Q5_1) {
        const auto& b = *reinterpret_cast<const block_q5_1*>(p);
        qs = b.qs, qh = b.qh, d = _cvtsh_ss(b.d), m = _cvtsh_ss(b.m);
    } else {
        const auto& b = *reinterpret_cast<const block_q5_0*>(p);
        qs = b.qs, qh = b.qh, d = _cvtsh_ss(b.d);
    }
    const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
    __m256i codes = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(packed, 4), _mm_set1_epi8(0x0f)),
                                     _mm_and_si128(packed, _mm_set1_epi8(0x0f)));
    if (qh) codes = _mm256_or_si256(codes, fifth_bits(qh));
    if constexpr (T == WeightType::Q5_0) codes = _mm256_sub_epi8(codes, _mm256_set1_epi8(16));
    out.store(0, codes);
    out.scale_per_32(0, d);
    out.min[0] = m;
}

// Q4_K / Q5_K: 64 elements per 32 bytes (low nibbles, then high); Q5_K's fifth bits for chunk c
// are bits 2c and 2c + 1 of qh[0..31].
template <WeightType T>
void decode_q45_k_simd(const uint8_t* p, Block<T>& out) {
    const auto& h = *reinterpret_cast<const block_q4_K*>(p);
    const uint8_t* qs = T == WeightType::Q5_K ? reinterpret_cast<const block_q5_K*>(p)->qs : h.qs;
    const float d = _cvtsh_ss(h.d), dmin = _cvtsh_ss(h.dmin);
    for (int j = 0; j < kQK_K / 32; ++j) {
        uint8_t sc, mn;
        scale_min_k4(j, h.scales, sc, mn);
        out.scale_per_32(j, d * float(sc));
        out.min[j] = -dmin * float(mn);
    }
    __m256i qh = _mm256_setzero_si256();
    if constexpr (T == WeightType::Q5_K) qh = load256(reinterpret_cast<const block_q5_K*>(p)->qh);
    for (int c = 0; c < kQK_K / 64; ++c) {
        const __m256i v = load256(qs + 32 * c);
        __m256i lo = low4(v), hi = high4(v);
        if constexpr (T == WeightType::Q5_K) {
            const __m256i one = _mm256_set1_epi8(1);
            lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * c), one), 4));
            hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * c + 1), one), 4));
        }
        out.store(64 * c, lo);
        out.store(64 * c + 32, hi);
    }
}

// Q6_K: per half of 128, ql[0..63] hold the low nibbles (elements l, l+32 low; l+64, l+96 high)
// and qh[0..31] the top two bits of elements l, l+32, l+64, l+96 at bits 0, 2, 4, 6.
void decode_q6_k_simd(const uint8_t* p, Block<WeightType::Q6_K>& out) {
    const auto& b = *reinterpret_cast<const block_q6_K*>(p);
    const float d = _cvtsh_ss(b.d);
    for (int j = 0; j < kQK_K / 32; ++j) {
        const float lo = d * float(b.scales[2 * j]), hi = d * float(b.scales[2 * j + 1]);
        _mm256_store_ps(out.lane_scale + 8 * j, _mm256_setr_ps(lo, lo, lo, lo, hi, hi, hi, hi));
    }
    const __m256i three = _mm256_set1_epi8(3), offset = _mm256_set1_epi8(32);
    for (int h = 0; h < 2; ++h) {
        const __m256i ql0 = load256(b.ql + 64 * h), ql1 = load256(b.ql + 64 * h + 32), qh = load256(b.qh + 32 * h);
        const __m256i top[4] = {
            _mm256_slli_epi16(_mm256_and_si256(qh, three), 4),
            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), three), 4),
            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), three), 4),
            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), three), 4),
        };
        const __m256i low[4] = {low4(ql0), low4(ql1), high4(ql0), high4(ql1)};
        for (int i = 0; i < 4; ++i) out.store(128 * h + 32 * i, _mm256_sub_epi8(_mm256_or_si256(low[i], top[i]), offset));
    }
}

template <WeightType T>
void Block<T>::decode(const uint8_t* p) {
    if constexpr (T == WeightType::Q6_K) {
        decode_q6_k_simd(p, *this);
    } else if constexpr (is_kquant(T)) {
        decode_q45_k_simd<T>(p, *this);
    } else {
        decode_32_simd<T>(p, *this);
    }
}

template <WeightType T, int R, int C>
void tile_decoded(const MatmulArgs& a, int64_t n, int64_t m) {
    using B = Block<T>;
    constexpr int G = B::G;
    const size_t block_bytes = row_bytes(T, kQK * G);
    const int64_t nblocks = a.k / (kQK * G), nb = a.k / kQK;
    const uint8_t* w[R];
    for (int r = 0; r < R; ++r) w[r] = a.w + (n + r) * a.w_stride;
    const block_q8_act* x[C];
    for (int c = 0; c < C; ++c) x[c] = a.xq + (m + c) * nb;
    __m256 acc[R][C];
    float mins[R][C] = {};
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
    B dec[R];
    for (int64_t blk = 0; blk < nblocks; ++blk) {
        for (int r = 0; r < R; ++r) dec[r].decode(w[r] + blk * block_bytes);
        for (int j = 0; j < G; ++j) {
            __m256i wq[R], wu[R];
            for (int r = 0; r < R; ++r) {
                wq[r] = _mm256_load_si256(reinterpret_cast<const __m256i*>(dec[r].q + kQK * j));
                wu[r] = B::kSigned ? _mm256_abs_epi8(wq[r]) : wq[r];
            }
            for (int c = 0; c < C; ++c) {
                const block_q8_act& xb = x[c][blk * G + j];
                const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.qs));
                const __m256 xd = _mm256_set1_ps(xb.d);
                for (int r = 0; r < R; ++r) {
                    // Unsigned operand first: |w| and x with w's sign when codes can be negative.
                    const __m256i xs = B::kSigned ? _mm256_sign_epi8(xq, wq[r]) : xq;
                    const __m256i dot = dot_u8s8(_mm256_setzero_si256(), wu[r], xs);
                    const __m256 scale = _mm256_mul_ps(_mm256_load_ps(dec[r].lane_scale + 8 * j), xd);
                    acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[r][c]);
                    if constexpr (B::kMin) mins[r][c] += dec[r].min[j] * xb.d * float(xb.s);
                }
            }
        }
    }
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) a.y[(m + c) * a.ldy + n + r] = hsum_f32x8(acc[r][c]) + mins[r][c];
}

// Tiles of 4 weight rows x up to 4 activation rows; smaller ones at the edges.
template <WeightType T>
void matmul_decoded(const MatmulArgs& a, int64_t n0, int64_t n1) {
    using TileFn = void (*)(const MatmulArgs&, int64_t, int64_t);
    static constexpr TileFn tiles[4][4] = {
        {tile_decoded<T, 1, 1>, tile_decoded<T, 1, 2>, tile_decoded<T, 1, 3>, tile_decoded<T, 1, 4>},
        {tile_decoded<T, 2, 1>, tile_decoded<T, 2, 2>, tile_decoded<T, 2, 3>, tile_decoded<T, 2, 4>},
        {tile_decoded<T, 3, 1>, tile_decoded<T, 3, 2>, tile_decoded<T, 3, 3>, tile_decoded<T, 3, 4>},
        {tile_decoded<T, 4, 1>, tile_decoded<T, 4, 2>, tile_decoded<T, 4, 3>, tile_decoded<T, 4, 4>},
    };
    for (int64_t n = n0; n < n1; n += 4) {
        const int64_t r = n1 - n < 4 ? n1 - n : 4;
        for (int64_t m = 0; m < a.m; m += 4) tiles[r - 1][(a.m - m < 4 ? a.m - m : 4) - 1](a, n, m);
    }
}

}  // namespace

void fill_matmul_decoded(KernelTable& t) {
    t.matmul_q4_1 = matmul_decoded<WeightType::Q4_1>;
    t.matmul_q5_0 = matmul_decoded<WeightType::Q5_0>;
    t.matmul_q5_1 = matmul_decoded<WeightType::Q5_1>;
    t.matmul_q4_k = matmul_decoded<WeightType::Q4_K>;
    t.matmul_q5_k = matmul_decoded<WeightType::Q5_K>;
    t.matmul_q6_k = matmul_decoded<WeightType::Q6_K>;
}

}  // namespace corelm::CORELM_ISA_NS
