// Collectives for tensor-parallel steps: the graph executor's all_reduce and gather ops call MPI
// here, inside the step, without going back to Python.
//
// corelm is built without MPI headers or libraries (a plain `pip install` must not need them).
// Under MPI, corelm/distributed.py finds the entry points of the MPI library that mpi4py has
// loaded (MPI_Allreduce, MPI_Gatherv, MPI_Abort, by address) and the handles of its
// communicator, MPI_FLOAT and MPI_SUM (mpi4py's `.handle`), and installs them once. Handles are
// passed as intptr_t: Open MPI's are pointers, MPICH's are ints, and on x86-64 and arm64 Linux
// both travel in integer registers or 8-byte stack slots, where the callee reads its own width.
//
// A collective that has not finished after `timeout` seconds (a rank died or hangs) makes a
// watchdog thread print an error naming the op and abort the whole job (MPI_Abort), so a job
// never hangs on a lost rank.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace corelm::collectives {

using Handle = intptr_t;

struct Mpi {
    int (*allreduce)(const void* send, void* recv, int count, Handle type, Handle op, Handle comm) = nullptr;
    int (*gatherv)(const void* send, int count, Handle type, void* recv, const int* counts, const int* displs,
                   Handle rtype, int root, Handle comm) = nullptr;
    int (*abort)(Handle comm, int code) = nullptr;
    Handle comm = 0, f32 = 0, sum = 0;
    int rank = 0, size = 1;
    double timeout = 60.0;  // seconds one collective may take before the job is aborted
};

// Install (or, with size 0, remove) the MPI entry points; process-wide.
void install(const Mpi& mpi);
bool active();
int rank();
int size();

// x[n] = the sum of every rank's x[n] (MPI_Allreduce), in place. `what` names the op for errors.
void all_reduce(float* x, int64_t n, const char* what);

// Rank r holds part[rows, widths[r]]; rank 0 receives out[rows, sum(widths)], rank r's part in
// columns sum(widths[:r]).. (MPI_Gatherv into a staging buffer, then scattered into columns).
void gather_columns(const float* part, int64_t rows, const std::vector<int64_t>& widths, float* out, const char* what);

struct Stats {
    int64_t calls = 0;
    int64_t bytes = 0;  // sent by this rank
    double seconds = 0;  // inside the MPI calls (waiting for slower ranks included)
};
Stats stats();
void reset_stats();

}  // namespace corelm::collectives
