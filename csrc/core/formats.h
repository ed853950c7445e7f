// Weight formats, defined once. Layouts are GGUF's (ggml-common.h) byte for byte, so a
// memory-mapped GGUF tensor is a valid kernel operand without conversion.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <cmath>

namespace corelm {

// Type ids are GGML's (enum ggml_type), so GGUF tensor infos map straight onto them.
enum class WeightType : int32_t {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    BF16 = 30,
    // corelm's own row-interleaved layouts (see block_q4_0x16); never stored in files.
    F32_X16 = 1000,
    F16_X16 = 1001,
    Q4_0_X16 = 1002,
    Q4_1_X16 = 1003,
    Q5_0_X16 = 1006,
    Q5_1_X16 = 1007,
    Q8_0_X16 = 1008,
    Q4_K_X16 = 1012,
    Q5_K_X16 = 1013,
    Q6_K_X16 = 1014,
    BF16_X16 = 1030,
    // corelm's own sparse layouts (stored in corelm's GGUF files, see docs/sparsity.md).
    Q8_0_S16 = 2008,
    Q8_0_24 = 2108,
    Q8_0_B16 = 2208,
};

constexpr int kQK = 32;  // elements per Q4_0 / Q8_0 block
constexpr int kMaxHeadDim = 256;  // attention and rope keep one head on the stack

// Q8_0: 8.5 bits per weight. value = qs[i] * d
struct block_q8_0 {
    uint16_t d;      // scale, IEEE fp16
    int8_t qs[kQK];
};
static_assert(sizeof(block_q8_0) == 34, "block_q8_0 must be 34 bytes");

// Q4_0: 4.5 bits per weight. Element i < 16 is the low nibble of qs[i], element i >= 16 the
// high nibble of qs[i - 16]; value = (q - 8) * d.
struct block_q4_0 {
    uint16_t d;
    uint8_t qs[kQK / 2];
};
static_assert(sizeof(block_q4_0) == 18, "block_q4_0 must be 18 bytes");

// Q4_1: 5 bits per weight, codes as Q4_0; value = q * d + m, q in 0..15.
struct block_q4_1 {
    uint16_t d, m;
    uint8_t qs[kQK / 2];
};
static_assert(sizeof(block_q4_1) == 20, "block_q4_1 must be 20 bytes");

// Q5_0: 5.5 bits per weight. Low nibbles as Q4_0; bit i of qh (little-endian uint32) is the fifth
// bit of element i; value = (q - 16) * d.
struct block_q5_0 {
    uint16_t d;
    uint8_t qh[4];
    uint8_t qs[kQK / 2];
};
static_assert(sizeof(block_q5_0) == 22, "block_q5_0 must be 22 bytes");

// Q5_1: 6 bits per weight, codes as Q5_0; value = q * d + m, q in 0..31.
struct block_q5_1 {
    uint16_t d, m;
    uint8_t qh[4];
    uint8_t qs[kQK / 2];
};
static_assert(sizeof(block_q5_1) == 24, "block_q5_1 must be 24 bytes");

// ---- k-quants: super-blocks of 256 (ggml-common.h) ----
constexpr int kQK_K = 256;

// Q4_K: 4.5 bits per weight. 8 sub-blocks of 32 with 6-bit scale and min (packed in
// scales[12]); value = d * sc * q - dmin * m, q in 0..15.
struct block_q4_K {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qs[kQK_K / 2];
};
static_assert(sizeof(block_q4_K) == 144, "block_q4_K must be 144 bytes");

// Q5_K: 5.5 bits per weight; as Q4_K with a fifth bit per weight in qh.
struct block_q5_K {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qh[kQK_K / 8];
    uint8_t qs[kQK_K / 2];
};
static_assert(sizeof(block_q5_K) == 176, "block_q5_K must be 176 bytes");

// Q6_K: 6.5625 bits per weight. 16 sub-blocks of 16 with int8 scales; value = d * sc * (q - 32).
struct block_q6_K {
    uint8_t ql[kQK_K / 2];
    uint8_t qh[kQK_K / 4];
    int8_t scales[kQK_K / 16];
    uint16_t d;
};
static_assert(sizeof(block_q6_K) == 210, "block_q6_K must be 210 bytes");

// Row-interleaved layouts: block b of 16 consecutive rows stored together, so that one
// 64-byte vector holds the same 4-element slice of all 16 rows and one vpdpbusd advances 16
// outputs at once - no shuffles, and scales for 16 rows in one 32-byte load. Codes are
// unsigned with an offset (8 for Q4_0, 128 for Q8_0) that the kernels take back once per
// block through the activations' sum. Same bytes per row as the GGUF layout they come from.
constexpr int kPackRows = 16;

// qs[64*j + 4*r + e]: row r's elements 4j+e (low nibble) and 16+4j+e (high nibble), j < 4 -
// exactly byte 4j+e of the row's GGUF Q4_0 block.
struct block_q4_0x16 {
    uint16_t d[kPackRows];
    uint8_t qs[kPackRows * kQK / 2];
};
static_assert(sizeof(block_q4_0x16) == kPackRows * sizeof(block_q4_0), "packed Q4_0 must keep its size");

// As block_q4_0x16, with qh[r] = row r's fifth bits (bit i: element i).
struct block_q5_0x16 {
    uint16_t d[kPackRows];
    uint32_t qh[kPackRows];
    uint8_t qs[kPackRows * kQK / 2];
};
static_assert(sizeof(block_q5_0x16) == kPackRows * sizeof(block_q5_0), "packed Q5_0 must keep its size");

// Q4_1 / Q5_1: as block_q4_0x16 / block_q5_0x16, with the 16 rows' m (the value of code 0) after d.
struct block_q4_1x16 {
    uint16_t d[kPackRows], m[kPackRows];
    uint8_t qs[kPackRows * kQK / 2];
};
static_assert(sizeof(block_q4_1x16) == kPackRows * sizeof(block_q4_1), "packed Q4_1 must keep its size");

struct block_q5_1x16 {
    uint16_t d[kPackRows], m[kPackRows];
    uint32_t qh[kPackRows];
    uint8_t qs[kPackRows * kQK / 2];
};
static_assert(sizeof(block_q5_1x16) == kPackRows * sizeof(block_q5_1), "packed Q5_1 must keep its size");

// qs[64*j + 4*r + e] = row r's element 4j+e plus 128, j < 8.
struct block_q8_0x16 {
    uint16_t d[kPackRows];
    uint8_t qs[kPackRows * kQK];
};
static_assert(sizeof(block_q8_0x16) == kPackRows * sizeof(block_q8_0), "packed Q8_0 must keep its size");

// k-quants interleave the same way, per super-block of 16 rows; the per-row header bytes are
// transposed so that one 16-byte vector holds the same field of the 16 rows.
// Q4_K: qs[64*(8c + s) + 4r + e] = byte 32c + 4s + e of row r's qs (low nibbles: sub-block 2c,
// high: 2c + 1); scales[16*b + r] = byte b of row r's 12 scale bytes.
struct block_q4_Kx16 {
    uint16_t d[kPackRows], dmin[kPackRows];
    uint8_t scales[12 * kPackRows];
    uint8_t qs[kPackRows * kQK_K / 2];
};
static_assert(sizeof(block_q4_Kx16) == kPackRows * sizeof(block_q4_K), "packed Q4_K must keep its size");

// Q5_K: as Q4_K, with qh[64*i + 4r + e] = byte 4i + e of row r's qh (bit j: sub-block j's fifth bit).
struct block_q5_Kx16 {
    uint16_t d[kPackRows], dmin[kPackRows];
    uint8_t scales[12 * kPackRows];
    uint8_t qh[kPackRows * kQK_K / 8];
    uint8_t qs[kPackRows * kQK_K / 2];
};
static_assert(sizeof(block_q5_Kx16) == kPackRows * sizeof(block_q5_K), "packed Q5_K must keep its size");

// Q6_K: ql and qh sliced as Q4_K's qs (ql[64*i + 4r + e] = byte 4i + e of row r's ql, qh alike);
// scales[16*j + r] = row r's scale of sub-block j (of 16 elements).
// The header comes first (GGUF's Q6_K puts it last), so the kernel reads a block in address order.
struct block_q6_Kx16 {
    uint16_t d[kPackRows];
    int8_t scales[kQK_K / 16 * kPackRows];
    uint8_t ql[kPackRows * kQK_K / 2];
    uint8_t qh[kPackRows * kQK_K / 4];
};
static_assert(sizeof(block_q6_Kx16) == kPackRows * sizeof(block_q6_K), "packed Q6_K must keep its size");

// F32_X16 / F16_X16 / BF16_X16: a group of 16 rows stored element by element, the 16 rows'
// element i side by side (64 or 32 bytes), so one vector of 16 lanes is element i of 16 rows: one
// FMA against the broadcast activation advances 16 outputs, with no horizontal sums.

// Q8_0_S16: Q8_0 without its zero codes, so a sparse matrix is read in fewer bytes (decode reads
// every weight once per token). Groups of 16 rows as Q8_0_X16, each group `16 * stride` bytes,
// where the stride (bytes per row, the same for every group of a tensor) is chosen when encoding.
// A group is its k/32 blocks one after another (one forward stream), then padding:
//   a block: its header (block_q8_0s16: the 16 rows' scales, and mask[j] whose bit 4r+e says that
//     row r's element 4j+e is stored - byte 4r+e of Q8_0_X16's slice j), then its stored codes
//     (+128, as Q8_0_X16), slice after slice, in bit order;
//   at least kSparsePad bytes of padding: the kernels read kSparsePad bytes at a time.
// A code the mask leaves out is zero. Any Q8_0 matrix encodes losslessly (its own zero codes
// are left out too); bytes per row per block: 6 + the stored codes, against Q8_0's 34.
struct block_q8_0s16 {
    uint16_t d[kPackRows];
    uint64_t mask[kQK / 4];
};
static_assert(sizeof(block_q8_0s16) == 96, "block_q8_0s16 must be 96 bytes");
constexpr size_t kSparsePad = 64;

// Q8_0_24: Q8_0 with 2:4 sparsity (of every 4 consecutive weights of a row, at most 2 are not zero),
// so prefill skips half the multiply-adds and decode reads 22 bytes per row and block, not 34.
// Groups of 16 rows, fixed size. Slice t (t < 4) covers elements 8t..8t+7 of the 16 rows:
//   qs[t][4r + e]: row r's e-th kept code among those 8 (signed: code 0 where fewer are kept);
//   meta[t][r]: their positions, 2 bits each - bits 2e..2e+1 = position of kept code e within its
//     group of 4 (e < 2: elements 8t..8t+3, e >= 2: 8t+4..8t+7).
struct block_q8_0x16_24 {
    uint16_t d[kPackRows];
    uint8_t meta[kQK / 8][kPackRows];
    int8_t qs[kQK / 8][4 * kPackRows];
};
static_assert(sizeof(block_q8_0x16_24) == kPackRows * 22, "2:4 Q8_0 keeps 22 bytes per row and block");

// Q8_0_B16: Q8_0 whose zeros come in whole blocks of a 16-row group (16 rows x 32 elements: corelm
// sparsify's block pattern), so decode reads, and prefill multiplies, only the blocks kept. Groups of
// 16 rows, each `16 * stride` bytes (the stride chosen when encoding, as Q8_0_S16's):
//   the block map, block_map_bytes(k / 32) bytes: bit b % 64 of uint64 word b / 64 says block b is stored;
//   the stored blocks, Q8_0_X16's block_q8_0x16 each, in order; zeros to the end of the group.
// A block left out is zero. Any Q8_0 matrix encodes losslessly (its all-zero blocks left out).
constexpr size_t block_map_bytes(int64_t nb) { return size_t((nb + 511) / 512) * 64; }
// Word `word` of a group's block map (blocks 64 word ..), the bits past nb cleared: a corrupted map
// names no block past k. 0 for a word wholly past nb.
inline uint64_t block_map_word(const uint8_t* group, int64_t nb, int64_t word) {
    uint64_t bits;
    std::memcpy(&bits, group + 8 * word, 8);
    const int64_t left = nb - 64 * word;
    return left >= 64 ? bits : left > 0 ? bits & ((uint64_t(1) << left) - 1) : 0;
}

// Activations quantized on the fly for the integer dot products (never stored in files).
// d is kept in fp32 (ggml's q8_0/q8_1 round it to fp16) so activation rounding is the only
// quantization error the activations add; s = sum(qs) lets Q4_0's "-8" offset be applied
// once per block instead of once per element.
struct block_q8_act {
    float d;
    int32_t s;
    int8_t qs[kQK];
};
static_assert(sizeof(block_q8_act) == 40, "block_q8_act must be 40 bytes");

// ---- each weight type's facts, defined once ----

// How a layout leaves zeros out: not at all; any of them (rows then have their tensor's own stride,
// at least row_bytes + padding); two of every four (fixed size, like any other type);
// or whole blocks of a 16-row group (rows of their tensor's own stride too).
enum class Sparsity : uint8_t { None, Unstructured, TwoOfFour, Blocks };
// The drivers, the bindings and, through _C.weight_types(), the Python package read them here.
struct TypeInfo {
    WeightType type;
    const char* name;    // GGML's name; corelm's own layouts end in _X16
    int64_t block;       // elements per block
    size_t block_bytes;  // bytes of one block of one row
    WeightType base;     // the GGUF type a 16-row layout is made from (the type itself otherwise)
    WeightType packed;   // its 16-row layout (the type itself when it has none or is one)
    Sparsity sparsity = Sparsity::None;
};

// GGUF types from the most bits to the fewest, then their 16-row layouts in the same order, then the sparse ones.
inline constexpr TypeInfo kTypes[] = {
    {WeightType::F32, "F32", 1, 4, WeightType::F32, WeightType::F32_X16},
    {WeightType::F16, "F16", 1, 2, WeightType::F16, WeightType::F16_X16},
    {WeightType::BF16, "BF16", 1, 2, WeightType::BF16, WeightType::BF16_X16},
    {WeightType::Q8_0, "Q8_0", kQK, sizeof(block_q8_0), WeightType::Q8_0, WeightType::Q8_0_X16},
    {WeightType::Q6_K, "Q6_K", kQK_K, sizeof(block_q6_K), WeightType::Q6_K, WeightType::Q6_K_X16},
    {WeightType::Q5_1, "Q5_1", kQK, sizeof(block_q5_1), WeightType::Q5_1, WeightType::Q5_1_X16},
    {WeightType::Q5_K, "Q5_K", kQK_K, sizeof(block_q5_K), WeightType::Q5_K, WeightType::Q5_K_X16},
    {WeightType::Q5_0, "Q5_0", kQK, sizeof(block_q5_0), WeightType::Q5_0, WeightType::Q5_0_X16},
    {WeightType::Q4_1, "Q4_1", kQK, sizeof(block_q4_1), WeightType::Q4_1, WeightType::Q4_1_X16},
    {WeightType::Q4_K, "Q4_K", kQK_K, sizeof(block_q4_K), WeightType::Q4_K, WeightType::Q4_K_X16},
    {WeightType::Q4_0, "Q4_0", kQK, sizeof(block_q4_0), WeightType::Q4_0, WeightType::Q4_0_X16},
    {WeightType::F32_X16, "F32_X16", 1, 4, WeightType::F32, WeightType::F32_X16},
    {WeightType::F16_X16, "F16_X16", 1, 2, WeightType::F16, WeightType::F16_X16},
    {WeightType::BF16_X16, "BF16_X16", 1, 2, WeightType::BF16, WeightType::BF16_X16},
    {WeightType::Q8_0_X16, "Q8_0_X16", kQK, sizeof(block_q8_0), WeightType::Q8_0, WeightType::Q8_0_X16},
    {WeightType::Q6_K_X16, "Q6_K_X16", kQK_K, sizeof(block_q6_K), WeightType::Q6_K, WeightType::Q6_K_X16},
    {WeightType::Q5_1_X16, "Q5_1_X16", kQK, sizeof(block_q5_1), WeightType::Q5_1, WeightType::Q5_1_X16},
    {WeightType::Q5_K_X16, "Q5_K_X16", kQK_K, sizeof(block_q5_K), WeightType::Q5_K, WeightType::Q5_K_X16},
    {WeightType::Q5_0_X16, "Q5_0_X16", kQK, sizeof(block_q5_0), WeightType::Q5_0, WeightType::Q5_0_X16},
    {WeightType::Q4_1_X16, "Q4_1_X16", kQK, sizeof(block_q4_1), WeightType::Q4_1, WeightType::Q4_1_X16},
    {WeightType::Q4_K_X16, "Q4_K_X16", kQK_K, sizeof(block_q4_K), WeightType::Q4_K, WeightType::Q4_K_X16},
    {WeightType::Q4_0_X16, "Q4_0_X16", kQK, sizeof(block_q4_0), WeightType::Q4_0, WeightType::Q4_0_X16},
    // block_bytes: the header's share of one row (the stored codes come on top)
    {WeightType::Q8_0_S16, "Q8_0_S16", kQK, sizeof(block_q8_0s16) / kPackRows, WeightType::Q8_0,
     WeightType::Q8_0_S16, Sparsity::Unstructured},
    {WeightType::Q8_0_24, "Q8_0_24", kQK, sizeof(block_q8_0x16_24) / kPackRows, WeightType::Q8_0,
     WeightType::Q8_0_24, Sparsity::TwoOfFour},
    // block_bytes 0: the block map's share of a row is under a byte a block (min_stride says the least)
    {WeightType::Q8_0_B16, "Q8_0_B16", kQK, 0, WeightType::Q8_0, WeightType::Q8_0_B16, Sparsity::Blocks},
};

// The facts of type id t, or nullptr when corelm does not know it.
constexpr const TypeInfo* find_type(int32_t t) {
    for (const TypeInfo& info : kTypes)
        if (int32_t(info.type) == t) return &info;
    return nullptr;
}

constexpr bool is_known_type(int32_t t) { return find_type(t) != nullptr; }

constexpr const char* type_name(WeightType t) {
    const TypeInfo* info = find_type(int32_t(t));
    return info ? info->name : "unknown";
}

constexpr int64_t block_size(WeightType t) {
    const TypeInfo* info = find_type(int32_t(t));
    return info ? info->block : 1;
}

// Bytes of one row of k elements, or 0 when k does not fit the type's blocks (or the type is unknown).
constexpr size_t row_bytes(WeightType t, int64_t k) {
    const TypeInfo* info = find_type(int32_t(t));
    return !info || k % info->block ? 0 : size_t(k / info->block) * info->block_bytes;
}

// A 16-row layout: rows come in whole groups of kPackRows.
constexpr bool is_packed(WeightType t) {
    const TypeInfo* info = find_type(int32_t(t));
    return info && info->base != t;
}

// Zeros left out (Q8_0_S16, Q8_0_24, Q8_0_B16): a 16-row layout made from its base type's rows by sparsify.
constexpr bool is_sparse(WeightType t) {
    const TypeInfo* info = find_type(int32_t(t));
    return info && info->sparsity != Sparsity::None;
}

// Rows hold the tensor's own stride of bytes (Q8_0_S16, Q8_0_B16), not row_bytes.
constexpr bool has_own_stride(WeightType t) {
    const TypeInfo* info = find_type(int32_t(t));
    return info && (info->sparsity == Sparsity::Unstructured || info->sparsity == Sparsity::Blocks);
}

// The fewest bytes a row of an own-stride layout can have: its share of the group's headers and padding.
constexpr size_t min_stride(WeightType t, int64_t k) {
    const TypeInfo* info = find_type(int32_t(t));
    if (info && info->sparsity == Sparsity::Blocks) return block_map_bytes(k / kQK) / kPackRows;
    return row_bytes(t, k) + kSparsePad / kPackRows;
}

constexpr WeightType packed_of(WeightType t) {
    const TypeInfo* info = find_type(int32_t(t));
    return info ? info->packed : t;
}

constexpr WeightType unpacked_of(WeightType t) {
    const TypeInfo* info = find_type(int32_t(t));
    return info ? info->base : t;
}

// ---- scalar fp16 / bf16 conversion (portable; SIMD paths use F16C / shifts) ----

inline uint32_t f32_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float bits_f32(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

inline float fp16_to_f32(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000) << 16;
    const uint32_t exp = (h >> 10) & 0x1f;
    const uint32_t man = h & 0x3ff;
    if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (man << 13));  // inf / nan
    if (exp == 0) {  // zero or subnormal: value = man * 2^-24
        const float v = float(man) * 5.9604644775390625e-08f;
        return sign ? -v : v;
    }
    return bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

// Round to nearest even, as F16C's vcvtps2ph with imm 0 does.
inline uint16_t f32_to_fp16(float f) {
    const uint32_t x = f32_bits(f);
    const uint16_t sign = uint16_t((x >> 16) & 0x8000);
    const uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 : 0);  // inf/nan
    if (ax >= 0x477ff000u) return sign | 0x7c00;  // rounds past 65504: overflow to inf
    if (ax < 0x38800000u) {  // below the smallest normal fp16: subnormal or zero
        const float v = bits_f32(ax) * 16777216.0f;  // scale by 2^24: exact
        const uint32_t m = uint32_t(std::nearbyint(v));
        return sign | uint16_t(m);
    }
    const uint32_t rounded = ax + 0xfffu + ((ax >> 13) & 1);
    return sign | uint16_t((rounded - 0x38000000u) >> 13);
}

inline float bf16_to_f32(uint16_t h) { return bits_f32(uint32_t(h) << 16); }

inline uint16_t f32_to_bf16(float f) {
    const uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t((x >> 16) | 0x40);  // quiet nan
    return uint16_t((x + 0x7fffu + ((x >> 16) & 1)) >> 16);
}

}  // namespace corelm
