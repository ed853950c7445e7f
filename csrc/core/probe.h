// Machine probes for the roofline: how fast this machine can stream memory.
#pragma once
#include <cstddef>

namespace corelm {

// Best-of-`reps` read bandwidth in GB/s over a buffer of `bytes`, read by the thread pool
// with `streams` interleaved sequential streams per thread (hardware prefetchers track a
// few streams each; several per thread is what a GEMV over many weight rows looks like).
double read_bandwidth_gbs(size_t bytes, int reps, int streams);

}  // namespace corelm
