#include "dispatch.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>

#include "cpu_features.h"

namespace corelm {

namespace {
// Measured per CPU (kernels/x86/groups.h): Intel prefetches 2 KB ahead and streams 4 sparse row groups;
// Zen 3/4 leaves prefetching to the CPU; Zen 5 prefetches 8 KB ahead, Q8_0_X16 excepted; AMD streams
// 1 sparse group.
DecodeTuning decode_tuning_for(const CpuFeatures& f) {
    if (!f.amd) return {};
    return f.family >= 0x1a ? DecodeTuning{8192, false, 1} : DecodeTuning{0, true, 1};
}
}  // namespace

DecodeTuning g_decode_tuning = decode_tuning_for(cpu_features());

namespace {

struct Path {
    const char* name;
    void (*fill)(KernelTable&);
    bool (*usable)(const CpuFeatures&);
    int base;        // the path whose kernels fill this one's gaps (-1: none)
    bool automatic;  // chosen without being asked for, when it is the fastest usable
    // Activation rows per matmul call when an epilogue follows (ops.cpp): 64 keeps the scratch
    // tile in L2; the tile kernels unpack each weight group once per call, so they get more rows.
    int64_t epilogue_rows = 64;
};

bool avx512_usable(const CpuFeatures& f) {
    return f.avx2 && f.fma && f.f16c && f.avx512f && f.avx512bw && f.avx512vl && f.avx512vnni;
}

// AMX needs the CPU's tiles and Linux's permission to use them (asked once per process; every
// thread of the process then has it). A refusal is said once, and the AVX-512 path runs.
bool amx_usable(const CpuFeatures& f) {
    if (!(avx512_usable(f) && f.amx_tile && f.amx_int8 && f.amx_bf16)) return false;
    if (request_amx()) return true;
    static std::once_flag said;
    std::call_once(said, [] {
        std::fprintf(stderr, "corelm: Linux refused AMX tile permission (arch_prctl); using the AVX-512 kernels\n");
    });
    return false;
}

// Slowest first.
const Path kPaths[] = {
    {"ref", ref::fill, [](const CpuFeatures&) { return true; }, -1, true},
#if defined(__x86_64__) || defined(_M_X64)
    {"avx2", avx2::fill, [](const CpuFeatures& f) { return f.avx2 && f.fma && f.f16c; }, 0, true},
    {"avx512", avx512::fill, avx512_usable, 1, true},
    // The tile kernels on the emulator: for proving them on any AVX-512 CPU, never picked by itself.
    {"amx-emu", amx_emu::fill, avx512_usable, 2, false, 256},
#ifdef CORELM_BUILD_AMX
    {"amx", amx::fill, amx_usable, 2, true, 256},
#endif
#endif
};
constexpr int kNumPaths = int(sizeof(kPaths) / sizeof(kPaths[0]));

struct Selection {
    KernelTable table;
    const char* source[64];  // path name per kernel, in CORELM_KERNELS order
    int path = 0;
};

Selection build(int path) {
    Selection s;
    s.path = path;
    int chain[kNumPaths], n = 0;  // path, its base, its base's base, ...
    for (int p = path; p >= 0; p = kPaths[p].base) chain[n++] = p;
    for (int c = n - 1; c >= 0; --c) {  // the base first, each path overriding what it has
        const Path& p = kPaths[chain[c]];
        KernelTable t;
        p.fill(t);
        int i = 0;
#define CORELM_TAKE(kernel, type)                                     \
    if (t.kernel) { s.table.kernel = t.kernel; s.source[i] = p.name; } \
    ++i;
        CORELM_KERNELS(CORELM_TAKE)
#undef CORELM_TAKE
    }
    return s;
}

int best_usable() {
    int best = 0;
    for (int p = 0; p < kNumPaths; ++p)
        if (kPaths[p].automatic && kPaths[p].usable(cpu_features())) best = p;
    return best;
}

std::mutex g_mutex;
Selection g_selections[kNumPaths];
std::atomic<const Selection*> g_active{nullptr};

const Selection* select(int path) {
    static std::once_flag once;
    std::call_once(once, [] {
        for (int p = 0; p < kNumPaths; ++p) g_selections[p] = build(p);
    });
    return &g_selections[path];
}

// Resolves a requested name to a path this CPU runs; `warning` explains any fallback.
int resolve(const std::string& name, std::string& warning) {
    const int best = best_usable();
    for (int p = 0; p < kNumPaths; ++p) {
        if (name != kPaths[p].name) continue;
        if (kPaths[p].usable(cpu_features())) return p;
        warning = "corelm: this CPU cannot run the '" + name + "' kernels; using '" + kPaths[best].name + "'";
        return best;
    }
    if (name == "amx") {
        warning = "corelm: this build has no AMX kernels (its compiler lacks -mamx-tile); using '" +
                  std::string(kPaths[best].name) + "'";
        return best;
    }
    std::string names;
    for (const Path& p : kPaths) names += std::string(names.empty() ? "" : ", ") + p.name;
    warning = "corelm: unknown CORELM_ISA '" + name + "' (expected one of " + names + "); using '" +
              kPaths[best].name + "'";
    return best;
}

const Selection& active() {
    const Selection* s = g_active.load(std::memory_order_acquire);
    if (s) return *s;
    std::lock_guard<std::mutex> lock(g_mutex);
    s = g_active.load();
    if (!s) {
        int path = best_usable();
        if (const char* env = std::getenv("CORELM_ISA"); env && *env) {
            std::string warning;
            path = resolve(env, warning);
            if (!warning.empty()) std::fprintf(stderr, "%s\n", warning.c_str());
        }
        s = select(path);
        g_active.store(s, std::memory_order_release);
    }
    return *s;
}

}  // namespace

const KernelTable& kernels() { return active().table; }

std::string active_isa() { return kPaths[active().path].name; }

int64_t epilogue_rows() { return kPaths[active().path].epilogue_rows; }

std::string set_isa(const std::string& name) {
    std::string warning;
    const int path = resolve(name, warning);
    std::lock_guard<std::mutex> lock(g_mutex);
    g_active.store(select(path), std::memory_order_release);
    return warning;
}

std::vector<std::string> supported_isas() {
    std::vector<std::string> out;
    for (int p = 0; p < kNumPaths; ++p)
        if (kPaths[p].usable(cpu_features())) out.emplace_back(kPaths[p].name);
    return out;
}

std::vector<std::pair<std::string, std::string>> kernel_paths() {
    const Selection& s = active();
    std::vector<std::pair<std::string, std::string>> out;
    int i = 0;
#define CORELM_NAME(kernel, type) out.emplace_back(#kernel, s.source[i++]);
    CORELM_KERNELS(CORELM_NAME)
#undef CORELM_NAME
    return out;
}

}  // namespace corelm
