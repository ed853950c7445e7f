// Blockwise attention (causal or not) with an online softmax, compiled once per x86 path. Keys are
// taken in tiles: scores for the tile, one rescale of the running output per tile (not per
// key as in ref), then the probability-weighted values. No score matrix is ever formed.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

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
        const int64_t n_keys = a.keys_of_row(row);
        for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
            const float* q = a.q + (row * a.hq + h) * a.d;
            float m = -INFINITY, l = 0.0f;
            std::fill_n(acc, a.d, 0.0f);
            for (int64_t j0 = a.first_key(row); j0 < n_keys; j0 += kKeyTile) {
                const int64_t nt = std::min(kKeyTile, n_keys - j0);
                float tile_max = -INFINITY;
                for (int64_t jj = 0; jj < nt; ++jj) {
                    const int64_t base = a.kv_at(kvh, j0 + jj);
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
                    const int64_t base = a.kv_at(kvh, j0 + jj);
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

// ---- a prompt: (row, head) pairs in the lanes ----
// From kLanesRows rows on, kLanes (row, head) pairs of one kv head go through together, one per
// lane: a key's scores for all of them are one FMA per element of the head (the key's element
// broadcast, the queries transposed once), and the softmax and the weighted values are lane-wise
// too - no horizontal sum per key, as the row-by-row path above needs.
constexpr int64_t kLanesRows = 4;

// step(jj, keys) over keys 0 .. n - 1, 4 at a time while there are 4, then one by one; `keys` is
// std::integral_constant<int, 4 or 1>, so each step's loop over its keys unrolls.
template <class Step>
inline void in_fours(int64_t n, Step step) {
    int64_t jj = 0;
    for (; jj + 4 <= n; jj += 4) step(jj, std::integral_constant<int, 4>{});
    for (; jj < n; ++jj) step(jj, std::integral_constant<int, 1>{});
}

// Rows r0 .. r1 - 1 of kv head kvh.
template <bool F16>
void attention_lanes(const AttentionArgs& a, int64_t kvh, int64_t r0, int64_t r1) {
    const int64_t group = a.hq / a.hkv, d = a.d;
    alignas(64) float qt[kMaxHeadDim * kLanes];   // qt[c * kLanes + i]: element c of lane i's query, scaled
    alignas(64) float acc[kMaxHeadDim * kLanes];  // acc[c * kLanes + i]: lane i's weighted values
    alignas(64) float s[kKeyTile * kLanes];       // s[j * kLanes + i]: lane i's scores, then weights
    alignas(64) float lo[kLanes], hi[kLanes], top[kLanes];
    const int64_t n_pairs = std::max<int64_t>(0, r1 - r0) * group;
    for (int64_t p0 = 0; p0 < n_pairs; p0 += kLanes) {
        int64_t first = INT64_MAX, end = 0;
        for (int i = 0; i < kLanes; ++i) {
            const int64_t pair = p0 + i, row = r0 + pair / group, h = kvh * group + pair % group;
            const bool used = pair < n_pairs;
            const float* q = a.q + (row * a.hq + h) * d;
            for (int64_t c = 0; c < d; ++c) qt[c * kLanes + i] = used ? q[c] * a.scale : 0.0f;
            const int64_t key0 = used ? a.first_key(row) : 0, key1 = used ? a.keys_of_row(row) : 0;
            lo[i] = float(key0), hi[i] = float(key1);  // keys lo .. hi - 1 (none for unused lanes)
            if (used) first = std::min(first, key0), end = std::max(end, key1);
        }
        std::fill_n(acc, d * kLanes, 0.0f);
        const vf lo_v = vf_load(lo), hi_v = vf_load(hi);
        vf m = vf_set1(-INFINITY), l = vf_zero();
        for (int64_t j0 = first; j0 < end; j0 += kKeyTile) {
            const int64_t nt = std::min(kKeyTile, end - j0);
            vf tile_max = vf_set1(-INFINITY);
            in_fours(nt, [&](int64_t jj, auto keys) {  // scores, kept to each lane's window
                constexpr int U = decltype(keys)::value;
                vf sc[U];
                int64_t base[U];
                for (int u = 0; u < U; ++u) sc[u] = vf_zero(), base[u] = a.kv_at(kvh, j0 + jj + u);
                for (int64_t c = 0; c < d; ++c) {
                    const vf qc = vf_load(qt + c * kLanes);
                    for (int u = 0; u < U; ++u) sc[u] = vf_fma(qc, vf_set1(cache_at<F16>(a.k, base[u] + c)), sc[u]);
                }
                for (int u = 0; u < U; ++u) {
                    const vf kept = vf_keep_in(sc[u], vf_set1(float(j0 + jj + u)), lo_v, hi_v);
                    tile_max = vf_max(tile_max, kept);
                    vf_store(s + (jj + u) * kLanes, kept);
                }
            });
            // A lane with no key yet has max -inf: shift by -FLT_MAX instead, so its weights and
            // its rescale come out 0 (exp of -inf), never exp(-inf + inf).
            const vf m_new = vf_max(m, tile_max), shift = vf_max(m_new, vf_set1(std::numeric_limits<float>::lowest()));
            alignas(64) float rescale[kLanes];
            vf_store(top, shift);
            vf_store(rescale, m);
#pragma omp simd
            for (int i = 0; i < kLanes; ++i) rescale[i] = exp_fast(rescale[i] - top[i]);
            const vf cv = vf_load(rescale);
            l = vf_mul(l, cv);
            for (int64_t c = 0; c < d; ++c) vf_store(acc + c * kLanes, vf_mul(vf_load(acc + c * kLanes), cv));
            for (int64_t jj = 0; jj < nt; ++jj) {
#pragma omp simd
                for (int i = 0; i < kLanes; ++i) s[jj * kLanes + i] = exp_fast(s[jj * kLanes + i] - top[i]);
                l = vf_add(l, vf_load(s + jj * kLanes));
            }
            in_fours(nt, [&](int64_t jj, auto keys) {  // weighted values
                constexpr int U = decltype(keys)::value;
                vf p[U];
                int64_t base[U];
                for (int u = 0; u < U; ++u) p[u] = vf_load(s + (jj + u) * kLanes), base[u] = a.kv_at(kvh, j0 + jj + u);
                for (int64_t c = 0; c < d; ++c) {
                    vf o = vf_load(acc + c * kLanes);
                    for (int u = 0; u < U; ++u) o = vf_fma(p[u], vf_set1(cache_at<F16>(a.v, base[u] + c)), o);
                    vf_store(acc + c * kLanes, o);
                }
            });
            m = m_new;
        }
        alignas(64) float sums[kLanes];
        vf_store(sums, l);
        for (int i = 0; i < kLanes && p0 + i < n_pairs; ++i) {
            const int64_t pair = p0 + i, row = r0 + pair / group, h = kvh * group + pair % group;
            float* out = a.out + (row * a.hq + h) * d;
            for (int64_t c = 0; c < d; ++c) out[c] = acc[c * kLanes + i] / sums[i];
        }
    }
}

void attention_rows(const AttentionArgs& a, int64_t kvh, int64_t r0, int64_t r1) {
    if (a.f16_cache) attention_lanes<true>(a, kvh, r0, r1);
    else attention_lanes<false>(a, kvh, r0, r1);
}

void attention(const AttentionArgs& a, int64_t task0, int64_t task1) {
    if (a.m >= kLanesRows) {
        for (int64_t kvh = 0; kvh < a.hkv; ++kvh)  // this range's rows for kvh: tasks row * hkv + kvh in [task0, task1)
            attention_rows(a, kvh, (task0 - kvh + a.hkv - 1) / a.hkv, (task1 - kvh + a.hkv - 1) / a.hkv);
    } else if (a.f16_cache) {
        attention_impl<true>(a, task0, task1);
    } else {
        attention_impl<false>(a, task0, task1);
    }
}

// ---- a batch of sequences: one task per (sequence, kv head) ----

// Sequences up to this long take the transposed-keys path below; longer ones the lanes path above.
constexpr int64_t kShortSeq = 256;

// One short sequence and kv head: its keys transposed once ([d][keys], shared by every row and
// head of the group), so a row's scores for 16 keys are one FMA per element of the head, with no
// horizontal sums; then softmax over the row's keys and the probability-weighted values.
template <bool F16>
void attention_short(const AttentionArgs& one, int64_t kvh, std::vector<float>& kt) {
    const int64_t n = one.m, d = one.d, group = one.hq / one.hkv;
    const int64_t np = (n + kLanes - 1) / kLanes * kLanes;  // keys padded to whole vectors
    const int64_t dv = d - d % kLanes;
    kt.resize(size_t(d * np));
    for (int64_t c = 0; c < d; ++c) {  // written in order; the n rows read stay in L1
        float* dst = kt.data() + c * np;
        for (int64_t j = 0; j < n; ++j) dst[j] = cache_at<F16>(one.k, one.kv_at(kvh, j) + c);
        std::fill(dst + n, dst + np, 0.0f);
    }
    alignas(64) float s[kShortSeq];
    for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
        for (int64_t row = 0; row < n; ++row) {
            const float* q = one.q + (row * one.hq + h) * d;
            const int64_t n_keys = one.causal ? row + 1 : n;
            const int64_t nk = (n_keys + kLanes - 1) / kLanes * kLanes;
            for (int64_t j = 0; j < nk; j += kLanes) {
                // four independent sums over the head's elements, so the FMAs overlap their latency
                vf dot[4] = {vf_zero(), vf_zero(), vf_zero(), vf_zero()};
                const float* col = kt.data() + j;
                int64_t c = 0;
                for (; c + 4 <= d; c += 4)
                    for (int u = 0; u < 4; ++u) dot[u] = vf_fma(vf_set1(q[c + u]), vf_load(col + (c + u) * np), dot[u]);
                for (; c < d; ++c) dot[0] = vf_fma(vf_set1(q[c]), vf_load(col + c * np), dot[0]);
                const vf sum = vf_add(vf_add(dot[0], dot[1]), vf_add(dot[2], dot[3]));
                vf_store(s + j, vf_mul(sum, vf_set1(one.scale)));
            }
            float m = -INFINITY;
            for (int64_t j = 0; j < n_keys; ++j) m = std::max(m, s[j]);
            float l = 0.0f;
#pragma omp simd reduction(+ : l)
            for (int64_t j = 0; j < n_keys; ++j) l += (s[j] = exp_fast(s[j] - m));
            // out = sum_j p_j v_j, a vector of the head at a time, four keys' sums kept apart in registers
            float* out = one.out + (row * one.hq + h) * d;
            const vf inv = vf_set1(1.0f / l);
            for (int64_t c = 0; c < dv; c += kLanes) {
                vf o[4] = {vf_zero(), vf_zero(), vf_zero(), vf_zero()};
                int64_t j = 0;
                for (; j + 4 <= n_keys; j += 4)
                    for (int u = 0; u < 4; ++u)
                        o[u] = vf_fma(vf_set1(s[j + u]), load_cache<F16>(one.v, one.kv_at(kvh, j + u) + c), o[u]);
                for (; j < n_keys; ++j) o[0] = vf_fma(vf_set1(s[j]), load_cache<F16>(one.v, one.kv_at(kvh, j) + c), o[0]);
                vf_store(out + c, vf_mul(vf_add(vf_add(o[0], o[1]), vf_add(o[2], o[3])), inv));
            }
            for (int64_t c = dv; c < d; ++c) {
                float sum = 0.0f;
                for (int64_t j = 0; j < n_keys; ++j) sum += s[j] * cache_at<F16>(one.v, one.kv_at(kvh, j) + c);
                out[c] = sum / l;
            }
        }
    }
}

void attention_seqs(const AttentionArgs& a, int64_t task0, int64_t task1) {
    thread_local std::vector<float> kt;
    for (int64_t t = task0; t < task1; ++t) {
        const AttentionArgs one = a.sequence(t / a.hkv);
        const int64_t kvh = t % a.hkv;
        if (one.m <= kShortSeq) {
            if (a.f16_cache) attention_short<true>(one, kvh, kt);
            else attention_short<false>(one, kvh, kt);
        } else {
            attention_rows(one, kvh, 0, one.m);
        }
    }
}

}  // namespace

void fill_attention(KernelTable& t) {
    t.attention = attention;
    t.attention_seqs = attention_seqs;
}

}  // namespace corelm::CORELM_ISA_NS
