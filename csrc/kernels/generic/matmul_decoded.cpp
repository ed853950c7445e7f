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

// y[m, col] += super-block sb of one weight row (at `block`) . the activations, for every m.
template <WeightType T>
void accumulate_k(const MatmulArgs& a, const uint8_t* block, int64_t sb, float* y_col) {
    const int64_t nb = a.k / kQK;
    KDecoded dec;
    decode_k(T, block, dec);
    for (int64_t m = 0; m < a.m; ++m) {
        const block_q8_act* x = a.xq + m * nb + sb * (kQK_K / kQK);
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
}

template <WeightType T>
void matmul_k(const MatmulArgs& a, int64_t n0, int64_t n1) {
    const size_t super_bytes = row_bytes(T, kQK_K);
    for (int64_t n = n0; n < n1; ++n) {
        for (int64_t m = 0; m < a.m; ++m) a.y[m * a.ldy + n] = 0.0f;
        for (int64_t sb = 0; sb < a.k / kQK_K; ++sb) accumulate_k<T>(a, a.w + n * a.w_stride + sb * super_bytes, sb, a.y + n);
    }
}

// The packed groups (Q4_K_X16, Q6_K_X16) for paths without their own kernels: each super-block
// of the 16 rows is unpacked to GGUF blocks on the stack, then as matmul_k.
template <WeightType T>
void matmul_k_x16(const MatmulArgs& a, int64_t n0, int64_t n1) {
    constexpr size_t kSuperBytes = T == WeightType::Q6_K ? sizeof(block_q6_K) : sizeof(block_q4_K);
    uint8_t rows[kPackRows * kSuperBytes];
    for (int64_t n = n0; n < n1; n += kPackRows) {
        const uint8_t* group = a.w + n * a.w_stride;
        for (int64_t m = 0; m < a.m; ++m)
            for (int r = 0; r < kPackRows; ++r) a.y[m * a.ldy + n + r] = 0.0f;
        for (int64_t sb = 0; sb < a.k / kQK_K; ++sb) {
            ref::unpack_rows_x16(packed_of(T), group + sb * kPackRows * kSuperBytes, rows, kSuperBytes, kQK_K);
            for (int r = 0; r < kPackRows; ++r) accumulate_k<T>(a, rows + r * kSuperBytes, sb, a.y + n + r);
        }
    }
}

template <WeightType T>
void matmul_32(const MatmulArgs& a, int64_t n0, int64_t n1) {
    const int64_t nb = a.k / kQK;
    const size_t block_bytes = row_bytes(T, kQK);
    Decoded32 dec;
    for (int64_t n = n0; n < n1; ++n) {
        for (int64_t m = 0; m < a.m; ++m) a.y[m * a.ldy + n] = 0.0f;
        const uint8_t* row = a.w + n * a.w_stride;
        for (int64_t b = 0; b < nb; ++b) {
            decode_32(T, row + b * block_bytes, dec);
            for (int64_t m = 0; m < a.m; ++m) {
                const block_q8_act& x = a.xq[m * nb + b];
                a.y[m * a.ldy + n] += x.d * (dec.d * float(idot(dec.q, x.qs, kQK)) + dec.m * float(x.s));
            }
        }
    }
}

}  // namespace

void fill_decoded(KernelTable& t) {
    t.matmul_q4_1 = matmul_32<WeightType::Q4_1>;
    t.matmul_q5_0 = matmul_32<WeightType::Q5_0>;
    t.matmul_q5_1 = matmul_32<WeightType::Q5_1>;
    t.matmul_q4_k = matmul_k<WeightType::Q4_K>;
    t.matmul_q5_k = matmul_k<WeightType::Q5_K>;
    t.matmul_q6_k = matmul_k<WeightType::Q6_K>;
    t.matmul_q4_kx16 = matmul_k_x16<WeightType::Q4_K>;
    t.matmul_q6_kx16 = matmul_k_x16<WeightType::Q6_K>;
}

}  // namespace corelm::CORELM_ISA_NS
