// The driver of the packed 16-row kernel families (matmul.cpp, matmul_kquant_x16.cpp): a Family
// has tile<C>(a, n, m) computing 16 weight rows x C activation rows.
#pragma once
#include <algorithm>

#include "../../core/kernel_table.h"
#include "simd.h"

namespace corelm::CORELM_ISA_NS {

constexpr int kHalves = kPackRows / x86::kLanes;  // float vectors per 16 rows: 1 (AVX-512) or 2 (AVX2)
static_assert(x86::kSliceRows == x86::kLanes, "a row's int32 lane and float lane must line up");

// The C x 16 outputs of a tile over a packed group: acc[c][h] holds activation row c's outputs for
// rows h*kLanes .. of the group, zeroed at start, stored to y[m + c, n ..] at the end.
template <int C>
struct GroupAcc {
    x86::vf v[C][kHalves];
    GroupAcc() {
        for (int c = 0; c < C; ++c)
            for (int h = 0; h < kHalves; ++h) v[c][h] = x86::vf_zero();
    }
    x86::vf (&operator[](int c))[kHalves] { return v[c]; }
    void store(const MatmulArgs& a, int64_t n, int64_t m) const {
        for (int c = 0; c < C; ++c)
            for (int h = 0; h < kHalves; ++h) x86::vf_store(a.y + (m + c) * a.ldy + n + x86::kLanes * h, v[c][h]);
    }
};

// With 4+ activation rows (a batch of decoding sequences, a prefill) a tile fetches the next row
// group's block while it computes this one's: the work per block then hides the memory latency
// the hardware prefetcher leaves exposed (TinyLlama Q4_0, 8 sequences: 168 -> 209 tokens/s).
// Prefetches never fault, so the last group's run past the matrix is harmless. (The k-quant
// tiles measured no faster with it at 8 rows and slower at 4: they stay without.)
template <int C>
inline void prefetch_for_tile(const void* p, size_t bytes) {
    if constexpr (C >= 4)
        for (size_t line = 0; line < bytes; line += 64) __builtin_prefetch(static_cast<const char*>(p) + line);
}

// How one activation row (decode) streams the weights best differs by CPU, measured per CPU
// (TinyLlama FFN GEMV, 5632 x 2048, variants interleaved in one process):
// - Intel Xeon (Emerald Rapids): the hardware prefetcher alone leaves each row group's stream waiting
//   on memory; fetching the bytes 2 KB on (prefetch_ahead) gains, 1 / 2 threads, Q8_0_X16
//   1.16x / 1.20x, Q4_K_X16 1.28x / 1.13x, Q6_K_X16 1.22x / 1.18x, Q8_0_24 1.31x / 1.29x (1024 bytes
//   gains about half of that); Q8_0_S16 streams 4 row groups at once (matmul_sparse.cpp).
// - AMD EPYC (Zen 4): the same prefetches cost at 1 thread (Q8_0_X16 0.88-0.94x, Q4_K_X16 0.82-0.88x,
//   Q8_0_S16 0.88x; about even at 2), Q6_K_X16 excepted (1.09-1.10x); and Q8_0_S16 is fastest one
//   group at a time (50% zeros, 1 thread: 0.48 ms with 4 groups, 0.33 ms with 1).
// - AMD EPYC (Zen 5, family 0x1A): prefetching pays again, furthest at 8 KB ahead (1 thread, against
//   none): Q4_K_X16 2.2x, Q4_0_X16 1.2x, Q8_0_S16 1.9x (50% zeros), Q8_0_24 1.15x, Q8_0_B16 1.15x,
//   Q6_K_X16 even (2 KB: Q4_K_X16 2.0x, Q8_0_S16 1.5x); Q8_0_X16 0.93-0.98x / 1.01-1.07x, so it does
//   not prefetch there (DecodeTuning::prefetch_q8_0); one Q8_0_S16 group at a time.
//   Whole model against Zen 4's tuning (benchmarks/decode_tuning.py), 1 / 2 threads: TinyLlama Q4_K_M
//   1.75x / 1.65x, Q8_0_S16 50% 1.26x / 1.21x, SmolLM2 Q4_1 1.13x / 1.08x, dense Q8_0 0.93x / 0.97x.
// g_decode_tuning (kernel_table.h) holds the choice, made from the CPU's vendor and family at start-up.
enum class Ahead { WherePaying, Always };
constexpr size_t kAlwaysAhead = 2048;  // Ahead::Always where the CPU's tuning does not prefetch
template <Ahead A = Ahead::WherePaying>
inline void prefetch_ahead(const void* p, size_t bytes) {
    size_t ahead = size_t(g_decode_tuning.prefetch_bytes);
    if (ahead == 0) {
        if (A == Ahead::WherePaying) return;
        ahead = kAlwaysAhead;
    }
    for (size_t line = 0; line < bytes; line += 64) __builtin_prefetch(static_cast<const char*>(p) + ahead + line);
}

// Covers y[0:m, n0:n1] (n0, n1 multiples of 16) with tiles of up to 4 activation rows. Long
// prefills go kMChunk activation rows at a time through all the row groups, so those rows stay
// in L1 while the weights stream from L2, instead of every row group streaming all activations.
constexpr int64_t kMChunk = 64;

template <typename Family>
void matmul_groups(const MatmulArgs& a, int64_t n0, int64_t n1) {
    for (int64_t m0 = 0; m0 < a.m; m0 += kMChunk) {
        const int64_t m1 = std::min(a.m, m0 + kMChunk);
        for (int64_t n = n0; n < n1; n += kPackRows) {
            int64_t m = m0;
            // AVX-512 has the registers for 8 rows' accumulators: each unpacked weight block then
            // serves twice as many rows.
            if constexpr (kHalves == 1)
                for (; m + 8 <= m1; m += 8) Family::template tile<8>(a, n, m);
            for (; m + 4 <= m1; m += 4) Family::template tile<4>(a, n, m);
            switch (m1 - m) {
                case 3: Family::template tile<3>(a, n, m); break;
                case 2: Family::template tile<2>(a, n, m); break;
                case 1: Family::template tile<1>(a, n, m); break;
                default: break;
            }
        }
    }
}

}  // namespace corelm::CORELM_ISA_NS
