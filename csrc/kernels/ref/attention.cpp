// Reference attention: one key at a time with an online softmax (running max m, running
// sum l), the same recurrence the blockwise SIMD path applies per tile of keys.
#include <algorithm>
#include <cmath>

#include "../../core/kernel_table.h"

namespace corelm::ref {

namespace {

inline float cache_at(const AttentionArgs& a, const void* base, int64_t idx) {
    return a.f16_cache ? fp16_to_f32(static_cast<const uint16_t*>(base)[idx])
                       : static_cast<const float*>(base)[idx];
}

void attention(const AttentionArgs& a, int64_t task0, int64_t task1) {
    const int64_t group = a.hq / a.hkv;
    float acc[kMaxHeadDim];
    for (int64_t t = task0; t < task1; ++t) {
        const int64_t row = t / a.hkv, kvh = t % a.hkv;
        const int64_t n_keys = a.keys_of_row(row);
        for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
            const float* q = a.q + (row * a.hq + h) * a.d;
            float m = -INFINITY, l = 0.0f;
            std::fill_n(acc, a.d, 0.0f);
            for (int64_t j = a.first_key(row); j < n_keys; ++j) {
                const int64_t base = a.kv_at(kvh, j);
                float s = 0.0f;
                for (int64_t i = 0; i < a.d; ++i) s += q[i] * cache_at(a, a.k, base + i);
                s *= a.scale;
                const float m_new = std::max(m, s);
                const float c = std::exp(m - m_new), p = std::exp(s - m_new);
                l = l * c + p;
                for (int64_t i = 0; i < a.d; ++i) acc[i] = acc[i] * c + p * cache_at(a, a.v, base + i);
                m = m_new;
            }
            float* out = a.out + (row * a.hq + h) * a.d;
            for (int64_t i = 0; i < a.d; ++i) out[i] = acc[i] / l;
        }
    }
}

// Each sequence of a batch as its own single-sequence problem, row by row.
void attention_seqs(const AttentionArgs& a, int64_t task0, int64_t task1) {
    for (int64_t t = task0; t < task1; ++t) {
        const AttentionArgs one = a.sequence(t / a.hkv);
        const int64_t kvh = t % a.hkv;
        for (int64_t row = 0; row < one.m; ++row) attention(one, row * a.hkv + kvh, row * a.hkv + kvh + 1);
    }
}

}  // namespace

void fill_attention(KernelTable& t) {
    t.attention = attention;
    t.attention_seqs = attention_seqs;
}

}  // namespace corelm::ref
