#include "ops.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "dispatch.h"
#include "kernel_table.h"
#include "threadpool.h"

namespace corelm::ops {

namespace {

// Below this many multiply-adds (or elements) a job runs on the calling thread: waking the
// pool costs more than it saves.
constexpr int64_t kMinParallelWork = 1 << 15;

void parallel(int64_t n, int64_t grain, int64_t work, const std::function<void(int64_t, int64_t)>& fn) {
    if (work < kMinParallelWork) {
        fn(0, n);
        return;
    }
    thread_pool()->parallel_for(n, grain, fn);
}

MatmulFn matmul_kernel(const KernelTable& kt, WeightType t) {
    switch (t) {
#define CORELM_CASE(unused, type, name) \
    case WeightType::type: return kt.name;
        CORELM_MATMUL_KERNELS(CORELM_CASE, _)
#undef CORELM_CASE
    }
    return nullptr;
}

}  // namespace

void matmul(const float* x, int64_t m, int64_t k, const uint8_t* w, WeightType t, int64_t n, float* y,
            const float* bias, const float* residual, Activation act, size_t w_stride) {
    const KernelTable& kt = kernels();
    MatmulArgs a{w, w_stride ? w_stride : row_bytes(t, k), x, k, nullptr, m, n, k, y, n};
    // Reused across calls, so a decode loop allocates nothing once warm.
    thread_local std::vector<block_q8_act> xq;
    if (block_size(t) >= kQK) {
        const int64_t nb = k / kQK;
        if (int64_t(xq.size()) < m * nb) xq.resize(size_t(m * nb));
        block_q8_act* xqp = xq.data();
        parallel(m, 1, m * k, [&](int64_t r0, int64_t r1) {
            for (int64_t r = r0; r < r1; ++r) kt.quantize_act(x + r * k, xqp + r * nb, k);
        });
        a.xq = xqp;
    }
    const MatmulFn fn = matmul_kernel(kt, t);
    // Packed matrices keep the rows past the last whole group of 16 in GGUF layout.
    const int64_t n_packed = is_packed(t) ? n / kPackRows * kPackRows : n;
    const MatmulFn tail_fn = is_packed(t) ? matmul_kernel(kt, unpacked_of(t)) : fn;
    auto run = [&](const MatmulArgs& args, int64_t n0, int64_t n1, int64_t packed_end) {
        if (n0 < packed_end) fn(args, n0, std::min(n1, packed_end));
        if (n1 > packed_end) tail_fn(args, std::max(n0, packed_end), n1);
    };
    parallel(n, kPackRows, m * n * k, [&](int64_t n0, int64_t n1) {
        if (!bias && !residual && act == Activation::None) {
            run(a, n0, n1, n_packed);
            return;
        }
        // Epilogue: the chunk's columns go to a scratch tile (so `residual` may be `y` itself),
        // then y = act(tile + bias) + residual while they are still in cache: kEpilogueRows activation
        // rows at a time (the path's choice: 64 keeps a long prefill's tile in L2). n0 is a
        // multiple of 16, so packed groups stay whole in the shifted view.
        const int64_t kEpilogueRows = epilogue_rows();
        thread_local std::vector<float> tile;
        const int64_t w_cols = n1 - n0;
        if (int64_t(tile.size()) < kEpilogueRows * w_cols) tile.resize(size_t(kEpilogueRows * w_cols));
        for (int64_t m0 = 0; m0 < m; m0 += kEpilogueRows) {
            const int64_t rows = std::min(kEpilogueRows, m - m0);
            MatmulArgs part = a;
            part.x = a.x + m0 * a.ldx;
            if (a.xq) part.xq = a.xq + m0 * (k / kQK);
            part.m = rows;
            part.w = a.w + n0 * a.w_stride;
            part.n = w_cols;
            part.y = tile.data();
            part.ldy = w_cols;
            run(part, 0, w_cols, n_packed - n0);
            for (int64_t r = 0; r < rows; ++r) {
                float* src = tile.data() + r * w_cols;
                float* dst = y + (m0 + r) * n + n0;
                const float* res = residual ? residual + (m0 + r) * n + n0 : nullptr;
                if (bias)
                    for (int64_t j = 0; j < w_cols; ++j) src[j] += bias[n0 + j];
                if (act == Activation::GeluErf) kt.gelu_erf(src, src, w_cols);
                else if (act == Activation::GeluTanh) kt.gelu_tanh(src, src, w_cols);
                else if (act == Activation::Silu) kt.silu(src, src, w_cols);
                else if (act == Activation::Relu)
                    for (int64_t j = 0; j < w_cols; ++j) src[j] = src[j] > 0.0f ? src[j] : 0.0f;
                for (int64_t j = 0; j < w_cols; ++j) dst[j] = src[j] + (res ? res[j] : 0.0f);
            }
        }
    });
}

void pack(const uint8_t* w, WeightType packed, int64_t n, int64_t k, uint8_t* out) {
    const size_t stride = row_bytes(packed, k), groups = size_t(n / kPackRows);
    parallel(int64_t(groups), 1, n * k, [&](int64_t g0, int64_t g1) {
        for (int64_t g = g0; g < g1; ++g) {
            const size_t at = size_t(g) * kPackRows * stride;
            ref::pack_rows_x16(packed, w + at, stride, out + at, k);
        }
    });
    const size_t tail = groups * kPackRows * stride;
    std::copy(w + tail, w + size_t(n) * stride, out + tail);
}

void copy(const uint8_t* src, uint8_t* dst, size_t bytes) {
    constexpr int64_t kPiece = int64_t(1) << 20;
    const int64_t pieces = (int64_t(bytes) + kPiece - 1) / kPiece;
    parallel(pieces, 1, int64_t(bytes), [&](int64_t p0, int64_t p1) {
        const size_t from = size_t(p0 * kPiece), to = std::min(bytes, size_t(p1 * kPiece));
        std::memcpy(dst + from, src + from, to - from);
    });
}

namespace {
// Group g of a packed matrix, in its GGUF type's 16-row layout (a sparse one decoded into `scratch`).
const uint8_t* dense_group(const uint8_t* w, WeightType t, int64_t k, size_t stride, int64_t g,
                           std::vector<block_q8_0x16>& scratch) {
    const uint8_t* group = w + size_t(g) * kPackRows * stride;
    if (!is_sparse(t)) return group;
    scratch.resize(size_t(k / kQK));
    ref::decode_sparse_group(t, group, k, kPackRows * stride, scratch.data());
    return reinterpret_cast<const uint8_t*>(scratch.data());
}
}  // namespace

void unpack(const uint8_t* w, WeightType packed, int64_t n, int64_t k, uint8_t* out, size_t w_stride) {
    const size_t stride = w_stride ? w_stride : row_bytes(packed, k), groups = size_t(n / kPackRows);
    const size_t out_stride = row_bytes(unpacked_of(packed), k);
    const WeightType layout = packed_of(unpacked_of(packed));  // a sparse type's groups decode to it
    parallel(int64_t(groups), 1, n * k, [&](int64_t g0, int64_t g1) {
        std::vector<block_q8_0x16> scratch;
        for (int64_t g = g0; g < g1; ++g) {
            const uint8_t* group = dense_group(w, packed, k, stride, g, scratch);
            ref::unpack_rows_x16(layout, group, out + size_t(g) * kPackRows * out_stride, out_stride, k);
        }
    });
    const size_t tail = groups * kPackRows * stride;  // sparse types have no tail: n is a multiple of 16
    std::copy(w + tail, w + size_t(n) * stride, out + groups * kPackRows * out_stride);
}

namespace {
// Group g of a Q8_0 or Q8_0_X16 matrix as a Q8_0_X16 group (interleaved into `scratch` from GGUF rows).
const block_q8_0x16* packed_group(const uint8_t* w, WeightType t, int64_t k, int64_t g, std::vector<uint8_t>& scratch) {
    const size_t stride = row_bytes(t, k);
    const uint8_t* src = w + size_t(g) * kPackRows * stride;
    if (!is_packed(t)) {
        scratch.resize(stride * kPackRows);
        ref::pack_rows_x16(packed_of(t), src, stride, scratch.data(), k);
        src = scratch.data();
    }
    return reinterpret_cast<const block_q8_0x16*>(src);
}
}  // namespace

int64_t sparse_stride(const uint8_t* w, WeightType t, WeightType sparse, int64_t n, int64_t k) {
    std::vector<int64_t> need(size_t(n / kPackRows));
    parallel(n / kPackRows, 1, n * k, [&](int64_t g0, int64_t g1) {
        std::vector<uint8_t> scratch;
        for (int64_t g = g0; g < g1; ++g)
            need[size_t(g)] = ref::sparse_group_bytes(sparse, packed_group(w, t, k, g, scratch), k);
    });
    int64_t most = 0;
    for (const int64_t b : need) {
        if (b < 0) return -1;
        most = std::max(most, b);
    }
    if (!has_own_stride(sparse)) return int64_t(row_bytes(sparse, k));
    return (most + 63) / 64 * 4;  // whole 64-byte lines per group: groups start on a line when the tensor does
}

void sparsify(const uint8_t* w, WeightType t, WeightType sparse, int64_t n, int64_t k, size_t stride, uint8_t* out) {
    parallel(n / kPackRows, 1, n * k, [&](int64_t g0, int64_t g1) {
        std::vector<uint8_t> scratch;
        for (int64_t g = g0; g < g1; ++g) {
            uint8_t* dst = out + size_t(g) * kPackRows * stride;
            std::fill(dst, dst + kPackRows * stride, uint8_t(0));
            ref::encode_sparse_group(sparse, packed_group(w, t, k, g, scratch), k, dst);
        }
    });
}

namespace {
// Row `row` of W (n rows of `stride` bytes) as fp32, for any type (packed ones unpack their group into `scratch`).
void dequantize_any_row(const uint8_t* w, WeightType t, int64_t n, int64_t k, size_t stride, int64_t row, float* y,
                        std::vector<uint8_t>& scratch) {
    if (!is_packed(t) || row >= n / kPackRows * kPackRows) {
        ref::dequantize_row(unpacked_of(t), w + size_t(row) * stride, y, k);
        return;
    }
    thread_local std::vector<block_q8_0x16> decoded;
    const size_t dense_stride = row_bytes(unpacked_of(t), k);
    scratch.resize(dense_stride * kPackRows);
    const int64_t g = row / kPackRows;
    const uint8_t* group = dense_group(w, t, k, stride, g, decoded);
    ref::unpack_rows_x16(packed_of(unpacked_of(t)), group, scratch.data(), dense_stride, k);
    ref::dequantize_row(unpacked_of(t), scratch.data() + size_t(row % kPackRows) * dense_stride, y, k);
}
}  // namespace

void get_rows(const uint8_t* w, WeightType t, int64_t n, int64_t k, const int32_t* ids, int64_t len, float* y,
              size_t w_stride) {
    thread_local std::vector<uint8_t> scratch;
    const size_t stride = w_stride ? w_stride : row_bytes(t, k);
    for (int64_t i = 0; i < len; ++i) dequantize_any_row(w, t, n, k, stride, ids[i], y + i * k, scratch);
}

void quantize(const float* x, WeightType t, int64_t rows, int64_t k, uint8_t* out) {
    const size_t stride = row_bytes(t, k);
    parallel(rows, 1, rows * k, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) ref::quantize_row(t, x + r * k, out + r * stride, k);
    });
}

void dequantize(const uint8_t* w, WeightType t, int64_t rows, int64_t k, float* out, size_t w_stride) {
    const size_t stride = w_stride ? w_stride : row_bytes(t, k);
    parallel(rows, kPackRows, rows * k, [&](int64_t r0, int64_t r1) {
        std::vector<uint8_t> scratch;
        for (int64_t r = r0; r < r1; ++r) dequantize_any_row(w, t, rows, k, stride, r, out + r * k, scratch);
    });
}

void attention(const AttentionArgs& a) {
    const KernelTable& kt = kernels();
    if (a.seq_offsets) {  // a batch of sequences: a task per (sequence, kv head)
        const int64_t work = a.m * a.hq * a.d * std::max<int64_t>(1, a.m / a.n_seqs);
        parallel(a.n_seqs * a.hkv, 1, work, [&](int64_t t0, int64_t t1) { kt.attention_seqs(a, t0, t1); });
        return;
    }
    const int64_t work = a.m * a.hq * a.d * (a.n_past + a.m);
    parallel(a.m * a.hkv, 1, work, [&](int64_t t0, int64_t t1) { kt.attention(a, t0, t1); });
}

void attention_batch(const AttentionArgs* a, int64_t n) {
    const KernelTable& kt = kernels();
    thread_local std::vector<int64_t> first;  // first task of each problem
    first.assign(1, 0);
    int64_t work = 0;
    for (int64_t i = 0; i < n; ++i) {
        first.push_back(first.back() + a[i].m * a[i].hkv);
        work += a[i].m * a[i].hq * a[i].d * (a[i].n_past + a[i].m);
    }
    const int64_t* starts = first.data();  // thread_local: the workers must see the caller's
    parallel(starts[n], 1, work, [&](int64_t t0, int64_t t1) {
        for (int64_t i = std::upper_bound(starts, starts + n, t0) - starts - 1; i < n && starts[i] < t1; ++i)
            kt.attention(a[i], std::max(t0, starts[i]) - starts[i], std::min(t1, starts[i + 1]) - starts[i]);
    });
}

void rmsnorm(const float* x, const float* w, float* y, int64_t rows, int64_t d, float eps) {
    const KernelTable& kt = kernels();
    parallel(rows, 1, rows * d, [&](int64_t r0, int64_t r1) { kt.rmsnorm(x + r0 * d, w, y + r0 * d, r1 - r0, d, eps); });
}

void layernorm(const float* x, const float* w, const float* b, float* y, int64_t rows, int64_t d, float eps) {
    const KernelTable& kt = kernels();
    parallel(rows, 1, rows * d,
             [&](int64_t r0, int64_t r1) { kt.layernorm(x + r0 * d, w, b, y + r0 * d, r1 - r0, d, eps); });
}

void softmax(const float* x, float* y, int64_t rows, int64_t n) {
    const KernelTable& kt = kernels();
    parallel(rows, 1, rows * n, [&](int64_t r0, int64_t r1) { kt.softmax(x + r0 * n, y + r0 * n, r1 - r0, n); });
}

void rope(float* x, const int32_t* pos, const float* inv_freq, int64_t rows, int64_t heads, int64_t d,
          int64_t n_rot, bool neox) {
    const KernelTable& kt = kernels();
    parallel(rows, 1, rows * heads * d, [&](int64_t r0, int64_t r1) {
        kt.rope(x + r0 * heads * d, pos + r0, inv_freq, r1 - r0, heads, d, n_rot, neox);
    });
}

void unary(Unary op, const float* x, float* y, int64_t n) {
    const KernelTable& kt = kernels();
    const UnaryFn fn = op == Unary::silu ? kt.silu : op == Unary::gelu_tanh ? kt.gelu_tanh : kt.gelu_erf;
    parallel(n, 1024, n * 8, [&](int64_t i0, int64_t i1) { fn(x + i0, y + i0, i1 - i0); });
}

void binary(Binary op, const float* a, int64_t lda, const float* b, int64_t ldb, float* y, int64_t ldy, int64_t rows,
            int64_t n) {
    const KernelTable& kt = kernels();
    const BinaryFn fn = op == Binary::add ? kt.add : op == Binary::mul ? kt.mul : kt.swiglu;
    parallel(rows, 1, rows * n, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) fn(a + r * lda, b + r * ldb, y + r * ldy, n);
    });
}

}  // namespace corelm::ops
