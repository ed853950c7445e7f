// The kernel contract. Every instruction-set path (ref, avx2, avx512, ...) fills a
// KernelTable with functions of these exact signatures; entries it leaves null are taken
// from the next slower path (dispatch.cpp), so an ISA implements only what it speeds up.
// Kernels do no threading and no allocation: drivers (ops.cpp) split the work and call
// them on disjoint ranges.
#pragma once
#include <cstdint>

#include "formats.h"

namespace corelm {

// y[0:m, n0:n1] = x[0:m, 0:k] . W[n0:n1, 0:k]^T  (W is stored as n rows of k elements; for the
// packed types as n/16 groups of 16 rows, and n0, n1 are multiples of 16)
struct MatmulArgs {
    const uint8_t* w;            // weight rows, `w_stride` bytes apart
    size_t w_stride;
    const float* x;              // fp32 activations, `ldx` floats apart (float weight types)
    int64_t ldx;
    const block_q8_act* xq;      // activations quantized per row (integer weight types)
    int64_t m, n, k;
    float* y;
    int64_t ldy;
};
using MatmulFn = void (*)(const MatmulArgs&, int64_t n0, int64_t n1);

// Grouped-query attention of m query rows at positions n_past .. n_past+m-1 against keys/values
// of positions 0 .. n_past+m-1. Causal: a row sees the keys up to its own position (decoders),
// or only the last `window` of them (sliding-window attention, Mistral); otherwise every row sees
// all n_past+m keys (encoders). Key j of kv head h starts at element
// h * kv_head_stride + j * kv_row_stride of k and v: a cache [hkv, capacity, d] or a step's own
// [m, hkv, d] rows. `attention` splits the work in tasks of (query row, kv head): task t covers
// row t / hkv, kv head t % hkv, and its hq/hkv heads. `attention_seqs` serves a batch: the m rows
// are n_seqs sequences one after another (rows seq_offsets[s] .. seq_offsets[s+1]), each
// attending only to its own rows (n_past = 0, window = 0); task t covers sequence t / hkv, kv head t % hkv.
struct AttentionArgs {
    const float* q;              // [m, hq, d]
    const void* k;               // fp32 or fp16
    const void* v;               // same type and layout as k
    bool f16_cache;
    int64_t kv_head_stride, kv_row_stride;
    int64_t m, hq, hkv, d, n_past;
    bool causal;
    float scale;
    float* out;                  // [m, hq, d]
    const int32_t* seq_offsets = nullptr;  // attention_seqs: [n_seqs + 1]
    int64_t n_seqs = 0;
    int64_t window = 0;          // causal only: a row sees its last `window` keys (0: all of them)

    // A row attends to keys first_key(row) .. keys_of_row(row) - 1.
    int64_t keys_of_row(int64_t row) const { return causal ? n_past + row + 1 : n_past + m; }
    int64_t first_key(int64_t row) const {
        return causal && window > 0 && keys_of_row(row) > window ? keys_of_row(row) - window : 0;
    }
    int64_t kv_at(int64_t head, int64_t key) const { return head * kv_head_stride + key * kv_row_stride; }
    // The single-sequence problem of attention_seqs' i-th sequence: its rows, keys and outputs.
    // Threads get contiguous ranges of tasks and batches come sorted by length, so the i-th
    // sequence is taken from both ends in turn (0, n-1, 1, n-2, ...): each range mixes lengths.
    AttentionArgs sequence(int64_t i) const {
        const int64_t s = i % 2 == 0 ? i / 2 : n_seqs - 1 - i / 2;
        const int64_t r0 = seq_offsets[s], r1 = seq_offsets[s + 1];
        AttentionArgs one = *this;
        one.q = q + r0 * hq * d;
        one.k = static_cast<const char*>(k) + r0 * kv_row_stride * (f16_cache ? 2 : 4);
        one.v = static_cast<const char*>(v) + r0 * kv_row_stride * (f16_cache ? 2 : 4);
        one.m = r1 - r0;
        one.out = out + r0 * hq * d;
        one.seq_offsets = nullptr;
        one.n_seqs = 0;
        return one;
    }
};
using AttentionFn = void (*)(const AttentionArgs&, int64_t task0, int64_t task1);

using QuantizeActFn = void (*)(const float* x, block_q8_act* y, int64_t k);
using RmsNormFn = void (*)(const float* x, const float* w, float* y, int64_t rows, int64_t d, float eps);
using LayerNormFn = void (*)(const float* x, const float* w, const float* b, float* y,
                             int64_t rows, int64_t d, float eps);
using SoftmaxFn = void (*)(const float* x, float* y, int64_t rows, int64_t n);
// In place on x [rows, heads, d]: rotates the first n_rot dims of every head by
// pos[row] * inv_freq[i]; neox pairs (i, i + n_rot/2), otherwise (2i, 2i+1).
using RopeFn = void (*)(float* x, const int32_t* pos, const float* inv_freq, int64_t rows,
                        int64_t heads, int64_t d, int64_t n_rot, bool neox);
using UnaryFn = void (*)(const float* x, float* y, int64_t n);
using BinaryFn = void (*)(const float* a, const float* b, float* y, int64_t n);

// The matrix product of each weight type, as M(X, type, kernel) - the kernel ops.cpp runs for a
// weight of that type. Every weight type (formats.h's kTypes) has one.
#define CORELM_MATMUL_KERNELS(M, X) \
    M(X, F32, matmul_f32) \
    M(X, F16, matmul_f16) \
    M(X, BF16, matmul_bf16) \
    M(X, Q8_0, matmul_q8_0) \
    M(X, Q6_K, matmul_q6_k) \
    M(X, Q5_1, matmul_q5_1) \
    M(X, Q5_K, matmul_q5_k) \
    M(X, Q5_0, matmul_q5_0) \
    M(X, Q4_1, matmul_q4_1) \
    M(X, Q4_K, matmul_q4_k) \
    M(X, Q4_0, matmul_q4_0) \
    M(X, F32_X16, matmul_f32x16) \
    M(X, F16_X16, matmul_f16x16) \
    M(X, BF16_X16, matmul_bf16x16) \
    M(X, Q8_0_X16, matmul_q8_0x16) \
    M(X, Q6_K_X16, matmul_q6_kx16) \
    M(X, Q5_1_X16, matmul_q5_1x16) \
    M(X, Q5_K_X16, matmul_q5_kx16) \
    M(X, Q5_0_X16, matmul_q5_0x16) \
    M(X, Q4_1_X16, matmul_q4_1x16) \
    M(X, Q4_K_X16, matmul_q4_kx16) \
    M(X, Q4_0_X16, matmul_q4_0x16) \
    M(X, Q8_0_S16, matmul_q8_0s16) \
    M(X, Q8_0_24, matmul_q8_0_24) \
    M(X, Q8_0_B16, matmul_q8_0b16)
#define CORELM_MATMUL_FIELD(X, type, name) X(name, MatmulFn)

// Every kernel, as X(name, function type).
#define CORELM_KERNELS(X)                              \
    X(quantize_act, QuantizeActFn) \
    CORELM_MATMUL_KERNELS(CORELM_MATMUL_FIELD, X) \
    X(attention, AttentionFn) \
    X(attention_seqs, AttentionFn) \
    X(rmsnorm, RmsNormFn) \
    X(layernorm, LayerNormFn) \
    X(softmax, SoftmaxFn) \
    X(rope, RopeFn) \
    X(silu, UnaryFn) \
    X(gelu_tanh, UnaryFn) \
    X(gelu_erf, UnaryFn) \
    X(swiglu, BinaryFn) \
    X(add, BinaryFn) \
    X(mul, BinaryFn)

struct KernelTable {
#define CORELM_FIELD(name, type) type name = nullptr;
    CORELM_KERNELS(CORELM_FIELD)
#undef CORELM_FIELD
};

// How the one-row GEMVs (decode) stream the weights: chosen from the CPU at start-up (the measurements
// behind it: kernels/x86/groups.h); tests and benchmarks may set it (_C._decode_tuning).
struct DecodeTuning {
    int prefetch_bytes = 2048;  // prefetch_ahead: each block fetches the bytes this far on (0: none)
    bool prefetch_q8_0 = true;  // Q8_0_X16's GEMV prefetches too (if prefetch_bytes)
    int sparse_groups = 4;      // Q8_0_S16 row groups one tile streams at once: 4 or 1
};
extern DecodeTuning g_decode_tuning;

// One per instruction-set path; each lives in its own translation units.
namespace ref { void fill(KernelTable& t); }
namespace avx2 { void fill(KernelTable& t); }
namespace avx512 { void fill(KernelTable& t); }
namespace amx { void fill(KernelTable& t); }      // over avx512: its tile kernels only
namespace amx_emu { void fill(KernelTable& t); }  // the same kernels on the tile emulator

// Plain (reference) scalar helpers shared by the drivers: weight (de)quantization.
namespace ref {
void quantize_row_q8_0(const float* x, block_q8_0* y, int64_t k);
void quantize_row_q4_0(const float* x, block_q4_0* y, int64_t k);
void quantize_row_q4_K(const float* x, block_q4_K* y, int64_t k);
void quantize_row_q5_K(const float* x, block_q5_K* y, int64_t k);
void quantize_row_q6_K(const float* x, block_q6_K* y, int64_t k);
void dequantize_row(WeightType t, const uint8_t* row, float* y, int64_t k);
void quantize_row(WeightType t, const float* x, uint8_t* row, int64_t k);

// kPackRows GGUF rows (row_stride bytes apart) <-> one packed group of all k/32 blocks.
void pack_rows_x16(WeightType packed, const uint8_t* rows, size_t row_stride, uint8_t* out, int64_t k);
void unpack_rows_x16(WeightType packed, const uint8_t* group, uint8_t* rows, size_t row_stride, int64_t k);

// The sparse layouts' 16-row groups (Q8_0_S16, Q8_0_24, Q8_0_B16) from / to Q8_0_X16 groups of k columns.
// sparse_group_bytes: the bytes type t's encoding of the group needs (-1 when Q8_0_24 cannot hold it: a
// row keeps more than 2 of some 4 codes); encode writes them. decode reads nothing past group_bytes
// (codes a corrupted group claims beyond them come out 0). sparse_group_codes: the codes a group
// stores, or -1 when a Q8_0_S16 group's masks or a Q8_0_B16 group's map announce more than group_bytes
// hold, or a block past k (a file's check).
int64_t sparse_group_bytes(WeightType t, const block_q8_0x16* group, int64_t k);
void encode_sparse_group(WeightType t, const block_q8_0x16* group, int64_t k, uint8_t* out);
void decode_sparse_group(WeightType t, const uint8_t* group, int64_t k, size_t group_bytes, block_q8_0x16* out);
int64_t sparse_group_codes(WeightType t, const uint8_t* group, int64_t k, size_t group_bytes);
}  // namespace ref

}  // namespace corelm
