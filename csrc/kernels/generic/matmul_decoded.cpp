// Matrix products of the types kernels decode rather than read in place: the k-quants (Q4_K,
// Q5_K, Q6_K) and Q4_1 / Q5_0 / Q5_1, compiled once per path like ops.cpp. Each block of a
// weight row is decoded once to int8 codes (decode.h), then meets every activation row's int8
// blocks in integer dot products: one scale per 32 (Q4_K/Q5_K and the 32-blocks, the min term
// applied through the activation block's sum) or per 16 (Q6_K).
#include "../../core/kernel_table.h"
#include "../../core/decode.h"

#ifndef CORELM_ISA_NS
#error "compile with -DCORELM_ISA_NS=<path name>"
#endif

namespace corelm::CORELM_ISA_NS {

namespace {

inline int32_t idot(const int8_t* a, const int8_t* b, int n) {
    int32_t s = 0;
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < n; ++i) s += int32_t(a[i]) * int32_t(b[i]);
    return s;
}

constexpr bool is_kquant(WeightType t) { return t == WeightType::Q4_K || t == WeightType::Q5_K || t == WeightType::Q6_K; }

// y[m, col] += block b of one weight row (at `block`: a super-block of 256 for the k-quants, else
// 32 elements) . the activations, for every activation row m.
template <WeightType T>
void accumulate(const MatmulArgs& a, const uint8_t* block, int64_t b, float* y_col) {
    const int64_t nb = a.k / kQK;
    if constexpr (is_kquant(T)) {
        KDecoded dec;
        decode_k(T, block, dec);
        for (int64_t m = 0; m < a.m; ++m) {
            const block_q8_act* x = a.xq + m * nb + b * (kQK_K / kQK);
            float acc = 0.0f;
            for (int j = 0; j < kQK_K / kQK; ++j) {
                const int8_t* q = dec.q + kQK * j;
                if constexpr (T == WeightType::Q6_K) {
                    acc += x[j].d * (dec.d_sc16[2 * j] * float(idot(q, x[j].qs, 16)) +
                                     dec.d_sc16[2 * j + 1] * float(idot(q + 16, x[j].qs + 16, 16)));
                } else {
                    acc += x[j].d * (dec.d_sc[j] * float(idot(q, x[j].qs, kQK)) - dec.dmin_m[j] * float(x[j].s));
                }
            }
            y_col[m * a.ldy] += acc;
        }
    } else {
        Decoded32 dec;
        decode_32(T, block, dec);
        for (int64_t m = 0; m < a.m; ++m) {
            const block_q8_act& x = a.xq[m * nb + b];
            y_col[m * a.ldy] += x.d * (dec.d * float(idot(dec.q, x.qs, kQK)) + dec.m * float(x.s));
        }
    }
}

template <WeightType T>
constexpr int64_t kBlock = is_kquant(T) ? kQK_K : kQK;

template <WeightType T>
void matmul_decoded(const MatmulArgs& a, int64_t n0, int64_t n1) {
    const size_t block_bytes = row_bytes(T, kBlock<T>);
    for (int64_t n = n0; n < n1; ++n) {
        for (int64_t m = 0; m < a.m; ++m) a.y[m * a.ldy + n] = 0.0f;
        for (int64_t b = 0; b < a.k / kBlock<T>; ++b) accumulate<T>(a, a.w + n * a.w_stride + b * block_bytes, b, a.y + n);
    }
}

// The packed groups of the decoded types for paths without their own kernels: each block column
// of the 16 rows is unpacked to GGUF blocks on the stack, then as matmul_decoded.
template <WeightType T>
void matmul_decoded_x16(const MatmulArgs& a, int64_t n0, int64_t n1) {
    constexpr size_t kBlockBytes = row_bytes(T, kBlock<T>);
    uint8_t rows[kPackRows * kBlockBytes];
    for (int64_t n = n0; n < n1; n += kPackRows) {
        const uint8_t* group = a.w + n * a.w_stride;
        for (int64_t m = 0; m < a.m; ++m)
            for (int r = 0; r < kPackRows; ++r) a.y[m * a.ldy + n + r] = 0.0f;
        for (int64_t b = 0; b < a.k / kBlock<T>; ++b) {
            ref::unpack_rows_x16(packed_of(T), group + b * kPackRows * kBlockBytes, rows, kBlockBytes, kBlock<T>);
            for (int r = 0; r < kPackRows; ++r) accumulate<T>(a, rows + r * kBlockBytes, b, a.y + n + r);
        }
    }
}

}  // namespace

void fill_decoded(KernelTable& t) {
    t.matmul_q4_1 = matmul_decoded<WeightType::Q4_1>;
    t.matmul_q5_0 = matmul_decoded<WeightType::Q5_0>;
    t.matmul_q5_1 = matmul_decoded<WeightType::Q5_1>;
    t.matmul_q4_k = matmul_decoded<WeightType::Q4_K>;
    t.matmul_q5_k = matmul_decoded<WeightType::Q5_K>;
    t.matmul_q6_k = matmul_decoded<WeightType::Q6_K>;
    t.matmul_q4_kx16 = matmul_decoded_x16<WeightType::Q4_K>;
    t.matmul_q5_kx16 = matmul_decoded_x16<WeightType::Q5_K>;
    t.matmul_q6_kx16 = matmul_decoded_x16<WeightType::Q6_K>;
    t.matmul_q5_0x16 = matmul_decoded_x16<WeightType::Q5_0>;
    t.matmul_q4_1x16 = matmul_decoded_x16<WeightType::Q4_1>;
    t.matmul_q5_1x16 = matmul_decoded_x16<WeightType::Q5_1>;
}

}  // namespace corelm::CORELM_ISA_NS
