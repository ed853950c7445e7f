// AMX attention for prompts: blocks of up to 16 query rows of one head against 32 keys at a time,
// the scores and the probability-weighted values as tile products (tdpbf16ps on exact bfloat16
// splits, so fp32 precision), the online softmax in fp32 between them. The rows of a task range
// that share a KV head form the blocks, and that head's keys and values are split and laid out as
// tiles once for all of them and all the head's query heads. Where fewer than kMinRows rows share
// a KV head (decode, the edges of a thread's range) the AVX-512 kernel takes them.
#include <algorithm>
#include <cmath>
#include <vector>

#include "../../core/fastmath.h"
#include "common.h"

namespace corelm::CORELM_ISA_NS {

namespace {

using namespace tiles;

constexpr int kKeys = 2 * kRows;             // keys per block: two C tiles of scores, one A tile of weights
constexpr size_t kTileElems = kPairs * 2 * kRows;  // bfloat16 in a 16 x 64-byte tile

template <bool F16>
float cache_at(const void* base, int64_t idx) {
    if constexpr (F16) return fp16_to_f32(static_cast<const uint16_t*>(base)[idx]);
    else return static_cast<const float*>(base)[idx];
}

// The keys key0 .. key0 + n of KV head kvh, split into KT terms (an fp16 cache needs two), as B tiles:
// keys[key tile of 16][dim chunk of 32][term][dim pair][2 * key + (0|1)] for the scores,
// values[key block of 32][dim tile of 16][term][key pair][2 * dim + (0|1)] for the outputs.
template <bool F16, int KT>
void stage_keys(const AttentionArgs& a, int64_t kvh, int64_t key0, int64_t n, int64_t chunks, int64_t dim_tiles,
                std::vector<uint16_t>& keys, std::vector<uint16_t>& values) {
    const int64_t blocks = (n + kKeys - 1) / kKeys, d = a.d;
    keys.assign(size_t(blocks * 2 * chunks * KT) * kTileElems, 0);
    values.assign(size_t(blocks * dim_tiles * KT) * kTileElems, 0);
    thread_local std::vector<float> row;
    thread_local std::vector<uint16_t> terms;
    row.resize(static_cast<size_t>(d));
    terms.resize(static_cast<size_t>(3 * d));
    for (int64_t j = 0; j < n; ++j) {
        for (int pass = 0; pass < 2; ++pass) {
            const void* cache = pass == 0 ? a.k : a.v;
            for (int64_t e = 0; e < d; ++e) row[size_t(e)] = cache_at<F16>(cache, a.kv_at(kvh, key0 + j) + e);
            split_bf16(row.data(), d, terms.data(), terms.data() + d, terms.data() + 2 * d);
            for (int t = 0; t < KT; ++t)
                for (int64_t e = 0; e < d; ++e) {
                    const uint16_t v = terms[size_t(t * d + e)];
                    if (pass == 0)
                        keys[size_t(((j / kRows * chunks + e / kChunk) * KT + t) * kTileElems +
                                    (e % kChunk / 2) * 2 * kRows + 2 * (j % kRows) + e % 2)] = v;
                    else
                        values[size_t(((j / kKeys * dim_tiles + e / kRows) * KT + t) * kTileElems +
                                      (j % kKeys / 2) * 2 * kRows + 2 * (e % kRows) + j % 2)] = v;
                }
        }
    }
}

// The scores of a block's rows (A: the queries' terms) against 16 keys (B: their terms) into C.
template <int C, int KT>
void score_product(const uint16_t* q, size_t q_stride, size_t q_term, const uint16_t* k) {
    load_terms<kA0, 3>(q, q_stride, q_term);
    load_terms<kB0, KT>(k, 64, kTileElems);
    term_products<C, 3, KT>();
}

// Weights (already in the A tiles) times 16 dims of 32 keys' values, stored to out.
template <int C, int KT>
void value_product(const uint16_t* v, float (&out)[kRows][kRows]) {
    Tiles::template zero<C>();
    load_terms<kB0, KT>(v, 64, kTileElems);
    term_products<C, 3, KT>();
    Tiles::template store<C>(out, sizeof(out[0]));
}

template <bool F16>
void attention_tiles(const AttentionArgs& a, int64_t task0, int64_t task1) {
    constexpr int KT = F16 ? 2 : 3;  // an fp16 value is two bfloat16 terms exactly
    const AttentionFn fallback = avx512_kernels().attention;
    const int64_t hkv = a.hkv, group = a.hq / a.hkv, d = a.d;
    const int64_t chunks = (d + kChunk - 1) / kChunk, dp = chunks * kChunk, dim_tiles = (d + kRows - 1) / kRows;
    thread_local std::vector<uint16_t> keys, values, queries;
    thread_local std::vector<float> acc;
    queries.resize(size_t(3 * kRows * dp));
    acc.resize(size_t(kRows * dim_tiles * kRows));
    TileScope scope(64, kPairs);
    alignas(64) float s[kRows][kKeys];
    alignas(64) float out[2][kRows][kRows];
    alignas(64) uint16_t weights[3][kRows][kKeys];
    for (int64_t kvh = 0; kvh < hkv; ++kvh) {
        // This range's rows with tasks on kvh: r_lo .. r_hi.
        const int64_t r_lo = task0 / hkv + (kvh < task0 % hkv ? 1 : 0);
        const int64_t r_hi = (task1 - 1) / hkv + (kvh <= (task1 - 1) % hkv ? 1 : 0);
        if (r_hi - r_lo < kMinRows) {
            for (int64_t r = r_lo; r < r_hi; ++r) fallback(a, r * hkv + kvh, r * hkv + kvh + 1);
            continue;
        }
        const int64_t key0 = a.first_key(r_lo), n_keys = a.keys_of_row(r_hi - 1) - key0;
        stage_keys<F16, KT>(a, kvh, key0, n_keys, chunks, dim_tiles, keys, values);
        for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
            for (int64_t r0 = r_lo; r0 < r_hi; r0 += kRows) {
                const int rows = int(std::min<int64_t>(kRows, r_hi - r0));
                scope.set_rows(rows);
                std::fill(queries.begin(), queries.end(), 0);
                for (int i = 0; i < rows; ++i)
                    split_bf16(a.q + ((r0 + i) * a.hq + h) * d, d, &queries[size_t(i * dp)],
                               &queries[size_t((kRows + i) * dp)], &queries[size_t((2 * kRows + i) * dp)]);
                float m[kRows], l[kRows];
                std::fill_n(m, kRows, -INFINITY);
                std::fill_n(l, kRows, 0.0f);
                std::fill(acc.begin(), acc.end(), 0.0f);
                const int64_t b0 = (a.first_key(r0) - key0) / kKeys;
                const int64_t b1 = (a.keys_of_row(r0 + rows - 1) - key0 + kKeys - 1) / kKeys;
                for (int64_t b = b0; b < b1; ++b) {
                    // Scores: keys 32b .. 32b+15 into C0, the next 16 into C1.
                    Tiles::template zero<kC0>();
                    Tiles::template zero<kC1>();
                    for (int64_t c = 0; c < chunks; ++c) {
                        const uint16_t* q = queries.data() + c * kChunk;
                        const uint16_t* k = keys.data() + (2 * b * chunks + c) * KT * kTileElems;
                        score_product<kC0, KT>(q, dp * 2, kRows * dp, k);
                        score_product<kC1, KT>(q, dp * 2, kRows * dp, k + chunks * KT * kTileElems);
                    }
                    Tiles::template store<kC0>(&s[0][0], sizeof(s[0]));
                    Tiles::template store<kC1>(&s[0][kRows], sizeof(s[0]));
                    // The online softmax of each row over the keys of this block it may see.
                    for (int i = 0; i < rows; ++i) {
                        const int64_t base = key0 + b * kKeys;
                        const int64_t lo = std::max<int64_t>(0, a.first_key(r0 + i) - base);
                        const int64_t hi = std::min<int64_t>(kKeys, a.keys_of_row(r0 + i) - base);
                        float p[kKeys] = {};
                        if (lo < hi) {
                            float block_max = -INFINITY;
                            for (int64_t j = lo; j < hi; ++j) block_max = std::max(block_max, s[i][j] * a.scale);
                            const float m_new = std::max(m[i], block_max), rescale = exp_fast(m[i] - m_new);
                            for (int64_t j = lo; j < hi; ++j) p[j] = exp_fast(s[i][j] * a.scale - m_new);
                            float sum = 0.0f;
                            for (int64_t j = lo; j < hi; ++j) sum += p[j];
                            l[i] = l[i] * rescale + sum;
                            m[i] = m_new;
                            for (int64_t e = 0; e < dim_tiles * kRows; ++e) acc[size_t(i * dim_tiles * kRows + e)] *= rescale;
                        }
                        split_bf16(p, kKeys, weights[0][i], weights[1][i], weights[2][i]);
                    }
                    // Values: 16 dims at a time, alternating C tiles.
                    load_terms<kA0, 3>(&weights[0][0][0], sizeof(weights[0][0]), kRows * kKeys);
                    const uint16_t* v = values.data() + b * dim_tiles * KT * kTileElems;
                    for (int64_t t = 0; t < dim_tiles; ++t) {
                        if (t % 2 == 0) value_product<kC0, KT>(v + t * KT * kTileElems, out[0]);
                        else value_product<kC1, KT>(v + t * KT * kTileElems, out[1]);
                        for (int i = 0; i < rows; ++i)
                            for (int e = 0; e < kRows; ++e) acc[size_t((i * dim_tiles + t) * kRows + e)] += out[t % 2][i][e];
                    }
                }
                for (int i = 0; i < rows; ++i) {
                    float* dst = a.out + ((r0 + i) * a.hq + h) * d;
                    const float inv = 1.0f / l[i];
                    for (int64_t e = 0; e < d; ++e) dst[e] = acc[size_t(i * dim_tiles * kRows + e)] * inv;
                }
            }
        }
    }
}

void attention(const AttentionArgs& a, int64_t task0, int64_t task1) {
    if (a.f16_cache) attention_tiles<true>(a, task0, task1);
    else attention_tiles<false>(a, task0, task1);
}

}  // namespace

void fill_attention(KernelTable& t) { t.attention = attention; }

}  // namespace corelm::CORELM_ISA_NS
