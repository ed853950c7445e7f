#include "collectives.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <thread>

namespace corelm::collectives {

namespace {

using Clock = std::chrono::steady_clock;

// Never destroyed: the watchdog thread may outlive static destructors at exit.
struct State {
    Mpi mpi;
    bool on = false;
    std::atomic<int64_t> busy_since{0};  // Clock ticks when the current collective began; 0: none
    std::atomic<const char*> what{""};
    std::atomic<int64_t> calls{0}, bytes{0}, nanos{0};
    std::mutex lock;
    std::condition_variable wake;
    bool watchdog_started = false;
    std::vector<float> staging;  // gather_columns' receive buffer
};

State& state() {
    static State* s = new State();
    return *s;
}

int64_t now_ticks() { return Clock::now().time_since_epoch().count(); }

void watchdog() {
    State& s = state();
    std::unique_lock<std::mutex> guard(s.lock);
    for (;;) {
        s.wake.wait_for(guard, std::chrono::milliseconds(250));
        if (!s.on) continue;
        const int64_t since = s.busy_since.load();
        if (!since) continue;
        const double waited = std::chrono::duration<double>(Clock::duration(now_ticks() - since)).count();
        if (waited < s.mpi.timeout) continue;
        std::fprintf(stderr,
                     "corelm: error: rank %d of %d waited %.0f s in %s for the other ranks (a rank died or hangs; "
                     "CORELM_MPI_TIMEOUT sets the limit): ending the job\n",
                     s.mpi.rank, s.mpi.size, waited, s.what.load());
        std::fflush(stderr);
        s.mpi.abort(s.mpi.comm, 1);
        std::this_thread::sleep_for(std::chrono::seconds(5));
        std::_Exit(1);  // MPI_Abort did not end this process
    }
}

// Times one collective and arms the watchdog while it runs.
struct Timed {
    int64_t t0;
    explicit Timed(const char* what, int64_t bytes) : t0(now_ticks()) {
        State& s = state();
        s.what = what;
        s.busy_since = t0;
        s.calls += 1;
        s.bytes += bytes;
    }
    ~Timed() {
        State& s = state();
        const int64_t t1 = now_ticks();
        s.busy_since = 0;
        s.nanos += std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::duration(t1 - t0)).count();
    }
};

void check(int code, const char* call, const char* what) {
    if (code != 0) {
        std::fprintf(stderr, "corelm: error: %s failed (MPI error %d) in %s: ending the job\n", call, code, what);
        std::fflush(stderr);
        state().mpi.abort(state().mpi.comm, 1);
        std::_Exit(1);
    }
}

}  // namespace

void install(const Mpi& mpi) {
    State& s = state();
    std::lock_guard<std::mutex> guard(s.lock);
    if (mpi.size <= 0) {
        s.on = false;
        return;
    }
    if (!mpi.allreduce || !mpi.gatherv || !mpi.abort) throw std::invalid_argument("MPI entry points missing");
    if (mpi.rank < 0 || mpi.rank >= mpi.size) throw std::invalid_argument("rank out of range");
    if (!(mpi.timeout > 0)) throw std::invalid_argument("timeout must be positive");
    s.mpi = mpi;
    s.on = true;
    if (!s.watchdog_started) {
        std::thread(watchdog).detach();
        s.watchdog_started = true;
    }
}

bool active() { return state().on; }
int rank() { return state().on ? state().mpi.rank : 0; }
int size() { return state().on ? state().mpi.size : 1; }

void all_reduce(float* x, int64_t n, const char* what) {
    State& s = state();
    Timed timed(what, n * int64_t(sizeof(float)));
    // In chunks an int counts (MPI counts are int); one chunk for any activation of a real model.
    for (int64_t done = 0; done < n;) {
        const int64_t count = std::min<int64_t>(n - done, INT_MAX / 2);
        // MPI_IN_PLACE differs between MPI libraries; a send copy does not (a few KB per call).
        thread_local std::vector<float> send;
        send.assign(x + done, x + done + count);
        check(s.mpi.allreduce(send.data(), x + done, int(count), s.mpi.f32, s.mpi.sum, s.mpi.comm), "MPI_Allreduce",
              what);
        done += count;
    }
}

void gather_columns(const float* part, int64_t rows, const std::vector<int64_t>& widths, float* out, const char* what) {
    State& s = state();
    const int n_ranks = s.mpi.size;
    int64_t full = 0;
    for (int64_t w : widths) full += w;
    const int64_t mine = widths[size_t(s.mpi.rank)];
    Timed timed(what, rows * mine * int64_t(sizeof(float)));
    const int64_t chunk_rows = std::max<int64_t>(1, (INT_MAX / 2) / std::max<int64_t>(full, 1));
    std::vector<int> counts(static_cast<size_t>(n_ranks)), displs(static_cast<size_t>(n_ranks));
    for (int64_t r0 = 0; r0 < rows; r0 += chunk_rows) {
        const int64_t nr = std::min(chunk_rows, rows - r0);
        int at = 0;
        for (int r = 0; r < n_ranks; ++r) {
            counts[size_t(r)] = int(nr * widths[size_t(r)]);
            displs[size_t(r)] = at;
            at += counts[size_t(r)];
        }
        if (s.mpi.rank == 0) s.staging.resize(size_t(at));
        check(s.mpi.gatherv(part + r0 * mine, int(nr * mine), s.mpi.f32, s.staging.data(), counts.data(),
                            displs.data(), s.mpi.f32, 0, s.mpi.comm),
              "MPI_Gatherv", what);
        if (s.mpi.rank != 0) continue;
        int64_t col = 0;
        for (int r = 0; r < n_ranks; ++r) {
            const int64_t w = widths[size_t(r)];
            const float* src = s.staging.data() + displs[size_t(r)];
            for (int64_t i = 0; i < nr; ++i) std::memcpy(out + (r0 + i) * full + col, src + i * w, size_t(w) * sizeof(float));
            col += w;
        }
    }
}

Stats stats() {
    State& s = state();
    Stats out;
    out.calls = s.calls;
    out.bytes = s.bytes;
    out.seconds = double(s.nanos.load()) * 1e-9;
    return out;
}

void reset_stats() {
    State& s = state();
    s.calls = 0;
    s.bytes = 0;
    s.nanos = 0;
}

}  // namespace corelm::collectives
