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
    Q5_0_X16 = 1006,
    Q8_0_X16 = 1008,
    Q4_K_X16 = 1012,
    Q5_K_X16 = 1013,
    Q6_K_X16 = 1014,
    BF16_X16 = 1030,
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

// Bytes of one row of k elements, or 0 when k does not fit the type's block size.
inline size_t row_bytes(WeightType t, int64_t k) {
    switch (t) {
        case WeightType::F32:
        case WeightType::F32_X16: return size_t(k) * 4;
        case WeightType::F16:
        case WeightType::BF16:
        case WeightType::F16_X16:
        case WeightType::BF16_X16: return size_t(k) * 2;
        case WeightType::Q8_0:
        case WeightType::Q8_0_X16: return k % kQK ? 0 : size_t(k / kQK) * sizeof(block_q8_0);
        case WeightType::Q4_0:
        case WeightType::Q4_0_X16: return k % kQK ? 0 : size_t(k / kQK) * sizeof(block_q4_0);
        case WeightType::Q4_1: return k % kQK ? 0 : size_t(k / kQK) * sizeof(block_q4_1);
        case WeightType::Q5_0:
        case WeightType::Q5_0_X16: return k % kQK ? 0 : size_t(k / kQK) * sizeof(block_q5_0);
        case WeightType::Q5_1: return k % kQK ? 0 : size_t(k / kQK) * sizeof(block_q5_1);
        case WeightType::Q4_K:
        case WeightType::Q4_K_X16: return k % kQK_K ? 0 : size_t(k / kQK_K) * sizeof(block_q4_K);
        case WeightType::Q5_K:
        case WeightType::Q5_K_X16: return k % kQK_K ? 0 : size_t(k / kQK_K) * sizeof(block_q5_K);
        case WeightType::Q6_K:
        case WeightType::Q6_K_X16: return k % kQK_K ? 0 : size_t(k / kQK_K) * sizeof(block_q6_K);
    }
    return 0;
}

inline int64_t block_size(WeightType t) {
    if (t == WeightType::F32 || t == WeightType::F16 || t == WeightType::BF16 || t == WeightType::F32_X16 ||
        t == WeightType::F16_X16 || t == WeightType::BF16_X16)
        return 1;
    if (t == WeightType::Q4_K || t == WeightType::Q5_K || t == WeightType::Q6_K || t == WeightType::Q4_K_X16 ||
        t == WeightType::Q5_K_X16 || t == WeightType::Q6_K_X16)
        return kQK_K;
    return kQK;
}

// Rows must come in whole groups of kPackRows for these.
inline bool is_packed(WeightType t) {
    return t == WeightType::Q4_0_X16 || t == WeightType::Q8_0_X16 || t == WeightType::F32_X16 || t == WeightType::F16_X16 ||
           t == WeightType::BF16_X16 || t == WeightType::Q4_K_X16 || t == WeightType::Q6_K_X16 ||
           t == WeightType::Q5_0_X16 || t == WeightType::Q5_K_X16;
}

inline WeightType packed_of(WeightType t) {
    switch (t) {
        case WeightType::Q4_0: return WeightType::Q4_0_X16;
        case WeightType::Q5_0: return WeightType::Q5_0_X16;
        case WeightType::Q8_0: return WeightType::Q8_0_X16;
        case WeightType::F32: return WeightType::F32_X16;
        case WeightType::F16: return WeightType::F16_X16;
        case WeightType::BF16: return WeightType::BF16_X16;
        case WeightType::Q4_K: return WeightType::Q4_K_X16;
        case WeightType::Q5_K: return WeightType::Q5_K_X16;
        case WeightType::Q6_K: return WeightType::Q6_K_X16;
        default: return t;
    }
}

inline WeightType unpacked_of(WeightType t) {
    switch (t) {
        case WeightType::Q4_0_X16: return WeightType::Q4_0;
        case WeightType::Q5_0_X16: return WeightType::Q5_0;
        case WeightType::Q8_0_X16: return WeightType::Q8_0;
        case WeightType::F32_X16: return WeightType::F32;
        case WeightType::F16_X16: return WeightType::F16;
        case WeightType::BF16_X16: return WeightType::BF16;
        case WeightType::Q4_K_X16: return WeightType::Q4_K;
        case WeightType::Q5_K_X16: return WeightType::Q5_K;
        case WeightType::Q6_K_X16: return WeightType::Q6_K;
        default: return t;
    }
}

inline bool is_known_type(int32_t t) {
    switch (WeightType(t)) {
        case WeightType::F32: case WeightType::F16: case WeightType::BF16:
        case WeightType::Q8_0: case WeightType::Q4_0:
        case WeightType::Q4_1: case WeightType::Q5_0: case WeightType::Q5_1:
        case WeightType::Q4_0_X16: case WeightType::Q8_0_X16:
        case WeightType::F32_X16: case WeightType::F16_X16: case WeightType::BF16_X16:
        case WeightType::Q4_K_X16: case WeightType::Q6_K_X16: case WeightType::Q5_0_X16:
        case WeightType::Q5_K_X16:
        case WeightType::Q4_K: case WeightType::Q5_K: case WeightType::Q6_K: return true;
    }
    return false;
}

inline const char* type_name(WeightType t) {
    switch (t) {
        case WeightType::F32: return "F32";
        case WeightType::F16: return "F16";
        case WeightType::BF16: return "BF16";
        case WeightType::Q8_0: return "Q8_0";
        case WeightType::Q4_0: return "Q4_0";
        case WeightType::Q4_1: return "Q4_1";
        case WeightType::Q5_0: return "Q5_0";
        case WeightType::Q5_1: return "Q5_1";
        case WeightType::Q4_0_X16: return "Q4_0_X16";
        case WeightType::Q5_0_X16: return "Q5_0_X16";
        case WeightType::Q4_K: return "Q4_K";
        case WeightType::Q5_K: return "Q5_K";
        case WeightType::Q6_K: return "Q6_K";
        case WeightType::Q8_0_X16: return "Q8_0_X16";
        case WeightType::F32_X16: return "F32_X16";
        case WeightType::F16_X16: return "F16_X16";
        case WeightType::BF16_X16: return "BF16_X16";
        case WeightType::Q4_K_X16: return "Q4_K_X16";
        case WeightType::Q5_K_X16: return "Q5_K_X16";
        case WeightType::Q6_K_X16: return "Q6_K_X16";
    }
    return "unknown";
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
