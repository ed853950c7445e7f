// Blockwise attention (causal or not) with an online softmax, compiled once per x86 path. Keys are
// taken in tiles: scores for the tile, one rescale of the running output per tile (not per
// key as in ref), then the probability-weighted values. No score matrix is ever formed.
#include <algorithm>
#include <cmath>

#include "../../core/kernel_table.h"
#include "../../core/fastmath.h"
#include "simd.h"

#ifndef CORELM_ISA_NS
#error "compile with -DCORELM_ISA_NS=<path name>"
#endif

namespace corelm::CORELM_ISA_NS {

using namespace corelm::x86;

namespace {

constexpr int64_t kKeyTile = 64;

template <bool F16>
inline vf load_cache(const void* base, int64_t idx) {
    if constexpr (F16) return vf_load_f16(static_cast<const uint16_t*>(base) + idx);
    else return vf_load(static_cast<const float*>(base) + idx);
}

template <bool F16>
inline float cache_at(const void* base, int64_t idx) {
    if constexpr (F16) return fp16_to_f32(static_cast<const uint16_t*>(base)[idx]);
    else return static_cast<const float*>(base)[idx];
}

template <bool F16>
void attention_impl(const AttentionArgs& a, int64_t task0, int64_t task1) {
    const int64_t group = a.hq / a.hkv;
    const int64_t dv = a.d - a.d % kLanes;  // vectorised part of a head; the rest is scalar
    alignas(64) float acc[kMaxHeadDim];
    float s[kKeyTile];
    for (int64_t t = task0; t < task1; ++t) {
        const int64_t row = t / a.hkv, kvh = t % a.hkv;
        const int64_t n_keys = a.keys_of_row(row), key0 = a.first_key(row);
        for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
            const float* q = a.q + (row * a.hq + h) * a.d;
            float m = -INFINITY, l = 0.0f;
            std::fill_n(acc, a.d, 0.0f);
            for (int64_t j0 = 0; j0 < n_keys; j0 += kKeyTile) {
                const int64_t nt = std::min(kKeyTile, n_keys - j0);
                float tile_max = -INFINITY;
                for (int64_t jj = 0; jj < nt; ++jj) {
                    const int64_t base = a.kv_at(kvh, key0 + j0 + jj);
                    vf dot = vf_zero();
                    for (int64_t i = 0; i < dv; i += kLanes) dot = vf_fma(vf_load(q + i), load_cache<F16>(a.k, base + i), dot);
                    float sc = vf_sum(dot);
                    for (int64_t i = dv; i < a.d; ++i) sc += q[i] * cache_at<F16>(a.k, base + i);
                    s[jj] = sc * a.scale;
                    tile_max = std::max(tile_max, s[jj]);
                }
                const float m_new = std::max(m, tile_max);
                const float c = exp_fast(m - m_new);
                l *= c;
                const vf cv = vf_set1(c);
                for (int64_t i = 0; i < dv; i += kLanes) vf_store(acc + i, vf_mul(vf_load(acc + i), cv));
                for (int64_t i = dv; i < a.d; ++i) acc[i] *= c;
#pragma omp simd reduction(+ : l)
                for (int64_t jj = 0; jj < nt; ++jj) l += (s[jj] = exp_fast(s[jj] - m_new));  // scores -> weights
                for (int64_t jj = 0; jj < nt; ++jj) {
                    const int64_t base = a.kv_at(kvh, key0 + j0 + jj);
                    const vf pv = vf_set1(s[jj]);
                    for (int64_t i = 0; i < dv; i += kLanes) {
                        vf_store(acc + i, vf_fma(pv, load_cache<F16>(a.v, base + i), vf_load(acc + i)));
                    }
                    for (int64_t i = dv; i < a.d; ++i) acc[i] += s[jj] * cache_at<F16>(a.v, base + i);
                }
                m = m_new;
            }
            float* out = a.out + (row * a.hq + h) * a.d;
            const float inv = 1.0f / l;
            for (int64_t i = 0; i < a.d; ++i) out[i] = acc[i] * inv;
        }
    }
}

void attention(const AttentionArgs& a, int64_t task0, int64_t task1) {
    if (a.f16_cache) attention_impl<true>(a, task0, task1);
    else attention_impl<false>(a, task0, task1);
}

}  // namespace

void fill_attention(KernelTable& t) { t.attention = attention; }

}  // namespace corelm::CORELM_ISA_NS
