// The batched sampler (see sampling.h). Plain C++: per row the work is one or two passes over
// the vocabulary, small next to the forward pass that made the logits.
#include "sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "threadpool.h"

namespace corelm::sampling {
namespace {

// splitmix64 (Steele, Lea, Flood 2014): one 64-bit word of state, so a row's state is one
// uint64 the caller keeps between steps; a seed is the initial state.
uint64_t next_u64(uint64_t& state) {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

double uniform(uint64_t& state) { return double(next_u64(state) >> 11) * 0x1.0p-53; }  // [0, 1)

// The row's logits after its bias and penalties: the input row itself when neither applies,
// else a copy in `scratch`.
const float* adjusted_logits(const Batch& b, int64_t r, std::vector<float>& scratch) {
    const float* row = b.logits + r * b.vocab;
    const RowParams& p = b.params[r];
    const int64_t n_bias = b.bias_offsets[r + 1] - b.bias_offsets[r];
    const int64_t n_recent = b.recent_offsets[r + 1] - b.recent_offsets[r];
    const bool penalize =
        n_recent > 0 && (p.repeat_penalty != 1.0f || p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f);
    if (n_bias == 0 && !penalize) return row;
    scratch.assign(row, row + b.vocab);
    for (int64_t i = b.bias_offsets[r]; i < b.bias_offsets[r + 1]; ++i) scratch[b.bias_ids[i]] += b.bias_values[i];
    if (penalize) {
        std::vector<int32_t> recent(b.recent + b.recent_offsets[r], b.recent + b.recent_offsets[r + 1]);
        std::sort(recent.begin(), recent.end());
        for (size_t i = 0; i < recent.size();) {
            size_t j = i;
            while (j < recent.size() && recent[j] == recent[i]) ++j;
            float& v = scratch[recent[i]];
            v = v > 0 ? v / p.repeat_penalty : v * p.repeat_penalty;
            v -= float(j - i) * p.frequency_penalty + p.presence_penalty;
            i = j;
        }
    }
    return scratch.data();
}

// Ids of the k largest of z[0, n), best first (equal logits: the lower id first). Only the
// candidates at least as large as the k-th largest of 64-element chunk maxima are ranked (k
// distinct elements reach it, so the k-th largest logit is never below it): one pass over the
// vocabulary instead of a partition of all of it.
std::vector<int32_t> top_k_ids(const float* z, int64_t n, int64_t k) {
    constexpr int64_t chunk = 64;
    const int64_t n_chunks = n / chunk;
    float threshold = -INFINITY;
    if (n_chunks > 2 * k) {
        std::vector<float> maxima(static_cast<size_t>(n_chunks));
        for (int64_t c = 0; c < n_chunks; ++c) maxima[c] = *std::max_element(z + c * chunk, z + (c + 1) * chunk);
        std::nth_element(maxima.begin(), maxima.begin() + (k - 1), maxima.end(), std::greater<float>());
        threshold = maxima[k - 1];
    }
    std::vector<int32_t> ids;
    for (int64_t i = 0; i < n; ++i)
        if (z[i] >= threshold) ids.push_back(int32_t(i));
    auto better = [z](int32_t a, int32_t b) { return z[a] > z[b] || (z[a] == z[b] && a < b); };
    std::nth_element(ids.begin(), ids.begin() + (k - 1), ids.end(), better);
    ids.resize(size_t(k));
    std::sort(ids.begin(), ids.end(), better);
    return ids;
}

int32_t sample_row(const Batch& b, int64_t r) {
    std::vector<float> scratch;
    const float* z = adjusted_logits(b, r, scratch);
    const RowParams& p = b.params[r];
    const int64_t n = b.vocab;
    if (p.temperature <= 0) return int32_t(std::max_element(z, z + n) - z);  // the first maximum, as np.argmax

    auto better = [z](int32_t a, int32_t b) { return z[a] > z[b] || (z[a] == z[b] && a < b); };
    std::vector<int32_t> ids;
    int64_t sorted = 0;  // ids[0, sorted) are the best, in order
    if (p.top_k > 0 && p.top_k < n) {
        ids = top_k_ids(z, n, p.top_k);
        sorted = int64_t(ids.size());
    } else {
        ids.resize(size_t(n));
        std::iota(ids.begin(), ids.end(), 0);
    }
    const double z0 = sorted ? z[ids[0]] : *std::max_element(z, z + n);
    if (p.top_p < 1.0f) {
        // The fewest best tokens whose probability (softmax over the candidates) reaches top_p.
        double total = 0;
        for (int32_t i : ids) total += std::exp(z[i] - z0);
        const double target = double(p.top_p) * total;
        const int64_t size = int64_t(ids.size());
        double cum = 0;
        int64_t keep = 0;
        for (int64_t m = std::min<int64_t>(64, size);; m = std::min(4 * m, size)) {
            if (sorted < m) {  // rank more of them: a few passes at most, as the kept set is small
                std::nth_element(ids.begin() + sorted, ids.begin() + (m - 1), ids.end(), better);
                std::sort(ids.begin() + sorted, ids.begin() + m, better);
                sorted = m;
            }
            while (keep < m && cum < target) cum += std::exp(z[ids[keep++]] - z0);
            if (cum >= target || m == size) break;
        }
        ids.resize(size_t(std::max<int64_t>(keep, 1)));
    }
    if (p.min_p > 0) {  // relative to the most likely token, which is kept
        const double floor = std::log(double(p.min_p)) + z0;
        ids.erase(std::remove_if(ids.begin(), ids.end(), [&](int32_t i) { return z[i] < floor; }), ids.end());
    }
    std::vector<double> w(ids.size());
    double total = 0;
    for (size_t i = 0; i < ids.size(); ++i) total += w[i] = std::exp((z[ids[i]] - z0) / p.temperature);
    double u = uniform(b.rng[r]) * total;
    for (size_t i = 0; i < ids.size(); ++i) {
        u -= w[i];
        if (u < 0) return ids[i];
    }
    return ids.back();  // rounding left u at or just above 0
}

}  // namespace

void sample(const Batch& b) {
    thread_pool()->parallel_for(b.rows, 1, [&b](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) b.out[r] = sample_row(b, r);
    });
}

}  // namespace corelm::sampling
