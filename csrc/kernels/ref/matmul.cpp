// Reference matrix products: one output at a time, blocks in order. The integer types
// multiply int8 activation blocks (block_q8_act) with the weights' integer codes exactly,
// then scale per block, as every SIMD path does.
#include <type_traits>
#include <vector>

#include "../../core/kernel_table.h"

namespace corelm::ref {

void quantize_act(const float* x, block_q8_act* y, int64_t k);

namespace {

template <typename Load>
void matmul_float(const MatmulArgs& a, int64_t n0, int64_t n1, Load load) {
    for (int64_t n = n0; n < n1; ++n) {
        const uint8_t* w = a.w + n * a.w_stride;
        for (int64_t m = 0; m < a.m; ++m) {
            const float* x = a.x + m * a.ldx;
            float acc = 0.0f;
            for (int64_t i = 0; i < a.k; ++i) acc += load(w, i) * x[i];
            a.y[m * a.ldy + n] = acc;
        }
    }
}

void matmul_f32(const MatmulArgs& a, int64_t n0, int64_t n1) {
    matmul_float(a, n0, n1, [](const uint8_t* w, int64_t i) { return reinterpret_cast<const float*>(w)[i]; });
}
void matmul_f16(const MatmulArgs& a, int64_t n0, int64_t n1) {
    matmul_float(a, n0, n1, [](const uint8_t* w, int64_t i) {
        return fp16_to_f32(reinterpret_cast<const uint16_t*>(w)[i]);
    });
}
void matmul_bf16(const MatmulArgs& a, int64_t n0, int64_t n1) {
    matmul_float(a, n0, n1, [](const uint8_t* w, int64_t i) {
        return bf16_to_f32(reinterpret_cast<const uint16_t*>(w)[i]);
    });
}

// block_dot(weight block, activation block) -> (integer dot, weight scale)
template <typename Block, typename BlockDot>
void matmul_quant(const MatmulArgs& a, int64_t n0, int64_t n1, BlockDot block_dot) {
    const int64_t nb = a.k / kQK;
    for (int64_t n = n0; n < n1; ++n) {
        const auto* w = reinterpret_cast<const Block*>(a.w + n * a.w_stride);
        for (int64_t m = 0; m < a.m; ++m) {
            const block_q8_act* x = a.xq + m * nb;
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; ++b) {
                acc += float(block_dot(w[b], x[b])) * (fp16_to_f32(w[b].d) * x[b].d);
            }
            a.y[m * a.ldy + n] = acc;
        }
    }
}

void matmul_q8_0(const MatmulArgs& a, int64_t n0, int64_t n1) {
    matmul_quant<block_q8_0>(a, n0, n1, [](const block_q8_0& w, const block_q8_act& x) {
        int32_t s = 0;
        for (int i = 0; i < kQK; ++i) s += int32_t(w.qs[i]) * x.qs[i];
        return s;
    });
}

void matmul_q4_0(const MatmulArgs& a, int64_t n0, int64_t n1) {
    matmul_quant<block_q4_0>(a, n0, n1, [](const block_q4_0& w, const block_q8_act& x) {
        int32_t s = 0;
        for (int i = 0; i < kQK / 2; ++i) {
            s += int32_t(w.qs[i] & 0x0f) * x.qs[i] + int32_t(w.qs[i] >> 4) * x.qs[i + kQK / 2];
        }
        return s - 8 * x.s;
    });
}

// Packed groups: the same integer dot per (row, block), read from the interleaved layout.
template <typename Block, int Offset>
void matmul_x16(const MatmulArgs& a, int64_t n0, int64_t n1) {
    constexpr bool kQ4 = sizeof(Block) == sizeof(block_q4_0x16);
    const int64_t nb = a.k / kQK;
    for (int64_t g = n0 / kPackRows; g < n1 / kPackRows; ++g) {
        const auto* grp = reinterpret_cast<const Block*>(a.w + g * kPackRows * a.w_stride);
        for (int64_t m = 0; m < a.m; ++m) {
            const block_q8_act* x = a.xq + m * nb;
            float acc[kPackRows] = {};
            for (int64_t b = 0; b < nb; ++b) {
                for (int r = 0; r < kPackRows; ++r) {
                    int32_t s = -Offset * x[b].s;
                    for (int j = 0; j < (kQ4 ? 4 : 8); ++j) {
                        for (int e = 0; e < 4; ++e) {
                            const uint8_t u = grp[b].qs[64 * j + 4 * r + e];
                            if (kQ4) s += int32_t(u & 0x0f) * x[b].qs[4 * j + e] + int32_t(u >> 4) * x[b].qs[16 + 4 * j + e];
                            else s += int32_t(u) * x[b].qs[4 * j + e];
                        }
                    }
                    acc[r] += float(s) * (fp16_to_f32(grp[b].d[r]) * x[b].d);
                }
            }
            for (int r = 0; r < kPackRows; ++r) a.y[m * a.ldy + g * kPackRows + r] = acc[r];
        }
    }
}

// The sparse layouts (Q8_0_S16, Q8_0_24, Q8_0_B16): each group decoded to Q8_0_X16, then that layout's product.
template <WeightType T>
void matmul_sparse(const MatmulArgs& a, int64_t n0, int64_t n1) {
    thread_local std::vector<block_q8_0x16> dense;
    dense.resize(size_t(a.k / kQK));
    for (int64_t g = n0 / kPackRows; g < n1 / kPackRows; ++g) {
        decode_sparse_group(T, a.w + g * kPackRows * a.w_stride, a.k, kPackRows * a.w_stride, dense.data());
        MatmulArgs one = a;
        one.w = reinterpret_cast<const uint8_t*>(dense.data());
        one.w_stride = row_bytes(WeightType::Q8_0_X16, a.k);
        one.y = a.y + g * kPackRows;
        matmul_x16<block_q8_0x16, 128>(one, 0, kPackRows);
    }
}

inline float element(const float* p) { return *p; }
inline float element(const uint16_t* p, std::false_type /*bf16*/) { return fp16_to_f32(*p); }
inline float element(const uint16_t* p, std::true_type /*bf16*/) { return bf16_to_f32(*p); }

// T: float (F32_X16) or uint16_t (F16_X16, BF16_X16 when BF16).
template <typename T, bool BF16>
void matmul_float_x16(const MatmulArgs& a, int64_t n0, int64_t n1) {
    for (int64_t g = n0 / kPackRows; g < n1 / kPackRows; ++g) {
        const auto* grp = reinterpret_cast<const T*>(a.w + g * kPackRows * a.w_stride);
        for (int64_t m = 0; m < a.m; ++m) {
            const float* x = a.x + m * a.ldx;
            float acc[kPackRows] = {};
            for (int64_t i = 0; i < a.k; ++i)
                for (int r = 0; r < kPackRows; ++r) {
                    const T* p = grp + i * kPackRows + r;
                    if constexpr (std::is_same_v<T, float>) acc[r] += element(p) * x[i];
                    else acc[r] += element(p, std::bool_constant<BF16>{}) * x[i];
                }
            for (int r = 0; r < kPackRows; ++r) a.y[m * a.ldy + g * kPackRows + r] = acc[r];
        }
    }
}

}  // namespace

void fill_matmul(KernelTable& t) {
    t.matmul_f32x16 = matmul_float_x16<float, false>;
    t.matmul_f16x16 = matmul_float_x16<uint16_t, false>;
    t.matmul_bf16x16 = matmul_float_x16<uint16_t, true>;
    t.matmul_q8_0x16 = matmul_x16<block_q8_0x16, 128>;
    t.matmul_q4_0x16 = matmul_x16<block_q4_0x16, 8>;
    t.matmul_q8_0s16 = matmul_sparse<WeightType::Q8_0_S16>;
    t.matmul_q8_0_24 = matmul_sparse<WeightType::Q8_0_24>;
    t.matmul_q8_0b16 = matmul_sparse<WeightType::Q8_0_B16>;
    t.quantize_act = quantize_act;
    t.matmul_f32 = matmul_f32;
    t.matmul_f16 = matmul_f16;
    t.matmul_bf16 = matmul_bf16;
    t.matmul_q8_0 = matmul_q8_0;
    t.matmul_q4_0 = matmul_q4_0;
}

}  // namespace corelm::ref
