// Decoding the block types that have no kernel of their own layout to integer codes and float
// scales: the 32-element Q4_1 / Q5_0 / Q5_1 blocks and the k-quant super-blocks (Q4_K, Q5_K,
// Q6_K). Inline so that each kernel path compiles it with its own flags (the loops vectorise).
#pragma once
#include <cstdint>

#include "formats.h"

namespace corelm {

// One Q4_1 / Q5_0 / Q5_1 block: value i = d * q[i] + m (Q5_0's offset is folded into q: m = 0).
struct Decoded32 {
    int8_t q[kQK];
    float d, m;
};

inline void decode_32(WeightType t, const uint8_t* block, Decoded32& out) {
    const uint8_t* qs;
    uint32_t qh = 0;
    if (t == WeightType::Q4_1) {
        const auto& b = *reinterpret_cast<const block_q4_1*>(block);
        out.d = fp16_to_f32(b.d);
        out.m = fp16_to_f32(b.m);
        qs = b.qs;
    } else if (t == WeightType::Q5_1) {
        const auto& b = *reinterpret_cast<const block_q5_1*>(block);
        out.d = fp16_to_f32(b.d);
        out.m = fp16_to_f32(b.m);
        std::memcpy(&qh, b.qh, 4);
        qs = b.qs;
    } else {  // Q5_0
        const auto& b = *reinterpret_cast<const block_q5_0*>(block);
        out.d = fp16_to_f32(b.d);
        out.m = 0.0f;
        std::memcpy(&qh, b.qh, 4);
        qs = b.qs;
    }
    const int offset = t == WeightType::Q5_0 ? 16 : 0;
    for (int i = 0; i < kQK / 2; ++i) {
        out.q[i] = int8_t(((qs[i] & 0x0f) | (((qh >> i) & 1) << 4)) - offset);
        out.q[i + kQK / 2] = int8_t(((qs[i] >> 4) | (((qh >> (i + kQK / 2)) & 1) << 4)) - offset);
    }
}

// Q4_K / Q5_K: q in 0..15 / 0..31 with d*sc and dmin*m per 32; Q6_K: q - 32 with d*sc per 16.
struct KDecoded {
    alignas(64) int8_t q[kQK_K];
    float d_sc[kQK_K / 32], dmin_m[kQK_K / 32];
    float d_sc16[kQK_K / 16];
};

// ggml's get_scale_min_k4: 6-bit scale and min of sub-block j from the 12 packed bytes.
inline void scale_min_k4(int j, const uint8_t* q, uint8_t& d, uint8_t& m) {
    if (j < 4) {
        d = q[j] & 63;
        m = q[j + 4] & 63;
    } else {
        d = uint8_t((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4));
        m = uint8_t((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}
inline void decode_k(WeightType t, const uint8_t* block, KDecoded& out) {
    if (t == WeightType::Q6_K) {
        const auto& b = *reinterpret_cast<const block_q6_K*>(block);
        const float d = fp16_to_f32(b.d);
        for (int i = 0; i < kQK_K / 16; ++i) out.d_sc16[i] = d * float(b.scales[i]);
        for (int n = 0; n < 2; ++n) {  // two halves of 128
            const uint8_t* ql = b.ql + 64 * n;
            const uint8_t* qh = b.qh + 32 * n;
            int8_t* q = out.q + 128 * n;
            for (int l = 0; l < 32; ++l) {
                q[l] = int8_t(((ql[l] & 0x0f) | (((qh[l] >> 0) & 3) << 4)) - 32);
                q[l + 32] = int8_t(((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32);
                q[l + 64] = int8_t(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
                q[l + 96] = int8_t(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
            }
        }
        return;
    }
    // Q4_K and Q5_K share the header and the scale packing.
    const bool q5 = t == WeightType::Q5_K;
    const auto* h4 = reinterpret_cast<const block_q4_K*>(block);
    const auto* h5 = reinterpret_cast<const block_q5_K*>(block);
    const float d = fp16_to_f32(h4->d), dmin = fp16_to_f32(h4->dmin);
    const uint8_t* scales = h4->scales;
    const uint8_t* qs = q5 ? h5->qs : h4->qs;
    for (int j = 0; j < kQK_K / 32; ++j) {
        uint8_t sc, m;
        scale_min_k4(j, scales, sc, m);
        out.d_sc[j] = d * float(sc);
        out.dmin_m[j] = dmin * float(m);
    }
    for (int c = 0; c < kQK_K / 64; ++c) {  // 64 values per 32 bytes: low nibbles then high
        const uint8_t* q = qs + 32 * c;
        for (int l = 0; l < 32; ++l) {
            int lo = q[l] & 0x0f, hi = q[l] >> 4;
            if (q5) {
                lo += (h5->qh[l] >> (2 * c)) & 1 ? 16 : 0;
                hi += (h5->qh[l] >> (2 * c + 1)) & 1 ? 16 : 0;
            }
            out.q[64 * c + l] = int8_t(lo);
            out.q[64 * c + 32 + l] = int8_t(hi);
        }
    }
}


}  // namespace corelm
