// Which kernel path runs: the fastest the CPU supports, or the one CORELM_ISA / set_isa
// asks for (falling back, with a warning, when the CPU lacks it).
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "kernel_table.h"

namespace corelm {

const KernelTable& kernels();

// The path in use ("ref", "avx2", "avx512", "amx", "amx-emu").
std::string active_isa();

// Activation rows per matmul kernel call when an epilogue follows (ops::matmul): the path's choice.
int64_t epilogue_rows();

// Switches path; returns a warning ("" when none) when the request had to fall back.
std::string set_isa(const std::string& name);

// The paths this build has that this CPU can run, slowest first.
std::vector<std::string> supported_isas();

// For each kernel, the path its function comes from under the active selection.
std::vector<std::pair<std::string, std::string>> kernel_paths();

}  // namespace corelm
