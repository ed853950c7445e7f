// Norms, rotary embeddings, softmax and activations. One source, compiled once per
// instruction-set path with that path's flags (CORELM_ISA_NS names the namespace): these
// ops are a few percent of a forward pass, so the compiler's vectorization of plain loops
// (with `omp simd` allowing vector reductions; exp from fastmath.h, not libm) is all they get.
#include <algorithm>
#include <cmath>

#include "../../core/fastmath.h"
#include "../../core/kernel_table.h"

#ifndef CORELM_ISA_NS
#error "compile with -DCORELM_ISA_NS=<path name>"
#endif

namespace corelm::CORELM_ISA_NS {

namespace {

void rmsnorm(const float* x, const float* w, float* y, int64_t rows, int64_t d, float eps) {
    for (int64_t r = 0; r < rows; ++r, x += d, y += d) {
        float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
        for (int64_t i = 0; i < d; ++i) ss += x[i] * x[i];
        const float inv = 1.0f / std::sqrt(ss / float(d) + eps);
#pragma omp simd
        for (int64_t i = 0; i < d; ++i) y[i] = w[i] * (x[i] * inv);
    }
}

void layernorm(const float* x, const float* w, const float* b, float* y, int64_t rows, int64_t d, float eps) {
    for (int64_t r = 0; r < rows; ++r, x += d, y += d) {
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t i = 0; i < d; ++i) sum += x[i];
        const float mean = sum / float(d);
        float var = 0.0f;
#pragma omp simd reduction(+ : var)
        for (int64_t i = 0; i < d; ++i) var += (x[i] - mean) * (x[i] - mean);
        const float inv = 1.0f / std::sqrt(var / float(d) + eps);
#pragma omp simd
        for (int64_t i = 0; i < d; ++i) y[i] = (x[i] - mean) * inv * w[i] + b[i];
    }
}

void softmax(const float* x, float* y, int64_t rows, int64_t n) {
    for (int64_t r = 0; r < rows; ++r, x += n, y += n) {
        float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
        for (int64_t i = 0; i < n; ++i) mx = std::max(mx, x[i]);
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t i = 0; i < n; ++i) sum += (y[i] = exp_fast(x[i] - mx));
        const float inv = 1.0f / sum;
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) y[i] *= inv;
    }
}

void rope(float* x, const int32_t* pos, const float* inv_freq, int64_t rows, int64_t heads, int64_t d,
          int64_t n_rot, bool neox) {
    const int64_t half = n_rot / 2;
    float cs[kMaxHeadDim / 2], sn[kMaxHeadDim / 2];
    for (int64_t r = 0; r < rows; ++r) {
        for (int64_t i = 0; i < half; ++i) {
            const float theta = float(pos[r]) * inv_freq[i];
            cs[i] = std::cos(theta);
            sn[i] = std::sin(theta);
        }
        for (int64_t h = 0; h < heads; ++h) {
            float* v = x + (r * heads + h) * d;
            const int64_t step = neox ? 1 : 2, other = neox ? half : 1;
            for (int64_t i = 0; i < half; ++i) {
                float* p = v + i * step;
                const float x0 = p[0], x1 = p[other];
                p[0] = x0 * cs[i] - x1 * sn[i];
                p[other] = x0 * sn[i] + x1 * cs[i];
            }
        }
    }
}

void silu(const float* x, float* y, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] = silu_fast(x[i]);
}

void gelu_tanh(const float* x, float* y, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] = gelu_tanh_fast(x[i]);
}

void gelu_erf(const float* x, float* y, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] = gelu_erf_fast(x[i]);
}

void swiglu(const float* gate, const float* up, float* y, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] = silu_fast(gate[i]) * up[i];
}

void add(const float* a, const float* b, float* y, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] = a[i] + b[i];
}

void mul(const float* a, const float* b, float* y, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] = a[i] * b[i];
}

}  // namespace

void fill_ops(KernelTable& t) {
    t.rmsnorm = rmsnorm;
    t.layernorm = layernorm;
    t.softmax = softmax;
    t.rope = rope;
    t.silu = silu;
    t.gelu_tanh = gelu_tanh;
    t.gelu_erf = gelu_erf;
    t.swiglu = swiglu;
    t.add = add;
    t.mul = mul;
}

}  // namespace corelm::CORELM_ISA_NS
