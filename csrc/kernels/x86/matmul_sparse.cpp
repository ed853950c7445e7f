// The sparse layouts (formats.h) on AVX-512 VBMI / VBMI2, built into the avx512 path only and used
// only where the CPU has both (otherwise the reference runs, and models decode them to dense at load).
//
// Q8_0_S16: each 64-byte slice of a group's block is rebuilt in a register by one vpexpandb (the
// stored codes to the mask's lanes, code 0 elsewhere), then the product is Q8_0_X16's - vpdpbusd
// against the broadcast activations. Decode reads 6 + (stored codes) bytes per row and block, not 34.
//
// Q8_0_24: no zero is multiplied. A slice holds 4 kept codes of 16 rows for 8 elements; one vpshufb
// picks each row's 4 activations out of those 8 (of 16 broadcast to every lane: 2 slices' worth;
// positions from the 2-bit metadata, expanded once per block by vpmultishiftqb and, for a prompt,
// once per kMChunk rows), then one vpdpbusd - half Q8_0_X16's dot products, though each vpshufb
// takes a port a vpdpbusd could use (Intel: two vpdpbusd ports, one of them vpshufb's; Zen 5 gains
// 1.20x on a 512-row GEMM, vpermb picking from all 32 no more).
// The activations are the unsigned operand here (code + 128, flipped once per call), the weights
// the signed one; the +128 is taken back once per block through the rows' code sums.
#include <algorithm>
#include <cstring>
#include <vector>

#include "../../core/cpu_features.h"
#include "../../core/kernel_table.h"
#include "groups.h"
#include "simd.h"

namespace corelm::CORELM_ISA_NS {

using namespace corelm::x86;

void matmul_q8_0x16(const MatmulArgs& a, int64_t n0, int64_t n1);  // matmul.cpp

namespace {

// A Q8_0_S16 group read block after block. `next` (the next block's byte offset) grows by the masks'
// popcounts alone: that chain is what each block waits for, so it carries no clamp. Reads are clamped
// to the group in its last blocks only (the rest cannot reach its end, whatever their masks say; the
// clamps cost Zen 5 7% at 70% zeros): a corrupted file gives wrong numbers, not a crash (the loader
// checks each group once and names the tensor). Headers and codes in two streams instead (the
// header chain then holds no load) ran slower on Zen 5: 1.6-2.0x the time at 50% zeros, 1 thread.
struct SparseGroup {
    const uint8_t* base = nullptr;
    int64_t next = 0;
    int64_t last_load = 0;  // the last offset a kSparsePad-byte load may start at

    SparseGroup() = default;
    SparseGroup(const MatmulArgs& a, int64_t n)
        : base(a.w + n * a.w_stride), last_load(kPackRows * a.w_stride - int64_t(kSparsePad)) {}

    // Rebuilds the 8 slices of the next block and returns its header (for the scales); `prefetch`
    // (decode): fetches 6 lines g_decode_tuning.prefetch_bytes on, if the CPU's tuning prefetches. A
    // fixed count, not the block's own lines: that loop's count varied block by block, and its
    // mispredicted exits cost more than the spare prefetches (Zen 5, 70% zeros, 1 thread: 205 -> 165 us).
    const block_q8_0s16& expand(Slice (&w)[kQK / 4], bool prefetch) {
        if (prefetch) prefetch_ahead(base + next, 6 * 64);
        // A block's reads end at most kMaxBlock bytes on: short of the group's end no read needs its clamp.
        constexpr int64_t kMaxBlock = int64_t(sizeof(block_q8_0s16)) + kQK * kPackRows;
        return next + kMaxBlock <= last_load + int64_t(kSparsePad) ? expand_block<false>(w) : expand_block<true>(w);
    }

    template <bool Clamp>
    const block_q8_0s16& expand_block(Slice (&w)[kQK / 4]) {
        const auto at = [&](int64_t offset) { return base + (Clamp ? std::min(offset, last_load) : offset); };
        const __m512i zero_code = _mm512_set1_epi8(char(0x80));
        const int64_t head_at = Clamp ? std::min(next, last_load - int64_t(sizeof(block_q8_0s16))) : next;
        const auto& head = *reinterpret_cast<const block_q8_0s16*>(base + head_at);
        int64_t codes = next + int64_t(sizeof(block_q8_0s16));
        for (int j = 0; j < kQK / 4; ++j) {
            const uint64_t mask = head.mask[j];
            // The register form of vpexpandb: the compiler would fold the load into the memory form, which
            // Zen 4 runs slower. The padding (kSparsePad) keeps the 64-byte load inside the group.
            __m512i stored = _mm512_loadu_si512(at(codes));
            asm("" : "+v"(stored));
            w[j] = _mm512_mask_expand_epi8(zero_code, mask, stored);
            codes += int64_t(_mm_popcnt_u64(mask));
        }
        next = codes;
        return head;
    }
};

// G row groups (16 weight rows each, from n) x C activation rows. On Intel decode (C = 1) takes 4
// groups at once: each group's next block waits on its own masks, and 4 independent streams keep the
// memory busy where one stalls (Intel Xeon, TinyLlama FFN GEMV, 50% zeros, 1 thread: 1.44 -> 0.90 ms
// without prefetching; with it, 1.61x -> 1.70x dense at 70% zeros; 8 groups gain nothing more). On
// Zen 4, one group at a time is faster (groups.h).
template <int G, int C>
void tile_q8_0s16(const MatmulArgs& a, int64_t n, int64_t m) {
    const int64_t nb = a.k / kQK;
    SparseGroup group[G];
    for (int g = 0; g < G; ++g) group[g] = SparseGroup(a, n + g * kPackRows);
    const block_q8_act* x[C];
    for (int c = 0; c < C; ++c) x[c] = a.xq + (m + c) * nb;
    GroupAcc<C> acc[G];
    for (int64_t b = 0; b < nb; ++b) {
        // Unrolled, so each group's offset chain stays in a register: looped, it went through the stack
        // every block (Zen 4, 4 groups, 50% zeros, 1 thread: 0.53 -> 0.44 ms).
#pragma GCC unroll 4
        for (int g = 0; g < G; ++g) {
            Slice w[kQK / 4];
            const vf wd = vf_load_f16(group[g].expand(w, C == 1).d);
            for (int c = 0; c < C; ++c) {
                const auto* xq = reinterpret_cast<const int32_t*>(x[c][b].qs);
                Slice isum[2] = {slice_q8_start(x[c][b].s), slice_set1(0)};
                for (int j = 0; j < kQK / 4; ++j) isum[j % 2] = slice_dot_q8(isum[j % 2], w[j], slice_set1(xq[j]));
                acc[g][c][0] = vf_fma(slice_to_float(slice_add(isum[0], isum[1])), vf_mul(wd, vf_set1(x[c][b].d)), acc[g][c][0]);
            }
        }
    }
    for (int g = 0; g < G; ++g) acc[g].store(a, n + g * kPackRows, m);
}

struct Unstructured {
    template <int C>
    static void tile(const MatmulArgs& a, int64_t n, int64_t m) { tile_q8_0s16<1, C>(a, n, m); }
};

constexpr int64_t kRebuiltRows = 256;  // activation rows per rebuilt group

// One activation row (decode): tiles of g_decode_tuning.sparse_groups row groups. Up to 8 rows: the slices rebuilt in
// registers serve every row. More (a prompt): each group is rebuilt once per kRebuiltRows rows as a
// Q8_0_X16 group and the dense kernel runs on it, instead of once per tile of 8 rows (TinyLlama-shape
// GEMM, 512 rows: 0.70x -> 0.95x dense).
void matmul_q8_0s16(const MatmulArgs& a, int64_t n0, int64_t n1) {
    if (a.m == 1) {
        int64_t n = n0;
        if (g_decode_tuning.sparse_groups == 4)
            for (; n + 4 * kPackRows <= n1; n += 4 * kPackRows) tile_q8_0s16<4, 1>(a, n, 0);
        for (; n < n1; n += kPackRows) tile_q8_0s16<1, 1>(a, n, 0);
        return;
    }
    if (a.m <= 8) return matmul_groups<Unstructured>(a, n0, n1);
    const int64_t nb = a.k / kQK;
    thread_local std::vector<block_q8_0x16> dense;
    if (int64_t(dense.size()) < nb) dense.resize(size_t(nb));
    for (int64_t m0 = 0; m0 < a.m; m0 += kRebuiltRows) {
        const int64_t m1 = std::min(a.m, m0 + kRebuiltRows);
        for (int64_t n = n0; n < n1; n += kPackRows) {
            SparseGroup group(a, n);
            for (int64_t b = 0; b < nb; ++b) {
                Slice w[kQK / 4];
                std::memcpy(dense[size_t(b)].d, group.expand(w, false).d, sizeof(dense[0].d));
                for (int j = 0; j < kQK / 4; ++j) _mm512_storeu_si512(dense[size_t(b)].qs + 64 * j, w[j]);
            }
            MatmulArgs one = a;
            one.w = reinterpret_cast<const uint8_t*>(dense.data());
            one.w_stride = row_bytes(WeightType::Q8_0_X16, a.k);
            one.xq = a.xq + m0 * nb;
            one.m = m1 - m0;
            one.y = a.y + m0 * a.ldy + n;
            matmul_q8_0x16(one, 0, kPackRows);
        }
    }
}

// ---- Q8_0_24 ----


// What a block's products need besides its codes: where each row's 4 activations of a slice are
// (pick[t]), the rows' start (-128 * the sum of their kept codes) and scales.
struct Picks24 {
    Slice pick[kQK / 8];
    Slice start;
    vf wd;
};

Picks24 picks_24(const block_q8_0x16_24& blk) {
    // meta[t] widened to a qword per 2 rows (rows 2q, 2q+1 in bits 0-7, 8-15); byte e of row r's
    // dword takes 8 bits from bit 2e of its meta byte: then & 3, | 4 for the second group of 4 and
    // | 8 for an odd slice: the element among the 16 activations of slices t & ~1, t | 1.
    const __m512i shifts = _mm512_set1_epi64(0x0e0c0a0806040200);
    const __m512i three = _mm512_set1_epi8(3), offset = _mm512_set1_epi8(char(0x80));
    Picks24 p;
    Slice offset_sum = _mm512_setzero_si512();  // per row: 128 * the sum of its kept codes
    for (int t = 0; t < kQK / 8; ++t) {
        const __m512i meta = _mm512_cvtepu16_epi64(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk.meta[t])));
        const __m512i slice_base = _mm512_set1_epi32(0x04040000 + 0x08080808 * (t % 2));
        p.pick[t] = _mm512_ternarylogic_epi32(_mm512_multishift_epi64_epi8(shifts, meta), three, slice_base, 0xea);
        offset_sum = _mm512_dpbusd_epi32(offset_sum, offset, _mm512_loadu_si512(blk.qs[t]));
    }
    p.start = _mm512_sub_epi32(_mm512_setzero_si512(), offset_sum);
    p.wd = vf_load_f16(blk.d);
    return p;
}

// A prompt's tiles of one row group reuse its picks: worked out once per call, group and kMChunk
// rows, not once per tile of 8 rows (TinyLlama FFN GEMM, 512 rows, Zen 5: 1.13x -> 1.20x dense).
struct GroupPicks {
    int64_t call = -1, n = -1;
    std::vector<Picks24> blocks;
};
thread_local GroupPicks t_picks;
thread_local int64_t t_call = 0;  // this thread's calls of matmul_q8_0_24

const Picks24* group_picks(const block_q8_0x16_24* group, int64_t n, int64_t nb) {
    GroupPicks& g = t_picks;
    if (g.call != t_call || g.n != n) {
        if (int64_t(g.blocks.size()) < nb) g.blocks.resize(size_t(nb));
        for (int64_t b = 0; b < nb; ++b) g.blocks[size_t(b)] = picks_24(group[b]);
        g.call = t_call;
        g.n = n;
    }
    return g.blocks.data();
}

template <int C>
void tile_q8_0_24(const MatmulArgs& a, int64_t n, int64_t m, const uint8_t* flipped) {
    const int64_t nb = a.k / kQK;
    const auto* group = reinterpret_cast<const block_q8_0x16_24*>(a.w + n * a.w_stride);
    const block_q8_act* x[C];
    const uint8_t* xu[C];  // the activations' codes + 128
    for (int c = 0; c < C; ++c) {
        x[c] = a.xq + (m + c) * nb;
        xu[c] = flipped + (m + c) * a.k;
    }
    const Picks24* prepared = C >= 4 ? group_picks(group, n, nb) : nullptr;
    GroupAcc<C> acc;
    for (int64_t b = 0; b < nb; ++b) {
        const block_q8_0x16_24& blk = group[b];
        if constexpr (C == 1) prefetch_ahead(&blk, sizeof(blk));
        const Picks24 p = C >= 4 ? prepared[b] : picks_24(blk);
        Slice w[kQK / 8];
        for (int t = 0; t < kQK / 8; ++t) w[t] = _mm512_loadu_si512(blk.qs[t]);
        for (int c = 0; c < C; ++c) {
            // 16 of the block's activations in every 128-bit lane: vpshufb picks from 2 slices' 8.
            // One chain: two (even and odd slices, as the dense tiles) spill with 8 rows (1.20x -> 1.12x dense).
            Slice isum = p.start;
            for (int t = 0; t < kQK / 8; t += 2) {
                const __m512i xb = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xu[c] + b * kQK + 8 * t)));
                isum = _mm512_dpbusd_epi32(isum, _mm512_shuffle_epi8(xb, p.pick[t]), w[t]);
                isum = _mm512_dpbusd_epi32(isum, _mm512_shuffle_epi8(xb, p.pick[t + 1]), w[t + 1]);
            }
            acc[c][0] = vf_fma(slice_to_float(isum), vf_mul(p.wd, vf_set1(x[c][b].d)), acc[c][0]);
        }
    }
    acc.store(a, n, m);
}

thread_local const uint8_t* t_flipped = nullptr;  // this call's activations, + 128

struct TwoOfFour {
    template <int C>
    static void tile(const MatmulArgs& a, int64_t n, int64_t m) { tile_q8_0_24<C>(a, n, m, t_flipped); }
};

void matmul_q8_0_24(const MatmulArgs& a, int64_t n0, int64_t n1) {
    thread_local std::vector<uint8_t> flipped;
    if (int64_t(flipped.size()) < a.m * a.k) flipped.resize(size_t(a.m * a.k));
    const int64_t nb = a.k / kQK;
    const __m256i offset = _mm256_set1_epi8(char(0x80));
    for (int64_t i = 0; i < a.m * nb; ++i) {
        const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.xq[i].qs));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(flipped.data() + i * kQK), _mm256_xor_si256(q, offset));
    }
    t_flipped = flipped.data();
    ++t_call;
    matmul_groups<TwoOfFour>(a, n0, n1);
}

}  // namespace

void fill_matmul_sparse(KernelTable& t) {
    const CpuFeatures& f = cpu_features();
    if (!(f.avx512vbmi && f.avx512vbmi2)) return;
    t.matmul_q8_0s16 = matmul_q8_0s16;
    t.matmul_q8_0_24 = matmul_q8_0_24;
}

}  // namespace corelm::CORELM_ISA_NS
