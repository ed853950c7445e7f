#include "threadpool.h"

#include <algorithm>
#include <memory>

#include "cpu_features.h"

namespace corelm {

namespace {
// Workers spin this many times before sleeping: a decode step issues hundreds of short
// parallel calls, and a condition-variable wake-up per call costs more than the call.
constexpr int kSpinIterations = 20000;
constexpr int kYieldEvery = 256;
// Chunks per thread in a call. Threads take the next chunk as they come, so a worker that is
// late to wake (descheduled by a server's HTTP threads or another process) leaves its chunk to
// a thread that is running. One per thread: a memory-bound GEMV streams best as one contiguous
// range per core (four per thread measured no faster in a loaded server and up to a third
// slower on TinyLlama's 2-thread decode, within this machine's noise). The bounds depend only
// on n, grain and the pool's size, so each output is still computed the same way.
constexpr int64_t kChunksPerThread = 1;

inline void cpu_relax() {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
}
}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads < 1 ? 1 : n_threads) {
    for (int i = 1; i < n_threads_; ++i) workers_.emplace_back(&ThreadPool::worker, this);
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stop_ = true;
        generation_.fetch_add(1);
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
}

void ThreadPool::run_chunks() {
    for (;;) {
        const int64_t c = next_chunk_.fetch_add(1, std::memory_order_relaxed);
        if (c >= chunks_) return;
        const int64_t b0 = blocks_ * c / chunks_, b1 = blocks_ * (c + 1) / chunks_;
        const int64_t begin = b0 * grain_, end = std::min(n_, b1 * grain_);
        if (begin < end) (*fn_)(begin, end);
    }
}

void ThreadPool::worker() {
    uint64_t seen = 0;
    for (;;) {
        int spins = 0;
        while (generation_.load(std::memory_order_acquire) == seen && spins < kSpinIterations) {
            cpu_relax();
            ++spins;
        }
        if (generation_.load(std::memory_order_acquire) == seen) {
            std::unique_lock<std::mutex> lock(mutex_);
            wake_.wait(lock, [&] { return generation_.load() != seen; });
        }
        seen = generation_.load(std::memory_order_acquire);
        {
            std::lock_guard<std::mutex> lock(mutex_);
            if (stop_) return;
        }
        run_chunks();
        pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
}

void ThreadPool::parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    if (n_threads_ == 1 || n <= grain) {
        fn(0, n);
        return;
    }
    std::lock_guard<std::mutex> call(call_mutex_);
    fn_ = &fn;
    n_ = n;
    grain_ = grain;
    blocks_ = (n + grain - 1) / grain;
    chunks_ = std::min<int64_t>(blocks_, n_threads_ * kChunksPerThread);
    next_chunk_.store(0, std::memory_order_relaxed);
    pending_.store(n_threads_ - 1, std::memory_order_release);
    {
        std::lock_guard<std::mutex> lock(mutex_);
        generation_.fetch_add(1, std::memory_order_acq_rel);
    }
    wake_.notify_all();
    run_chunks();
    // Spin for the workers, but yield the core now and then: when the machine is busy, a
    // descheduled worker needs this core to finish its chunk.
    for (int spins = 0; pending_.load(std::memory_order_acquire) != 0; ++spins) {
        if (spins % kYieldEvery == kYieldEvery - 1) std::this_thread::yield();
        else cpu_relax();
    }
}

namespace {
std::mutex g_pool_mutex;
std::shared_ptr<ThreadPool> g_pool;
}  // namespace

std::shared_ptr<ThreadPool> thread_pool() {
    std::lock_guard<std::mutex> lock(g_pool_mutex);
    if (!g_pool) g_pool = std::make_shared<ThreadPool>(cpu_features().physical_cores);
    return g_pool;
}

void set_num_threads(int n) {
    std::lock_guard<std::mutex> lock(g_pool_mutex);
    if (n < 1) n = cpu_features().physical_cores;
    if (g_pool && g_pool->size() == n) return;
    g_pool = std::make_shared<ThreadPool>(n);
}

int num_threads() { return thread_pool()->size(); }

}  // namespace corelm
