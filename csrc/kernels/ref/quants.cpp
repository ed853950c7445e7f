// Reference weight (de)quantization and activation quantization. Weight quantizers follow
// ggml-quants.c's reference quantizers exactly (the `gguf` package's numpy quantizer is
// bit-identical to them); the k-quants' are in quantize_k.cpp.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <type_traits>

#include "../../core/kernel_table.h"
#include "../../core/decode.h"

namespace corelm::ref {

namespace {

// Element i < 16 in the low nibble of qs[i], i >= 16 in the high nibble of qs[i - 16]; for the
// 5-bit types the fifth bit of element i is bit i of qh.
template <typename Block>
void pack_codes(const uint8_t* q, Block& y) {
    uint32_t qh = 0;
    for (int i = 0; i < kQK / 2; ++i) {
        y.qs[i] = uint8_t((q[i] & 0x0f) | ((q[i + kQK / 2] & 0x0f) << 4));
        qh |= uint32_t(q[i] >> 4) << i | uint32_t(q[i + kQK / 2] >> 4) << (i + kQK / 2);
    }
    if constexpr (!std::is_same_v<Block, block_q4_1>) std::memcpy(y.qh, &qh, 4);
}

}  // namespace

void quantize_row_q8_0(const float* x, block_q8_0* y, int64_t k) {
    for (int64_t b = 0; b < k / kQK; ++b, x += kQK) {
        float amax = 0.0f;
        for (int i = 0; i < kQK; ++i) amax = std::max(amax, std::fabs(x[i]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = f32_to_fp16(d);
        for (int i = 0; i < kQK; ++i) y[b].qs[i] = int8_t(std::round(x[i] * id));
    }
}

void quantize_row_q4_0(const float* x, block_q4_0* y, int64_t k) {
    for (int64_t b = 0; b < k / kQK; ++b, x += kQK) {
        float amax = 0.0f, max = 0.0f;  // max keeps the sign of the largest magnitude
        for (int i = 0; i < kQK; ++i) {
            if (std::fabs(x[i]) > amax) { amax = std::fabs(x[i]); max = x[i]; }
        }
        const float d = max / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = f32_to_fp16(d);
        for (int i = 0; i < kQK / 2; ++i) {
            const uint8_t lo = uint8_t(std::min(15, int(int8_t(x[i] * id + 8.5f))));
            const uint8_t hi = uint8_t(std::min(15, int(int8_t(x[i + kQK / 2] * id + 8.5f))));
            y[b].qs[i] = uint8_t(lo | (hi << 4));
        }
    }
}

// Q4_1 / Q5_1: codes from the block's min upwards, rounded half up (ggml's (uint8_t)(v + 0.5f)).
template <int NMAX, typename Block>
void quantize_row_min(const float* x, Block* y, int64_t k) {
    for (int64_t b = 0; b < k / kQK; ++b, x += kQK) {
        float min = x[0], max = x[0];
        for (int i = 1; i < kQK; ++i) {
            min = std::min(min, x[i]);
            max = std::max(max, x[i]);
        }
        const float d = (max - min) / float(NMAX);
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = f32_to_fp16(d);
        y[b].m = f32_to_fp16(min);
        uint8_t q[kQK];
        for (int i = 0; i < kQK; ++i) q[i] = uint8_t(std::min(NMAX, int(uint8_t((x[i] - min) * id + 0.5f))));
        pack_codes(q, y[b]);
    }
}

void quantize_row_q5_0(const float* x, block_q5_0* y, int64_t k) {
    for (int64_t b = 0; b < k / kQK; ++b, x += kQK) {
        float amax = 0.0f, max = 0.0f;
        for (int i = 0; i < kQK; ++i) {
            if (std::fabs(x[i]) > amax) { amax = std::fabs(x[i]); max = x[i]; }
        }
        const float d = max / -16.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = f32_to_fp16(d);
        uint8_t q[kQK];
        for (int i = 0; i < kQK; ++i) q[i] = uint8_t(std::min(31, int(int8_t(x[i] * id + 16.5f))));
        pack_codes(q, y[b]);
    }
}

void dequantize_row(WeightType t, const uint8_t* row, float* y, int64_t k) {
    switch (t) {
        case WeightType::Q4_K:
        case WeightType::Q5_K:
        case WeightType::Q6_K: {
            const size_t bytes = row_bytes(t, kQK_K);
            KDecoded dec;
            for (int64_t sb = 0; sb < k / kQK_K; ++sb, y += kQK_K) {
                decode_k(t, row + sb * bytes, dec);
                for (int i = 0; i < kQK_K; ++i) {
                    y[i] = t == WeightType::Q6_K ? dec.d_sc16[i / 16] * float(dec.q[i])
                                                 : dec.d_sc[i / 32] * float(dec.q[i]) - dec.dmin_m[i / 32];
                }
            }
            return;
        }
        case WeightType::Q4_1:
        case WeightType::Q5_0:
        case WeightType::Q5_1: {
            const size_t bytes = row_bytes(t, kQK);
            Decoded32 dec;
            for (int64_t b = 0; b < k / kQK; ++b, y += kQK) {
                decode_32(t, row + b * bytes, dec);
                for (int i = 0; i < kQK; ++i) y[i] = float(dec.q[i]) * dec.d + dec.m;
            }
            return;
        }
        case WeightType::F32:
            std::copy_n(reinterpret_cast<const float*>(row), k, y);
            return;
        case WeightType::F16: {
            const auto* h = reinterpret_cast<const uint16_t*>(row);
            for (int64_t i = 0; i < k; ++i) y[i] = fp16_to_f32(h[i]);
            return;
        }
        case WeightType::BF16: {
            const auto* h = reinterpret_cast<const uint16_t*>(row);
            for (int64_t i = 0; i < k; ++i) y[i] = bf16_to_f32(h[i]);
            return;
        }
        case WeightType::Q8_0: {
            const auto* b = reinterpret_cast<const block_q8_0*>(row);
            for (int64_t j = 0; j < k / kQK; ++j) {
                const float d = fp16_to_f32(b[j].d);
                for (int i = 0; i < kQK; ++i) y[j * kQK + i] = float(b[j].qs[i]) * d;
            }
            return;
        }
        default:
            return;  // packed: groups of rows, not rows; the drivers unpack them first (unpack_rows_x16)
        case WeightType::Q4_0: {
            const auto* b = reinterpret_cast<const block_q4_0*>(row);
            for (int64_t j = 0; j < k / kQK; ++j) {
                const float d = fp16_to_f32(b[j].d);
                for (int i = 0; i < kQK / 2; ++i) {
                    y[j * kQK + i] = float((b[j].qs[i] & 0x0f) - 8) * d;
                    y[j * kQK + i + kQK / 2] = float((b[j].qs[i] >> 4) - 8) * d;
                }
            }
            return;
        }
    }
}

namespace {

// One row's bytes <-> its place in a packed group of kPackRows rows; `to_packed` picks the direction.
struct RowSlot {
    uint8_t* group;
    uint8_t* row;
    int r;
    bool to_packed;

    void move(uint8_t& packed, uint8_t& unpacked, uint8_t flip = 0) const {
        if (to_packed) packed = unpacked ^ flip;
        else unpacked = packed ^ flip;
    }
    // n bytes of the row as 4-byte slices: group[at + 64*i + 4*r + e] <-> row[from + 4*i + e]
    void slices(size_t at, size_t from, int n, uint8_t flip = 0) const {
        for (int i = 0; i < n / 4; ++i)
            for (int e = 0; e < 4; ++e) move(group[at + 64 * i + 4 * r + e], row[from + 4 * i + e], flip);
    }
    // n fields of `width` bytes, transposed: field i of the 16 rows side by side
    void fields(size_t at, size_t from, int n, int width) const {
        for (int i = 0; i < n; ++i)
            for (int e = 0; e < width; ++e) move(group[at + (i * kPackRows + r) * width + e], row[from + i * width + e]);
    }
};

void interleave_rows_x16(WeightType packed, uint8_t* group, uint8_t* rows, size_t row_stride, int64_t k,
                         bool to_packed) {
    const WeightType base = unpacked_of(packed);
    const int64_t blocks = k / block_size(base);
    const size_t block_bytes = row_bytes(base, block_size(base));
    for (int r = 0; r < kPackRows; ++r) {
        for (int64_t b = 0; b < blocks; ++b) {
            const RowSlot slot{group + b * kPackRows * block_bytes, rows + r * row_stride + b * block_bytes, r, to_packed};
            switch (packed) {
                case WeightType::F32_X16: slot.fields(0, 0, 1, 4); break;  // blocks of one element
                case WeightType::F16_X16:
                case WeightType::BF16_X16: slot.fields(0, 0, 1, 2); break;
                case WeightType::Q4_0_X16:
                    slot.fields(offsetof(block_q4_0x16, d), offsetof(block_q4_0, d), 1, 2);
                    slot.slices(offsetof(block_q4_0x16, qs), offsetof(block_q4_0, qs), kQK / 2);
                    break;
                case WeightType::Q5_0_X16:
                    slot.fields(offsetof(block_q5_0x16, d), offsetof(block_q5_0, d), 1, 2);
                    slot.fields(offsetof(block_q5_0x16, qh), offsetof(block_q5_0, qh), 1, 4);
                    slot.slices(offsetof(block_q5_0x16, qs), offsetof(block_q5_0, qs), kQK / 2);
                    break;
                case WeightType::Q4_1_X16:
                    slot.fields(offsetof(block_q4_1x16, d), offsetof(block_q4_1, d), 1, 2);
                    slot.fields(offsetof(block_q4_1x16, m), offsetof(block_q4_1, m), 1, 2);
                    slot.slices(offsetof(block_q4_1x16, qs), offsetof(block_q4_1, qs), kQK / 2);
                    break;
                case WeightType::Q5_1_X16:
                    slot.fields(offsetof(block_q5_1x16, d), offsetof(block_q5_1, d), 1, 2);
                    slot.fields(offsetof(block_q5_1x16, m), offsetof(block_q5_1, m), 1, 2);
                    slot.fields(offsetof(block_q5_1x16, qh), offsetof(block_q5_1, qh), 1, 4);
                    slot.slices(offsetof(block_q5_1x16, qs), offsetof(block_q5_1, qs), kQK / 2);
                    break;
                case WeightType::Q8_0_X16:  // codes stored unsigned (+128)
                    slot.fields(offsetof(block_q8_0x16, d), offsetof(block_q8_0, d), 1, 2);
                    slot.slices(offsetof(block_q8_0x16, qs), offsetof(block_q8_0, qs), kQK, 0x80);
                    break;
                case WeightType::Q4_K_X16:
                    slot.fields(offsetof(block_q4_Kx16, d), offsetof(block_q4_K, d), 1, 2);
                    slot.fields(offsetof(block_q4_Kx16, dmin), offsetof(block_q4_K, dmin), 1, 2);
                    slot.fields(offsetof(block_q4_Kx16, scales), offsetof(block_q4_K, scales), 12, 1);
                    slot.slices(offsetof(block_q4_Kx16, qs), offsetof(block_q4_K, qs), kQK_K / 2);
                    break;
                case WeightType::Q5_K_X16:
                    slot.fields(offsetof(block_q5_Kx16, d), offsetof(block_q5_K, d), 1, 2);
                    slot.fields(offsetof(block_q5_Kx16, dmin), offsetof(block_q5_K, dmin), 1, 2);
                    slot.fields(offsetof(block_q5_Kx16, scales), offsetof(block_q5_K, scales), 12, 1);
                    slot.slices(offsetof(block_q5_Kx16, qh), offsetof(block_q5_K, qh), kQK_K / 8);
                    slot.slices(offsetof(block_q5_Kx16, qs), offsetof(block_q5_K, qs), kQK_K / 2);
                    break;
                case WeightType::Q6_K_X16:
                    slot.slices(offsetof(block_q6_Kx16, ql), offsetof(block_q6_K, ql), kQK_K / 2);
                    slot.slices(offsetof(block_q6_Kx16, qh), offsetof(block_q6_K, qh), kQK_K / 4);
                    slot.fields(offsetof(block_q6_Kx16, scales), offsetof(block_q6_K, scales), kQK_K / 16, 1);
                    slot.fields(offsetof(block_q6_Kx16, d), offsetof(block_q6_K, d), 1, 2);
                    break;
                default: return;
            }
        }
    }
}

}  // namespace

void pack_rows_x16(WeightType packed, const uint8_t* rows, size_t row_stride, uint8_t* out, int64_t k) {
    interleave_rows_x16(packed, out, const_cast<uint8_t*>(rows), row_stride, k, true);  // rows only read
}

void unpack_rows_x16(WeightType packed, const uint8_t* group, uint8_t* rows, size_t row_stride, int64_t k) {
    interleave_rows_x16(packed, const_cast<uint8_t*>(group), rows, row_stride, k, false);  // group only read
}

void quantize_row(WeightType t, const float* x, uint8_t* row, int64_t k) {
    switch (t) {
        case WeightType::F32:
            std::copy_n(x, k, reinterpret_cast<float*>(row));
            return;
        case WeightType::F16: {
            auto* h = reinterpret_cast<uint16_t*>(row);
            for (int64_t i = 0; i < k; ++i) h[i] = f32_to_fp16(x[i]);
            return;
        }
        case WeightType::BF16: {
            auto* h = reinterpret_cast<uint16_t*>(row);
            for (int64_t i = 0; i < k; ++i) h[i] = f32_to_bf16(x[i]);
            return;
        }
        case WeightType::Q8_0:
            quantize_row_q8_0(x, reinterpret_cast<block_q8_0*>(row), k);
            return;
        case WeightType::Q4_0:
            quantize_row_q4_0(x, reinterpret_cast<block_q4_0*>(row), k);
            return;
        default:
            return;  // packed: made from rows by pack_rows_x16, never from floats directly
        case WeightType::Q4_1:
            quantize_row_min<15>(x, reinterpret_cast<block_q4_1*>(row), k);
            return;
        case WeightType::Q5_0:
            quantize_row_q5_0(x, reinterpret_cast<block_q5_0*>(row), k);
            return;
        case WeightType::Q5_1:
            quantize_row_min<31>(x, reinterpret_cast<block_q5_1*>(row), k);
            return;
        case WeightType::Q4_K:
            quantize_row_q4_K(x, reinterpret_cast<block_q4_K*>(row), k);
            return;
        case WeightType::Q5_K:
            quantize_row_q5_K(x, reinterpret_cast<block_q5_K*>(row), k);
            return;
        case WeightType::Q6_K:
            quantize_row_q6_K(x, reinterpret_cast<block_q6_K*>(row), k);
            return;
    }
}

// Activation quantization: symmetric int8 per block of 32, d = amax / 127, round half to
// even (what every SIMD path's float->int conversion does, so all paths agree bit for bit).
void quantize_act(const float* x, block_q8_act* y, int64_t k) {
    for (int64_t b = 0; b < k / kQK; ++b, x += kQK) {
        float amax = 0.0f;
        for (int i = 0; i < kQK; ++i) amax = std::max(amax, std::fabs(x[i]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 127.0f / amax : 0.0f;
        int32_t s = 0;
        for (int i = 0; i < kQK; ++i) {
            const int q = int(std::nearbyint(x[i] * id));
            y[b].qs[i] = int8_t(q);
            s += q;
        }
        y[b].d = d;
        y[b].s = s;
    }
}

}  // namespace corelm::ref
