// The native core's C++ API: each op checks nothing (bindings.cpp validates), splits its
// work over the thread pool and runs the active path's kernel on each part.
#pragma once
#include <cstdint>

#include "formats.h"
#include "kernel_table.h"

namespace corelm::ops {

// An activation applied to a matrix product's output in the same call (after the bias).
enum class Activation { None, GeluErf, GeluTanh, Silu, Relu };

// Every op taking a weight W of type t, n rows of k, reads it as n rows of `w_stride` bytes: 0 means
// row_bytes(t, k), the stride of every type but the sparse ones (whose tensors choose their own).

// y[m, n] = act(x[m, k] . W[n, k]^T (+ bias[n])) (+ residual[m, n]). residual may be y itself
// (y += x . W^T); bias and residual may be null.
void matmul(const float* x, int64_t m, int64_t k, const uint8_t* w, WeightType t, int64_t n, float* y,
            const float* bias = nullptr, const float* residual = nullptr, Activation act = Activation::None,
            size_t w_stride = 0);

// Rows ids[i] of W (n rows of k) dequantized to fp32 y[len, k]. ids must be in range.
void get_rows(const uint8_t* w, WeightType t, int64_t n, int64_t k, const int32_t* ids, int64_t len, float* y,
              size_t w_stride = 0);

void quantize(const float* x, WeightType t, int64_t rows, int64_t k, uint8_t* out);
// GGUF-layout rows <-> their 16-row interleaved type (packed_of): whole groups of 16 rows interleaved, the
// rows after the last whole group left as they are; same size.
void pack(const uint8_t* w, WeightType packed, int64_t n, int64_t k, uint8_t* out);
// bytes from src to dst (not overlapping), in 1 MB pieces over the thread pool: the first touch of fresh
// pages (zeroed by the kernel) is most of a load's copying, and it goes as fast as the threads that fault.
void copy(const uint8_t* src, uint8_t* dst, size_t bytes);
// A packed or sparse type back to its GGUF type's rows (row_bytes(unpacked_of(t), k) bytes each).
void unpack(const uint8_t* w, WeightType packed, int64_t n, int64_t k, uint8_t* out, size_t w_stride = 0);
void dequantize(const uint8_t* w, WeightType t, int64_t rows, int64_t k, float* out, size_t w_stride = 0);
// Q8_0 or Q8_0_X16 (n a multiple of 16) to a sparse layout of Q8_0 (Q8_0_S16, Q8_0_24): sparse_stride is
// the stride its encoding needs (Q8_0_S16: the fullest group's bytes / 16), or -1 when the matrix does
// not fit the layout (Q8_0_24: not 2:4); sparsify writes the n * stride bytes (stride >= sparse_stride).
int64_t sparse_stride(const uint8_t* w, WeightType t, WeightType sparse, int64_t n, int64_t k);
void sparsify(const uint8_t* w, WeightType t, WeightType sparse, int64_t n, int64_t k, size_t stride, uint8_t* out);

void attention(const AttentionArgs& a);
// Several independent attention problems (a batch's sequences, each against its own cache) in
// one parallel pass: their (row, kv head) tasks are split over the threads together.
void attention_batch(const AttentionArgs* a, int64_t n);

void rmsnorm(const float* x, const float* w, float* y, int64_t rows, int64_t d, float eps);
void layernorm(const float* x, const float* w, const float* b, float* y, int64_t rows, int64_t d, float eps);
void softmax(const float* x, float* y, int64_t rows, int64_t n);
void rope(float* x, const int32_t* pos, const float* inv_freq, int64_t rows, int64_t heads, int64_t d,
          int64_t n_rot, bool neox);

enum class Unary { silu, gelu_tanh, gelu_erf };
void unary(Unary op, const float* x, float* y, int64_t n);

enum class Binary { add, mul, swiglu };
// y[r * ldy + i] = a[r * lda + i] op b[r * ldb + i] for i < n: ldb 0 broadcasts one row of b.
void binary(Binary op, const float* a, int64_t lda, const float* b, int64_t ldb, float* y, int64_t ldy, int64_t rows,
            int64_t n);

}  // namespace corelm::ops
