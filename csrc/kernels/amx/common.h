// What the AMX kernels of one path share (matmul.cpp, attention.cpp): the Tiles they run on, the
// tile roles and configuration, the AVX-512 kernels they fall back to, exact bfloat16 splits.
// Included only by the kernels of the amx and amx-emu paths.
#pragma once
#include <cstdint>
#include <cstring>

#include "../../core/formats.h"
#include "../../core/kernel_table.h"
#include "tiles.h"

#ifndef CORELM_ISA_NS
#error "compile with -DCORELM_ISA_NS=<path name>"
#endif

namespace corelm::avx512 {
void fill(KernelTable& t);
}

namespace corelm::CORELM_ISA_NS::tiles {

#ifdef CORELM_TILES_EMULATED
using Tiles = amx::Emulated;
#else
using Tiles = amx::Hardware;
#endif

using amx::kMinRows;
constexpr int kRows = 16;  // rows of a C tile; 16 outputs (fp32 / int32) across
static_assert(kRows == kPackRows, "a C tile is one packed group wide");

// The AVX-512 kernels, for the work with too few rows for tiles.
inline const KernelTable& avx512_kernels() {
    static const KernelTable table = [] {
        KernelTable t;
        avx512::fill(t);
        return t;
    }();
    return table;
}

// Tile numbers (tiles.h's Hardware expands exactly these roles): two C tiles, so consecutive
// products need not wait for each other (tile registers are not renamed); A tiles hold the
// row-side operand (activations, queries, probabilities: up to three terms), B tiles the other.
enum : int { kC0 = 0, kC1 = 1, kA0 = 2, kA1 = 3, kA2 = 4, kB0 = 5, kB1 = 6, kB2 = 7 };

// The tile configuration of one kernel call: A tiles of a_colsb bytes, B tiles of b_rows rows,
// C and A as many rows as the current block has (reconfigured only when that changes, at the
// last block). Released when the call ends.
class TileScope {
  public:
    TileScope(int a_colsb, int b_rows) : a_colsb_(a_colsb), b_rows_(b_rows) {}
    TileScope(const TileScope&) = delete;
    TileScope& operator=(const TileScope&) = delete;
    ~TileScope() {
        if (rows_) Tiles::release();
    }
    void set_rows(int rows) {
        if (rows == rows_) return;
        amx::TileConfig cfg;
        for (int t : {kC0, kC1}) cfg.shape(t, rows, 64);
        for (int t : {kA0, kA1, kA2}) cfg.shape(t, rows, a_colsb_);
        for (int t : {kB0, kB1, kB2}) cfg.shape(t, b_rows_, 64);
        Tiles::configure(cfg);
        rows_ = rows;
    }

  private:
    int a_colsb_, b_rows_, rows_ = 0;
};

// ---- exact splits into bfloat16 terms, for tdpbf16ps at fp32 precision ----

constexpr int kPairs = 16;          // bfloat16 pairs in a 64-byte tile row
constexpr int kChunk = 2 * kPairs;  // elements of the inner dimension per tile product

// f32_to_bf16's round to nearest even, without branches so the loops below vectorise.
inline uint16_t bf16_bits(float f) {
    const uint32_t x = f32_bits(f);
    const uint16_t rounded = uint16_t((x + 0x7fffu + ((x >> 16) & 1)) >> 16);
    return (x & 0x7fffffffu) > 0x7f800000u ? uint16_t((x >> 16) | 0x40) : rounded;  // NaN stays NaN
}

// v[i] = t0[i] + t1[i] + t2[i] to fp32 precision: each term the next 8 significant bits.
inline void split_bf16(const float* v, int64_t n, uint16_t* t0, uint16_t* t1, uint16_t* t2) {
    for (int64_t i = 0; i < n; ++i) {
        float r = v[i];
        t0[i] = bf16_bits(r);
        r -= bf16_to_f32(t0[i]);
        t1[i] = bf16_bits(r);
        r -= bf16_to_f32(t1[i]);
        t2[i] = bf16_bits(r);
    }
}

// C += the products of A's terms (tiles kA0.., NA of them) and B's (kB0.., NB) whose term indices
// sum to 2 or less - the others are below 2^-24 of the sum - smallest first.
template <int C, int NA, int NB>
void term_products() {
    if constexpr (NA > 0 && NB > 2) Tiles::template dpbf16ps<C, kA0, kB2>();
    if constexpr (NA > 1 && NB > 1) Tiles::template dpbf16ps<C, kA1, kB1>();
    if constexpr (NA > 2 && NB > 0) Tiles::template dpbf16ps<C, kA2, kB0>();
    if constexpr (NA > 0 && NB > 1) Tiles::template dpbf16ps<C, kA0, kB1>();
    if constexpr (NA > 1 && NB > 0) Tiles::template dpbf16ps<C, kA1, kB0>();
    Tiles::template dpbf16ps<C, kA0, kB0>();
}

// Loads n consecutive tiles' worth of terms (term_stride elements apart) into A or B tiles.
template <int First, int N>
void load_terms(const uint16_t* p, size_t stride_bytes, size_t term_stride) {
    Tiles::template load<First>(p, stride_bytes);
    if constexpr (N > 1) Tiles::template load<First + 1>(p + term_stride, stride_bytes);
    if constexpr (N > 2) Tiles::template load<First + 2>(p + 2 * term_stride, stride_bytes);
}

}  // namespace corelm::CORELM_ISA_NS::tiles
