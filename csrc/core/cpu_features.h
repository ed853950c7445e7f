// What the CPU can do, probed once with cpuid (x86) or auxv (arm64).
#pragma once
#include <string>
#include <utility>
#include <vector>

namespace corelm {

struct CpuFeatures {
    std::string model;
    bool amd = false;  // vendor AuthenticAMD: some decode tuning differs (kernels/x86/groups.h)
    int family = 0;    // x86 family (base + extended): AMD 0x19 Zen 3/4, 0x1A Zen 5
    bool avx2 = false, fma = false, f16c = false;
    bool avx512f = false, avx512bw = false, avx512vl = false, avx512vnni = false, avx512bf16 = false;
    bool avx512vbmi = false, avx512vbmi2 = false;  // vpmultishiftqb, vpexpandb: the sparse kernels
    bool avx_vnni = false;
    bool amx_tile = false, amx_int8 = false, amx_bf16 = false;
    bool neon = false, dotprod = false, i8mm = false;
    int physical_cores = 1;

    // Named flags in a stable order, for info().
    std::vector<std::pair<const char*, bool>> flags() const;
};

const CpuFeatures& cpu_features();

// Asks Linux for permission to use AMX tile data (once per process). False when refused.
bool request_amx();

}  // namespace corelm
