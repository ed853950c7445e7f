// x86 matrix products, compiled once per path (avx2, avx512; see simd.h). Outputs are
// computed in register tiles of R weight rows x C activation rows so every weight loaded
// from memory serves C activation rows (decode has C = 1 and streams weights; prefill
// reuses each weight tile across the prompt).
#include <cmath>
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

constexpr int kTileR = 4;  // weight rows per tile
constexpr int kTileC = 4;  // activation rows per tile

// ---- activation quantization (bit-identical to ref::quantize_act) ----

void quantize_act(const float* x, block_q8_act* y, int64_t k) {
    const __m256 sign_mask = _mm256_set1_ps(-0.0f);
    for (int64_t b = 0; b < k / kQK; ++b, x += kQK) {
        __m256 v[4];
        __m256 amax = _mm256_setzero_ps();
        for (int i = 0; i < 4; ++i) {
            v[i] = _mm256_loadu_ps(x + 8 * i);
            amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign_mask, v[i]));
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        const float am = _mm_cvtss_f32(m4);
        const float id = am != 0.0f ? 127.0f / am : 0.0f;
        const __m256 idv = _mm256_set1_ps(id);
        __m256i q[4];
        for (int i = 0; i < 4; ++i) q[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], idv));
        // Sum of the codes, for Q4_0's -8 offset.
        __m256i s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
        // Pack int32 -> int8; the packs interleave 128-bit lanes, the permute restores order.
        const __m256i p16a = _mm256_packs_epi32(q[0], q[1]);
        const __m256i p16b = _mm256_packs_epi32(q[2], q[3]);
        __m256i p8 = _mm256_packs_epi16(p16a, p16b);
        p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(y[b].qs), p8);
        y[b].d = am / 127.0f;
        y[b].s = _mm_cvtsi128_si32(s4);
    }
}

// ---- integer weight types: decode a block to 32 signed codes, then one shared dot ----

struct DecodeQ8_0 {
    using Block = block_q8_0;
    static __m256i codes(const Block& b) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qs)); }
};

struct DecodeQ4_0 {
    using Block = block_q4_0;
    static __m256i codes(const Block& b) {
        const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs));
        const __m128i lo = _mm_and_si128(packed, _mm_set1_epi8(0x0f));
        const __m128i hi = _mm_and_si128(_mm_srli_epi16(packed, 4), _mm_set1_epi8(0x0f));
        const __m256i q = _mm256_set_m128i(hi, lo);
        return _mm256_sub_epi8(q, _mm256_set1_epi8(8));
    }
};

template <typename Decode, int R, int C>
void tile_quant(const MatmulArgs& a, int64_t n, int64_t m) {
    using Block = typename Decode::Block;
    const int64_t nb = a.k / kQK;
    const Block* w[R];
    for (int r = 0; r < R; ++r) w[r] = reinterpret_cast<const Block*>(a.w + (n + r) * a.w_stride);
    const block_q8_act* x[C];
    for (int c = 0; c < C; ++c) x[c] = a.xq + (m + c) * nb;
    __m256 acc[R][C];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        __m256i wabs[R], wq[R];
        __m256 wd[R];
        for (int r = 0; r < R; ++r) {
            wq[r] = Decode::codes(w[r][b]);
            wabs[r] = _mm256_abs_epi8(wq[r]);
            wd[r] = _mm256_set1_ps(_cvtsh_ss(w[r][b].d));
        }
        for (int c = 0; c < C; ++c) {
            const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[c][b].qs));
            const __m256 xd = _mm256_set1_ps(x[c][b].d);
            for (int r = 0; r < R; ++r) {
                // |w| * (x with w's sign) == w * x, with the unsigned operand first.
                const __m256i dot = dot_u8s8(_mm256_setzero_si256(), wabs[r], _mm256_sign_epi8(xq, wq[r]));
                acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(wd[r], xd), acc[r][c]);
            }
        }
    }
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) a.y[(m + c) * a.ldy + n + r] = hsum_f32x8(acc[r][c]);
}


// ---- packed groups of 16 rows (block_q4_0x16, q4_1x16, q5_0x16, q5_1x16, q8_0x16) ----
// Each vector of weight codes holds one 4-element slice of kSliceRows rows (a row per 32-bit
// lane), so one dot instruction against that slice of the activations, broadcast, adds 4
// products to kSliceRows outputs. Eight slices cover a block; one fma per block applies the
// row scales. AVX-512 covers the 16 rows in one vector, AVX2 in two. The codes are unsigned
// with an offset (8, 16, 128) taken back through the activation block's sum.

enum class X16 { Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 };

// The block of each layout; Q4_1 / Q5_1 add m (the value of code 0) per row, Q5_* fifth bits.
template <X16 L>
using X16Block = std::conditional_t<
    L == X16::Q4_0, block_q4_0x16,
    std::conditional_t<L == X16::Q4_1, block_q4_1x16,
                       std::conditional_t<L == X16::Q5_0, block_q5_0x16,
                                          std::conditional_t<L == X16::Q5_1, block_q5_1x16, block_q8_0x16>>>>;

// One block of a group (16 rows x 32 elements) times block b of C activation rows, into acc.
template <X16 L, int C>
inline void block_x16(const X16Block<L>& blk, const block_q8_act* const (&x)[C], int64_t b, GroupAcc<C>& acc) {
    constexpr bool kFifthBit = L == X16::Q5_0 || L == X16::Q5_1;
    constexpr bool kMin = L == X16::Q4_1 || L == X16::Q5_1;  // value = d * q + m, codes unsigned
    Slice w[8][kHalves];  // w[j][h]: elements 4j..4j+3 of rows h*kSliceRows ..
    for (int h = 0; h < kHalves; ++h) {
        if constexpr (L == X16::Q8_0) {
            for (int j = 0; j < 8; ++j) w[j][h] = slice_load(blk.qs + 64 * j + 4 * kSliceRows * h);
        } else {
            for (int j = 0; j < 4; ++j) {
                const Slice v = slice_load(blk.qs + 64 * j + 4 * kSliceRows * h);
                w[j][h] = slice_low4(v);
                w[4 + j][h] = slice_high4(v);
            }
            if constexpr (kFifthBit) {  // the fifth bits: bit i of the row's qh for element i
                const Slice qh = slice_load(reinterpret_cast<const uint8_t*>(blk.qh + kSliceRows * h));
                for (int j = 0; j < 4; ++j) {
                    w[j][h] = slice_or(w[j][h], slice_bits_to_0x10(qh, 4 * j));
                    w[4 + j][h] = slice_or(w[4 + j][h], slice_bits_to_0x10(qh, 16 + 4 * j));
                }
            }
        }
    }
    vf wd[kHalves], wm[kHalves];
    for (int h = 0; h < kHalves; ++h) {
        wd[h] = vf_load_f16(blk.d + kSliceRows * h);
        if constexpr (kMin) wm[h] = vf_load_f16(blk.m + kSliceRows * h);
    }
    for (int c = 0; c < C; ++c) {
        const auto* xq = reinterpret_cast<const int32_t*>(x[c][b].qs);
        const vf xd = vf_set1(x[c][b].d);
        for (int h = 0; h < kHalves; ++h) {
            // Two chains of dot products (even and odd slices), so their latencies overlap.
            Slice isum[2] = {L == X16::Q4_0   ? slice_offset_sum(8, x[c][b].s)
                             : L == X16::Q5_0 ? slice_offset_sum(16, x[c][b].s)
                             : L == X16::Q8_0 ? slice_q8_start(x[c][b].s)
                                              : slice_set1(0),
                             slice_set1(0)};
            for (int j = 0; j < 8; ++j) {
                const Slice xb = slice_set1(xq[j]);
                isum[j % 2] = L == X16::Q8_0 ? slice_dot_q8(isum[j % 2], w[j][h], xb)
                                             : slice_dot_small(isum[j % 2], w[j][h], xb);
            }
            acc[c][h] = vf_fma(slice_to_float(slice_add(isum[0], isum[1])), vf_mul(wd[h], xd), acc[c][h]);
            if constexpr (kMin) acc[c][h] = vf_fma(wm[h], vf_set1(x[c][b].d * float(x[c][b].s)), acc[c][h]);
        }
    }
}

template <X16 L, int C>
void tile_x16(const MatmulArgs& a, int64_t n, int64_t m) {
    using Block = X16Block<L>;
    const int64_t nb = a.k / kQK;
    const auto* grp = reinterpret_cast<const Block*>(a.w + n * a.w_stride);
    const block_q8_act* x[C];
    for (int c = 0; c < C; ++c) x[c] = a.xq + (m + c) * nb;
    GroupAcc<C> acc;
    for (int64_t b = 0; b < nb; ++b) {
        prefetch_for_tile<C>(grp + nb + b, sizeof(Block));  // the next group's block b
        if constexpr (C == 1)
            if (L != X16::Q8_0 || g_decode_tuning.prefetch_q8_0) prefetch_ahead(grp + b, sizeof(Block));
        block_x16<L, C>(grp[b], x, b, acc);
    }
    acc.store(a, n, m);
}

// Q8_0_B16 (formats.h): the blocks the group's map keeps, Q8_0_X16's product on each; the others are
// neither read nor multiplied. A corrupted map names no block past k nor more than the group holds.
template <int C>
void tile_q8_0b16(const MatmulArgs& a, int64_t n, int64_t m) {
    const int64_t nb = a.k / kQK;
    const size_t group_bytes = size_t(kPackRows * a.w_stride), map_bytes = block_map_bytes(nb);
    const uint8_t* group = a.w + n * a.w_stride;
    const auto* stored = reinterpret_cast<const block_q8_0x16*>(group + map_bytes);
    const int64_t room = int64_t((group_bytes - map_bytes) / sizeof(block_q8_0x16));
    const block_q8_act* x[C];
    for (int c = 0; c < C; ++c) x[c] = a.xq + (m + c) * nb;
    GroupAcc<C> acc;
    int64_t i = 0;  // stored blocks so far
    for (int64_t word = 0; word * 64 < nb; ++word) {
        for (uint64_t bits = block_map_word(group, nb, word); bits && i < room; bits &= bits - 1, ++i) {
            prefetch_for_tile<C>(reinterpret_cast<const uint8_t*>(stored + i) + group_bytes, sizeof(block_q8_0x16));
            if constexpr (C == 1) prefetch_ahead(stored + i, sizeof(block_q8_0x16));
            block_x16<X16::Q8_0, C>(stored[i], x, 64 * word + __builtin_ctzll(bits), acc);
        }
    }
    acc.store(a, n, m);
}

// Kernel families with a tile<C>(a, n, m) over 16 rows x C activation rows.
template <X16 L>
struct QuantX16 {
    template <int C>
    static void tile(const MatmulArgs& a, int64_t n, int64_t m) { tile_x16<L, C>(a, n, m); }
};

struct BlocksQ8_0 {
    template <int C>
    static void tile(const MatmulArgs& a, int64_t n, int64_t m) { tile_q8_0b16<C>(a, n, m); }
};

// ---- float weight types: element loaders ----

struct LoadF32 {
    using T = float;
    static vf load(const T* p) { return vf_load(p); }
    static float at(const T* p) { return *p; }
};
struct LoadF16 {
    using T = uint16_t;
    static vf load(const T* p) { return vf_load_f16(p); }
    static float at(const T* p) { return _cvtsh_ss(*p); }
};
struct LoadBF16 {
    using T = uint16_t;
    static vf load(const T* p) { return vf_load_bf16(p); }
    static float at(const T* p) { return bf16_to_f32(*p); }
};

// ---- packed float groups (F32_X16 / F16_X16 / BF16_X16): lanes are rows ----


template <typename Load, int C>
void tile_float_x16(const MatmulArgs& a, int64_t n, int64_t m) {
    const auto* grp = reinterpret_cast<const typename Load::T*>(a.w + n * a.w_stride);
    const float* x[C];
    for (int c = 0; c < C; ++c) x[c] = a.x + (m + c) * a.ldx;
    GroupAcc<C> acc;
    for (int64_t i = 0; i < a.k; ++i) {
        vf w[kHalves];
        for (int h = 0; h < kHalves; ++h) w[h] = Load::load(grp + i * kPackRows + h * kLanes);
        for (int c = 0; c < C; ++c) {
            const vf xb = vf_set1(x[c][i]);
            for (int h = 0; h < kHalves; ++h) acc[c][h] = vf_fma(w[h], xb, acc[c][h]);
        }
    }
    acc.store(a, n, m);
}

template <typename Load>
struct FloatX16 {
    template <int C>
    static void tile(const MatmulArgs& a, int64_t n, int64_t m) { tile_float_x16<Load, C>(a, n, m); }
};

template <typename Load, int R, int C>
void tile_float(const MatmulArgs& a, int64_t n, int64_t m) {
    using T = typename Load::T;
    const T* w[R];
    for (int r = 0; r < R; ++r) w[r] = reinterpret_cast<const T*>(a.w + (n + r) * a.w_stride);
    const float* x[C];
    for (int c = 0; c < C; ++c) x[c] = a.x + (m + c) * a.ldx;
    vf acc[R][C];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) acc[r][c] = vf_zero();
    const int64_t kv = a.k - a.k % kLanes;
    for (int64_t i = 0; i < kv; i += kLanes) {
        vf wv[R];
        for (int r = 0; r < R; ++r) wv[r] = Load::load(w[r] + i);
        for (int c = 0; c < C; ++c) {
            const vf xv = vf_load(x[c] + i);
            for (int r = 0; r < R; ++r) acc[r][c] = vf_fma(wv[r], xv, acc[r][c]);
        }
    }
    for (int r = 0; r < R; ++r) {
        for (int c = 0; c < C; ++c) {
            float s = vf_sum(acc[r][c]);
            for (int64_t i = kv; i < a.k; ++i) s += Load::at(w[r] + i) * x[c][i];
            a.y[(m + c) * a.ldy + n + r] = s;
        }
    }
}

// ---- driver: cover y[0:m, n0:n1] with tiles, smaller ones at the edges ----

using TileFn = void (*)(const MatmulArgs&, int64_t n, int64_t m);

template <template <typename, int, int> class Tile, typename P, int R>
constexpr TileFn pick_c(int c) {
    return c == 4 ? Tile<P, R, 4>::run : c == 3 ? Tile<P, R, 3>::run : c == 2 ? Tile<P, R, 2>::run : Tile<P, R, 1>::run;
}

template <typename Decode, int R, int C>
struct QuantTile { static void run(const MatmulArgs& a, int64_t n, int64_t m) { tile_quant<Decode, R, C>(a, n, m); } };
template <typename Load, int R, int C>
struct FloatTile { static void run(const MatmulArgs& a, int64_t n, int64_t m) { tile_float<Load, R, C>(a, n, m); } };

template <template <typename, int, int> class Tile, typename P>
void matmul_tiled(const MatmulArgs& a, int64_t n0, int64_t n1) {
    static_assert(kTileR == 4 && kTileC == 4, "pick_c / the switch below spell out tiles up to 4");
    for (int64_t n = n0; n < n1; n += kTileR) {
        const int r = int(n1 - n < kTileR ? n1 - n : kTileR);
        for (int64_t m = 0; m < a.m; m += kTileC) {
            const int c = int(a.m - m < kTileC ? a.m - m : kTileC);
            TileFn fn = r == 4 ? pick_c<Tile, P, 4>(c) : r == 3 ? pick_c<Tile, P, 3>(c)
                      : r == 2 ? pick_c<Tile, P, 2>(c) : pick_c<Tile, P, 1>(c);
            fn(a, n, m);
        }
    }
}

void matmul_q8_0(const MatmulArgs& a, int64_t n0, int64_t n1) { matmul_tiled<QuantTile, DecodeQ8_0>(a, n0, n1); }
void matmul_q4_0(const MatmulArgs& a, int64_t n0, int64_t n1) { matmul_tiled<QuantTile, DecodeQ4_0>(a, n0, n1); }
void matmul_f32(const MatmulArgs& a, int64_t n0, int64_t n1) { matmul_tiled<FloatTile, LoadF32>(a, n0, n1); }
void matmul_f16(const MatmulArgs& a, int64_t n0, int64_t n1) { matmul_tiled<FloatTile, LoadF16>(a, n0, n1); }
void matmul_bf16(const MatmulArgs& a, int64_t n0, int64_t n1) { matmul_tiled<FloatTile, LoadBF16>(a, n0, n1); }

}  // namespace

// Q8_0_X16's product; the sparse kernels run it on rebuilt groups too (matmul_sparse.cpp).
void matmul_q8_0x16(const MatmulArgs& a, int64_t n0, int64_t n1) { matmul_groups<QuantX16<X16::Q8_0>>(a, n0, n1); }

void fill_matmul_decoded(KernelTable& t);      // matmul_decoded.cpp
void fill_matmul_kquant_x16(KernelTable& t);  // matmul_kquant_x16.cpp
#ifdef __AVX512F__
void fill_matmul_sparse(KernelTable& t);      // matmul_sparse.cpp (AVX-512 VBMI / VBMI2)
#endif

void fill_matmul(KernelTable& t) {
    fill_matmul_decoded(t);
    fill_matmul_kquant_x16(t);
    t.quantize_act = quantize_act;
    t.matmul_f32 = matmul_f32;
    t.matmul_f16 = matmul_f16;
    t.matmul_bf16 = matmul_bf16;
    t.matmul_q8_0 = matmul_q8_0;
    t.matmul_q4_0 = matmul_q4_0;
    t.matmul_q8_0x16 = matmul_q8_0x16;
    t.matmul_q8_0b16 = matmul_groups<BlocksQ8_0>;
    t.matmul_q4_0x16 = matmul_groups<QuantX16<X16::Q4_0>>;
    t.matmul_q5_0x16 = matmul_groups<QuantX16<X16::Q5_0>>;
    t.matmul_q4_1x16 = matmul_groups<QuantX16<X16::Q4_1>>;
    t.matmul_q5_1x16 = matmul_groups<QuantX16<X16::Q5_1>>;
    t.matmul_f32x16 = matmul_groups<FloatX16<LoadF32>>;
    t.matmul_f16x16 = matmul_groups<FloatX16<LoadF16>>;
    t.matmul_bf16x16 = matmul_groups<FloatX16<LoadBF16>>;
#ifdef __AVX512F__
    fill_matmul_sparse(t);
#endif
}

}  // namespace corelm::CORELM_ISA_NS
