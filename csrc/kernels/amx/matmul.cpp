// AMX matrix products for prefill and batched decode. Written once against the tile interface
// (tiles.h) and compiled twice: path "amx" on the instructions, path "amx-emu" on the SDM emulator
// (CORELM_TILES_EMULATED), so the code that ships on AMX CPUs is the code the tests run everywhere.
//
// Each call unpacks one 16-row weight group at a time into a tile-ready panel, then runs every
// 16-row block of activations against it. Below kMinRows activation rows (single-stream decode,
// small batches) the tiles would run mostly empty and the weights are read once anyway: the
// AVX-512 kernels run instead.
//
// Integer types (Q8_0, Q8_0_S16, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K): tdpbssd with A = the activations' int8 codes
// read in place from block_q8_act, B = the weights' signed codes in VNNI order (B[t][4r + e] = row
// r's element 4t + e), one tile product per scale block (32 elements; Q6_K's 16), then in fp32
// y += dx * (dw * dot - min * sum of the activation codes).
// Float types (F32, F16, BF16): tdpbf16ps on exact splits into bfloat16 terms (weights: BF16 one
// term, F16 two, F32 three; activations three), keeping the products of terms at 2^-16 and above,
// so the sums are as close to fp32 as the AVX-512 path's.
#include <algorithm>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <vector>

#include "../../core/decode.h"
#include "common.h"

namespace corelm::CORELM_ISA_NS {

namespace {

using namespace tiles;

void store_rows(const float (&acc)[kRows][kRows], int rows, const MatmulArgs& a, int64_t m, int64_t n) {
    for (int i = 0; i < rows; ++i) std::memcpy(a.y + (m + i) * a.ldy + n, acc[i], sizeof(acc[i]));
}

// ---- integer types: one packed block of 16 rows -> codes[sub][kSub/4][64], scale / min[sub][16] ----

struct Q8_0 {
    using Block = block_q8_0x16;
    static constexpr int kElems = kQK, kSub = kQK;
    static constexpr bool kMins = false, kSparse = false;
    static MatmulFn fallback(const KernelTable& t) { return t.matmul_q8_0x16; }
    static void unpack(const Block& b, int8_t* codes, float* scale, float*) {
        for (int i = 0; i < kElems * kRows; ++i) codes[i] = int8_t(b.qs[i] ^ 0x80);  // stored as code + 128
        for (int r = 0; r < kRows; ++r) scale[r] = fp16_to_f32(b.d[r]);
    }
};

// The sparse layouts of Q8_0: each group decoded to Q8_0_X16 blocks first (the codes they leave out are
// 0), then as Q8_0 - the tiles multiply the zeros too, but read the sparse bytes, and skip the blocks
// that are zero in all 16 rows (Q8_0_B16's missing blocks).
template <WeightType T>
struct SparseQ8_0 : Q8_0 {
    static constexpr bool kSparse = true;
    static constexpr WeightType kType = T;
    static MatmulFn fallback(const KernelTable& t) {
        return T == WeightType::Q8_0_24 ? t.matmul_q8_0_24 : T == WeightType::Q8_0_B16 ? t.matmul_q8_0b16 : t.matmul_q8_0s16;
    }
};

// Q4_0, Q4_1, Q5_0, Q5_1: low nibbles hold elements 4t+e, high nibbles 16+4t+e (t < 4); Q5_*'s
// fifth bits are bit i of the row's qh for element i. Q4_0 / Q5_0 codes are centred (q - 8, q - 16);
// Q4_1 / Q5_1 keep q and add m per block, as a min of -m.
template <bool Q5, bool Min>
struct Q4or5 {
    using Block = std::conditional_t<Q5, std::conditional_t<Min, block_q5_1x16, block_q5_0x16>,
                                     std::conditional_t<Min, block_q4_1x16, block_q4_0x16>>;
    static constexpr int kElems = kQK, kSub = kQK;
    static constexpr bool kMins = Min, kSparse = false;
    static MatmulFn fallback(const KernelTable& t) {
        return Q5 ? (Min ? t.matmul_q5_1x16 : t.matmul_q5_0x16) : (Min ? t.matmul_q4_1x16 : t.matmul_q4_0x16);
    }
    static void unpack(const Block& b, int8_t* codes, float* scale, float* min) {
        constexpr int kOffset = Min ? 0 : (Q5 ? 16 : 8);
        for (int t = 0; t < 4; ++t)
            for (int x = 0; x < 64; ++x) {
                const uint8_t byte = b.qs[64 * t + x];
                int lo = byte & 0x0f, hi = byte >> 4;
                if constexpr (Q5) {
                    const int r = x / 4, e = x % 4;
                    lo |= int((b.qh[r] >> (4 * t + e)) & 1) << 4;
                    hi |= int((b.qh[r] >> (16 + 4 * t + e)) & 1) << 4;
                }
                codes[64 * t + x] = int8_t(lo - kOffset);
                codes[64 * (4 + t) + x] = int8_t(hi - kOffset);
            }
        for (int r = 0; r < kRows; ++r) {
            scale[r] = fp16_to_f32(b.d[r]);
            if constexpr (Min) min[r] = -fp16_to_f32(b.m[r]);
        }
    }
};

// Q4_K and Q5_K: sub-blocks 2c and 2c+1 are the low and high nibbles of qs rows 8c .. 8c+7; Q5_K's
// fifth bit of sub-block j is bit j of the qh row of the same slice.
template <bool Q5>
struct Q4_Kor5_K {
    using Block = std::conditional_t<Q5, block_q5_Kx16, block_q4_Kx16>;
    static constexpr int kElems = kQK_K, kSub = 32;
    static constexpr bool kMins = true, kSparse = false;
    static MatmulFn fallback(const KernelTable& t) { return Q5 ? t.matmul_q5_kx16 : t.matmul_q4_kx16; }
    static void unpack(const Block& b, int8_t* codes, float* scale, float* min) {
        for (int c = 0; c < 4; ++c)
            for (int t = 0; t < 8; ++t)
                for (int x = 0; x < 64; ++x) {
                    const uint8_t byte = b.qs[64 * (8 * c + t) + x];
                    int lo = byte & 0x0f, hi = byte >> 4;
                    if constexpr (Q5) {
                        lo |= ((b.qh[64 * t + x] >> (2 * c)) & 1) << 4;
                        hi |= ((b.qh[64 * t + x] >> (2 * c + 1)) & 1) << 4;
                    }
                    codes[512 * (2 * c) + 64 * t + x] = int8_t(lo);
                    codes[512 * (2 * c + 1) + 64 * t + x] = int8_t(hi);
                }
        for (int r = 0; r < kRows; ++r) {
            uint8_t packed[12];
            for (int i = 0; i < 12; ++i) packed[i] = b.scales[kRows * i + r];
            const float d = fp16_to_f32(b.d[r]), dmin = fp16_to_f32(b.dmin[r]);
            for (int j = 0; j < kQK_K / 32; ++j) {
                uint8_t sc, m;
                scale_min_k4(j, packed, sc, m);
                scale[kRows * j + r] = d * float(sc);
                min[kRows * j + r] = dmin * float(m);
            }
        }
    }
};

// Q6_K: sub-block j (16 elements) = half n = j/8, quarter u = j%8/2, its 16 elements at 16*(j%2):
// low (u < 2) or high nibbles of ql bytes 64n + 32(u%2) + .., two bits 2u of qh bytes 32n + ..
struct Q6_K {
    using Block = block_q6_Kx16;
    static constexpr int kElems = kQK_K, kSub = 16;
    static constexpr bool kMins = false, kSparse = false;
    static MatmulFn fallback(const KernelTable& t) { return t.matmul_q6_kx16; }
    static void unpack(const Block& b, int8_t* codes, float* scale, float*) {
        for (int j = 0; j < kQK_K / 16; ++j) {
            const int n = j / 8, u = j % 8 / 2, h = j % 2;
            const int ql_slice = (64 * n + 32 * (u % 2) + 16 * h) / 4, qh_slice = (32 * n + 16 * h) / 4;
            for (int t = 0; t < 4; ++t)
                for (int x = 0; x < 64; ++x) {
                    const int lo = (b.ql[64 * (ql_slice + t) + x] >> (u >= 2 ? 4 : 0)) & 0x0f;
                    const int hi = (b.qh[64 * (qh_slice + t) + x] >> (2 * u)) & 3;
                    codes[256 * j + 64 * t + x] = int8_t((lo | hi << 4) - 32);
                }
            for (int r = 0; r < kRows; ++r) scale[kRows * j + r] = fp16_to_f32(b.d[r]) * float(b.scales[kRows * j + r]);
        }
    }
};

// Sub-block j's integer products on tiles (C, A, B): activations read in place (one row per
// activation row, x_stride apart), stored for the sub-block's own scales.
template <class F, int C, int A, int B>
void int8_product(const block_q8_act* x, int64_t j, size_t x_stride, const int8_t* codes,
                  int32_t (&out)[kRows][kRows]) {
    Tiles::template zero<C>();
    Tiles::template load<A>(x[j * F::kSub / kQK].qs + j * F::kSub % kQK, x_stride);
    Tiles::template load<B>(codes + j * F::kSub * kRows, 64);
    Tiles::template dpbssd<C, A, B>();
    Tiles::template store<C>(out, sizeof(out[0]));
}

template <class F>
void matmul_int8(const MatmulArgs& a, int64_t n0, int64_t n1) {
    if (a.m < kMinRows) return F::fallback(avx512_kernels())(a, n0, n1);
    constexpr int kSubs = F::kElems / F::kSub;  // scale blocks per packed block
    const int64_t blocks = a.k / F::kElems, nb = a.k / kQK;
    thread_local std::vector<int8_t> codes;
    thread_local std::vector<float> scales, mins;
    codes.resize(size_t(a.k) * kRows);
    scales.resize(size_t(blocks) * kSubs * kRows);
    mins.resize(scales.size());
    const size_t x_stride = size_t(nb) * sizeof(block_q8_act);
    TileScope scope(F::kSub, F::kSub / 4);
    alignas(64) int32_t dot[2][kRows][kRows];
    thread_local std::vector<block_q8_0x16> decoded;  // a sparse group, with its zeros
    thread_local std::vector<int64_t> live;  // the sub-blocks multiplied: all of them, or a sparse group's
    const int64_t subs = a.k / F::kSub;
    live.resize(size_t(subs));
    std::iota(live.begin(), live.end(), int64_t(0));
    for (int64_t n = n0; n < n1; n += kRows) {
        const auto* group = reinterpret_cast<const typename F::Block*>(a.w + n * a.w_stride);
        if constexpr (F::kSparse) {
            decoded.resize(size_t(blocks));
            ref::decode_sparse_group(F::kType, a.w + n * a.w_stride, a.k, kRows * a.w_stride, decoded.data());
            group = decoded.data();
        }
        for (int64_t b = 0; b < blocks; ++b)
            F::unpack(group[b], codes.data() + b * F::kElems * kRows, scales.data() + b * kSubs * kRows,
                      mins.data() + b * kSubs * kRows);
        // A sparse group's sub-blocks whose 16 scales are all 0 add nothing and are skipped: Q8_0_B16's
        // missing blocks (and any block pruned whole in the other layouts).
        if constexpr (F::kSparse) {
            live.clear();
            for (int64_t j = 0; j < subs; ++j) {
                const float* dw = scales.data() + j * kRows;
                if (std::any_of(dw, dw + kRows, [](float d) { return d != 0.0f; })) live.push_back(j);
            }
        }
        for (int64_t m = 0; m < a.m; m += kRows) {
            const int rows = int(std::min<int64_t>(kRows, a.m - m));
            scope.set_rows(rows);
            const block_q8_act* x = a.xq + m * nb;
            float acc[kRows][kRows] = {};
            auto scale = [&](int64_t j, const int32_t (&products)[kRows][kRows]) {
                const int64_t xb = j * F::kSub / kQK;  // the activation block holding sub-block j
                const float* dw = scales.data() + j * kRows;
                const float* mw = mins.data() + j * kRows;
                for (int i = 0; i < rows; ++i) {
                    const block_q8_act& xi = x[i * nb + xb];
                    for (int r = 0; r < kRows; ++r) {
                        float v = dw[r] * float(products[i][r]);
                        if constexpr (F::kMins) v -= mw[r] * float(xi.s);
                        acc[i][r] += xi.d * v;
                    }
                }
            };
            size_t i = 0;
            for (; i + 2 <= live.size(); i += 2) {  // two independent products in flight
                int8_product<F, kC0, kA0, kB0>(x, live[i], x_stride, codes.data(), dot[0]);
                int8_product<F, kC1, kA1, kB1>(x, live[i + 1], x_stride, codes.data(), dot[1]);
                scale(live[i], dot[0]);
                scale(live[i + 1], dot[1]);
            }
            if (i < live.size()) {
                int8_product<F, kC0, kA0, kB0>(x, live[i], x_stride, codes.data(), dot[0]);
                scale(live[i], dot[0]);
            }
            store_rows(acc, rows, a, m, n);
        }
    }
}

// ---- float types: exact splits into bfloat16 terms ----

struct F32 {
    using T = float;
    static constexpr int kTerms = 3;
    static MatmulFn fallback(const KernelTable& t) { return t.matmul_f32x16; }
    static float at(const T* p) { return *p; }
};
struct F16 {
    using T = uint16_t;
    static constexpr int kTerms = 2;  // 11 significant bits: 8 + 3
    static MatmulFn fallback(const KernelTable& t) { return t.matmul_f16x16; }
    static float at(const T* p) { return fp16_to_f32(*p); }
};
struct BF16 {
    using T = uint16_t;
    static constexpr int kTerms = 1;
    static MatmulFn fallback(const KernelTable& t) { return t.matmul_bf16x16; }
    static float at(const T* p) { return bf16_to_f32(*p); }
};


// One chunk of 32 elements of K into tile C: the activations' three terms from x, the weights'
// from w.
template <class F, int C>
void chunk_product(const uint16_t* x, size_t x_stride, size_t x_term, const uint16_t* w, size_t w_term) {
    load_terms<kA0, 3>(x, x_stride, x_term);
    load_terms<kB0, F::kTerms>(w, 64, w_term);
    term_products<C, 3, F::kTerms>();
}

template <class F>
void matmul_float(const MatmulArgs& a, int64_t n0, int64_t n1) {
    if (a.m < kMinRows) return F::fallback(avx512_kernels())(a, n0, n1);
    const int64_t chunks = (a.k + kChunk - 1) / kChunk, kp = chunks * kChunk;  // K padded with zeros
    constexpr size_t kTileElems = kChunk * kRows;  // bfloat16 per 16 x 64-byte tile
    // The activations' three terms, made once per call: xs[term][row][0:kp].
    thread_local std::vector<uint16_t> xs;
    xs.assign(size_t(3 * a.m * kp), 0);
    for (int64_t i = 0; i < a.m; ++i)
        split_bf16(a.x + i * a.ldx, a.k, &xs[size_t(i * kp)], &xs[size_t((a.m + i) * kp)],
                   &xs[size_t((2 * a.m + i) * kp)]);
    // One 16-row group's weight terms, tile-ready: panel[chunk][term][pair][2 * row + (0|1)].
    thread_local std::vector<uint16_t> panel;
    panel.resize(size_t(chunks) * F::kTerms * kTileElems);
    TileScope scope(64, kPairs);
    const size_t x_stride = size_t(kp) * sizeof(uint16_t);
    alignas(64) float out[2][kRows][kRows];
    for (int64_t n = n0; n < n1; n += kRows) {
        const auto* group = reinterpret_cast<const typename F::T*>(a.w + n * a.w_stride);
        for (int64_t i = 0; i < kp; ++i) {  // element i of the 16 rows: group[16 i .. 16 i + 15]
            float w[kRows];
            for (int r = 0; r < kRows; ++r) w[r] = i < a.k ? F::at(group + kRows * i + r) : 0.0f;
            uint16_t t[3][kRows];
            split_bf16(w, kRows, t[0], t[1], t[2]);
            uint16_t* at = panel.data() + (i / kChunk) * F::kTerms * kTileElems + 2 * kRows * (i % kChunk / 2) + i % 2;
            for (int term = 0; term < F::kTerms; ++term)
                for (int r = 0; r < kRows; ++r) at[term * kTileElems + 2 * r] = t[term][r];
        }
        for (int64_t m = 0; m < a.m; m += kRows) {
            const int rows = int(std::min<int64_t>(kRows, a.m - m));
            scope.set_rows(rows);
            // Even chunks into C0, odd into C1: two chains of products, added at the end.
            Tiles::template zero<kC0>();
            Tiles::template zero<kC1>();
            const size_t term_stride = size_t(a.m * kp);
            for (int64_t c = 0; c < chunks; ++c) {
                const uint16_t* x = xs.data() + m * kp + c * kChunk;
                const uint16_t* w = panel.data() + c * F::kTerms * kTileElems;
                if (c % 2 == 0) chunk_product<F, kC0>(x, x_stride, term_stride, w, kTileElems);
                else chunk_product<F, kC1>(x, x_stride, term_stride, w, kTileElems);
            }
            Tiles::template store<kC0>(out[0], sizeof(out[0][0]));
            Tiles::template store<kC1>(out[1], sizeof(out[1][0]));
            for (int i = 0; i < rows; ++i)
                for (int r = 0; r < kRows; ++r) out[0][i][r] += out[1][i][r];
            store_rows(out[0], rows, a, m, n);
        }
    }
}

}  // namespace

void tile_op(const amx::TileOp& op) {
    amx::TileConfig cfg;
    cfg.shape(kC0, op.c.rows, op.c.colsb);
    cfg.shape(kA0, op.a.rows, op.a.colsb);
    cfg.shape(kB0, op.b.rows, op.b.colsb);
    Tiles::configure(cfg);
    Tiles::template load<kC0>(op.c.data, op.c.stride);
    Tiles::template load<kA0>(op.a.data, op.a.stride);
    Tiles::template load<kB0>(op.b.data, op.b.stride);
    switch (op.insn) {
        case amx::Insn::DPBSSD: Tiles::template dpbssd<kC0, kA0, kB0>(); break;
        case amx::Insn::DPBSUD: Tiles::template dpbsud<kC0, kA0, kB0>(); break;
        case amx::Insn::DPBUSD: Tiles::template dpbusd<kC0, kA0, kB0>(); break;
        case amx::Insn::DPBUUD: Tiles::template dpbuud<kC0, kA0, kB0>(); break;
        case amx::Insn::DPBF16PS: Tiles::template dpbf16ps<kC0, kA0, kB0>(); break;
    }
    Tiles::template store<kC0>(op.out, op.c.stride);
    Tiles::release();
}

void fill_attention(KernelTable& t);  // attention.cpp

void fill(KernelTable& t) {
    fill_attention(t);
    t.matmul_q8_0x16 = matmul_int8<Q8_0>;
    t.matmul_q8_0s16 = matmul_int8<SparseQ8_0<WeightType::Q8_0_S16>>;
    t.matmul_q8_0_24 = matmul_int8<SparseQ8_0<WeightType::Q8_0_24>>;
    t.matmul_q8_0b16 = matmul_int8<SparseQ8_0<WeightType::Q8_0_B16>>;
    t.matmul_q4_0x16 = matmul_int8<Q4or5<false, false>>;
    t.matmul_q4_1x16 = matmul_int8<Q4or5<false, true>>;
    t.matmul_q5_0x16 = matmul_int8<Q4or5<true, false>>;
    t.matmul_q5_1x16 = matmul_int8<Q4or5<true, true>>;
    t.matmul_q4_kx16 = matmul_int8<Q4_Kor5_K<false>>;
    t.matmul_q5_kx16 = matmul_int8<Q4_Kor5_K<true>>;
    t.matmul_q6_kx16 = matmul_int8<Q6_K>;
    t.matmul_f32x16 = matmul_float<F32>;
    t.matmul_f16x16 = matmul_float<F16>;
    t.matmul_bf16x16 = matmul_float<BF16>;
}

}  // namespace corelm::CORELM_ISA_NS
