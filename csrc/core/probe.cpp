#include "probe.h"

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "threadpool.h"

namespace corelm {

namespace {
uint64_t sum_streams(const uint64_t* p, size_t words, int streams) {
    const size_t per = words / size_t(streams);
    uint64_t total = 0;
    constexpr size_t kStep = 64;  // one cache line of each stream per round
    for (size_t i = 0; i + kStep <= per; i += kStep) {
        for (int s = 0; s < streams; ++s) {
            const uint64_t* q = p + size_t(s) * per + i;
            uint64_t acc = 0;
            for (size_t j = 0; j < kStep; ++j) acc += q[j];
            total += acc;
        }
    }
    return total;
}
}  // namespace

double read_bandwidth_gbs(size_t bytes, int reps, int streams) {
    if (streams < 1) streams = 1;
    const size_t words = bytes / 8;
    std::unique_ptr<uint64_t[]> buf(new uint64_t[words]);
    auto pool = thread_pool();
    pool->parallel_for(int64_t(words), 4096, [&](int64_t a, int64_t b) {  // first touch by the reader
        for (int64_t i = a; i < b; ++i) buf[size_t(i)] = uint64_t(i);
    });
    std::vector<uint64_t> sink(size_t(pool->size()) * 8, 0);
    double best = 0.0;
    for (int r = 0; r < reps; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        pool->parallel_for(int64_t(words), 4096, [&](int64_t a, int64_t b) {
            sink[size_t(a * pool->size() / int64_t(words)) * 8] += sum_streams(buf.get() + a, size_t(b - a), streams);
        });
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (s > 0) best = std::max(best, double(words * 8) / s / 1e9);
    }
    volatile uint64_t keep = 0;
    for (uint64_t v : sink) keep = keep + v;
    (void)keep;
    return best;
}

}  // namespace corelm
