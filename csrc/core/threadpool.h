// One persistent pool of worker threads. parallel_for splits [0, n) into contiguous chunks
// (kChunksPerThread per thread) whose bounds depend only on n, grain and the pool's size;
// threads take chunks as they come, so each output is always computed by the same code in the same order:
// results do not depend on timing, and not on the thread count either for kernels that split
// only over independent outputs.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace corelm {

class ThreadPool {
public:
    explicit ThreadPool(int n_threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return n_threads_; }

    // fn(begin, end) on disjoint chunks covering [0, n); chunks are multiples of `grain`.
    // The calling thread takes chunks too. Calls are serialised.
    void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

private:
    void worker();
    void run_chunks();

    int n_threads_;
    std::vector<std::thread> workers_;
    std::mutex call_mutex_;  // one parallel_for at a time
    std::mutex mutex_;
    std::condition_variable wake_;
    std::atomic<uint64_t> generation_{0};
    std::atomic<int> pending_{0};
    bool stop_ = false;
    // The job being run (valid while pending_ > 0).
    const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
    int64_t n_ = 0, grain_ = 1, blocks_ = 0, chunks_ = 0;
    std::atomic<int64_t> next_chunk_{0};
};

// The process-wide pool (default size: physical cores). Callers hold the shared_ptr for the
// duration of a call, so set_num_threads from another thread never frees a pool in use.
std::shared_ptr<ThreadPool> thread_pool();
void set_num_threads(int n);
int num_threads();

}  // namespace corelm
