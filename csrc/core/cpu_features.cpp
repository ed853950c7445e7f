#include "cpu_features.h"

#include <fstream>
#include <set>
#include <thread>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#if defined(__aarch64__) && defined(__linux__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

namespace corelm {

namespace {

#if defined(__x86_64__) || defined(_M_X64)
unsigned long long xgetbv0() {
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (static_cast<unsigned long long>(hi) << 32) | lo;
}

void probe_x86(CpuFeatures& f) {
    unsigned a, b, c, d;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return;
    f.amd = b == 0x68747541 && d == 0x69746e65 && c == 0x444d4163;  // "Auth" "enti" "cAMD"
    if (!__get_cpuid(1, &a, &b, &c, &d)) return;
    const int base_family = int((a >> 8) & 0xf);
    f.family = base_family + (base_family == 0xf ? int((a >> 20) & 0xff) : 0);
    const bool osxsave = c & (1u << 27);
    f.fma = c & (1u << 12);
    f.f16c = c & (1u << 29);
    const unsigned long long xcr0 = osxsave ? xgetbv0() : 0;
    const bool os_avx = (xcr0 & 0x6) == 0x6;          // XMM + YMM state
    const bool os_avx512 = (xcr0 & 0xe6) == 0xe6;     // + opmask, ZMM state
    const bool os_amx = (xcr0 & 0x60000) == 0x60000;  // XTILECFG + XTILEDATA
    if (!os_avx) f.fma = f.f16c = false;
    unsigned max_leaf = __get_cpuid_max(0, nullptr);
    if (max_leaf >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
        f.avx2 = os_avx && (b & (1u << 5));
        f.avx512f = os_avx512 && (b & (1u << 16));
        f.avx512bw = os_avx512 && (b & (1u << 30));
        f.avx512vl = os_avx512 && (b & (1u << 31));
        f.avx512vnni = os_avx512 && (c & (1u << 11));
        f.avx512vbmi = os_avx512 && (c & (1u << 1));
        f.avx512vbmi2 = os_avx512 && (c & (1u << 6));
        f.amx_bf16 = os_amx && (d & (1u << 22));
        f.amx_tile = os_amx && (d & (1u << 24));
        f.amx_int8 = os_amx && (d & (1u << 25));
        __cpuid_count(7, 1, a, b, c, d);
        f.avx_vnni = os_avx && (a & (1u << 4));
        f.avx512bf16 = os_avx512 && (a & (1u << 5));
    }
    unsigned brand[12] = {};
    if (__get_cpuid_max(0x80000000u, nullptr) >= 0x80000004u) {
        for (unsigned i = 0; i < 3; ++i) __get_cpuid(0x80000002u + i, &brand[4 * i], &brand[4 * i + 1], &brand[4 * i + 2], &brand[4 * i + 3]);
        f.model = std::string(reinterpret_cast<const char*>(brand), sizeof(brand)).c_str();
        while (!f.model.empty() && f.model.back() == ' ') f.model.pop_back();
        while (!f.model.empty() && f.model.front() == ' ') f.model.erase(0, 1);
    }
}
#endif

// Physical cores: distinct (physical id, core id) pairs in /proc/cpuinfo; SMT siblings
// share a core's vector units, so more threads than cores only adds contention.
int count_physical_cores() {
    std::ifstream in("/proc/cpuinfo");
    std::set<std::pair<int, int>> cores;
    std::string line;
    int phys = 0, core = -1;
    while (std::getline(in, line)) {
        const auto colon = line.find(':');
        if (colon == std::string::npos) continue;
        const std::string key = line.substr(0, line.find_last_not_of(" \t", colon - 1) + 1);
        const int value = std::atoi(line.c_str() + colon + 1);
        if (key == "physical id") phys = value;
        if (key == "core id") { core = value; cores.insert({phys, core}); }
    }
    const int logical = int(std::thread::hardware_concurrency());
    if (cores.empty()) return logical > 0 ? logical : 1;
    return int(cores.size());
}

CpuFeatures probe() {
    CpuFeatures f;
#if defined(__x86_64__) || defined(_M_X64)
    probe_x86(f);
#endif
#if defined(__aarch64__)
    f.neon = true;
#if defined(__linux__)
    const unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
    f.dotprod = hw & HWCAP_ASIMDDP;
    f.i8mm = hw2 & HWCAP2_I8MM;
#endif
#endif
    f.physical_cores = count_physical_cores();
    return f;
}

}  // namespace

std::vector<std::pair<const char*, bool>> CpuFeatures::flags() const {
#if defined(__aarch64__)
    return {{"neon", neon}, {"dotprod", dotprod}, {"i8mm", i8mm}};
#else
    return {{"avx2", avx2}, {"fma", fma}, {"f16c", f16c}, {"avx512f", avx512f}, {"avx512bw", avx512bw},
            {"avx512vl", avx512vl}, {"avx512_vnni", avx512vnni}, {"avx512_vbmi", avx512vbmi}, {"avx512_vbmi2", avx512vbmi2}, {"avx_vnni", avx_vnni},
            {"avx512_bf16", avx512bf16}, {"amx_tile", amx_tile}, {"amx_int8", amx_int8}, {"amx_bf16", amx_bf16}};
#endif
}

const CpuFeatures& cpu_features() {
    static const CpuFeatures f = probe();
    return f;
}

bool request_amx() {
#if defined(__linux__) && (defined(__x86_64__) || defined(_M_X64))
    static const bool granted = [] {
        constexpr int kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
        return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
    }();
    return granted;
#else
    return false;
#endif
}

}  // namespace corelm
