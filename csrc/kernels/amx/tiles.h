// The AMX tile interface the tile kernels (matmul.cpp) are written against. Two implementations
// with the same static members: Hardware issues the instructions (only in translation units built
// with -mamx-tile -mamx-int8 -mamx-bf16), Emulated runs the Intel SDM's pseudo-code for each of
// them in software (emulator.cpp), so every tile kernel runs, and is tested, on any x86-64 CPU.
// Tile numbers are template arguments because the instructions encode them as immediates.
#pragma once
#include <cstddef>
#include <cstdint>

#if defined(__AMX_TILE__) && defined(__AMX_INT8__) && defined(__AMX_BF16__)
#include <immintrin.h>
#define CORELM_HAS_AMX_INSTRUCTIONS 1
#endif

namespace corelm::amx {

// The tile kernels take products of at least this many activation rows (prefill, batched decode);
// below it the AVX-512 kernels run: a single row (GEMV) leaves 15 of a tile's 16 rows empty and
// reads each weight once anyway. Not yet tuned on an AMX CPU (none at hand).
constexpr int64_t kMinRows = 8;

constexpr int kTiles = 8;
constexpr int kMaxRows = 16;   // palette 1: 8 tiles of up to 16 rows x 64 bytes
constexpr int kMaxColsb = 64;

// The 64-byte memory operand of ldtilecfg, palette 1 (SDM vol. 1, 3.2.2 "TILECFG").
struct alignas(64) TileConfig {
    uint8_t palette = 1;
    uint8_t start_row = 0;
    uint8_t reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};

    void shape(int tile, int rows_, int colsb_) {
        rows[tile] = uint8_t(rows_);
        colsb[tile] = uint16_t(colsb_);
    }
};
static_assert(sizeof(TileConfig) == 64, "ldtilecfg reads 64 bytes");

// The signedness of tdpb*d's two byte operands: A (rows of the result) then B.
enum class Dot { SS, SU, US, UU };

// The emulator's instructions (emulator.cpp). They throw std::runtime_error where the CPU raises
// #UD or #GP (no configuration, bad shapes, palette != 1), so kernel bugs surface in the tests.
namespace emu {
void ldtilecfg(const TileConfig& cfg);
void tilerelease();
void tilezero(int t);
void tileloadd(int t, const void* base, size_t stride);
void tilestored(int t, void* base, size_t stride);
void tdpb(Dot kind, int c, int a, int b);
void tdpbf16ps(int c, int a, int b);
}  // namespace emu

struct Emulated {
    static void configure(const TileConfig& cfg) { emu::ldtilecfg(cfg); }
    static void release() { emu::tilerelease(); }
    template <int T> static void zero() { emu::tilezero(T); }
    template <int T> static void load(const void* base, size_t stride) { emu::tileloadd(T, base, stride); }
    template <int T> static void store(void* base, size_t stride) { emu::tilestored(T, base, stride); }
    template <int C, int A, int B> static void dpbssd() { emu::tdpb(Dot::SS, C, A, B); }
    template <int C, int A, int B> static void dpbsud() { emu::tdpb(Dot::SU, C, A, B); }
    template <int C, int A, int B> static void dpbusd() { emu::tdpb(Dot::US, C, A, B); }
    template <int C, int A, int B> static void dpbuud() { emu::tdpb(Dot::UU, C, A, B); }
    template <int C, int A, int B> static void dpbf16ps() { emu::tdpbf16ps(C, A, B); }
};

#ifdef CORELM_HAS_AMX_INSTRUCTIONS
// GCC's tile intrinsics paste their tile numbers into the assembly text, so each number must be
// a literal: these expand a template argument into the literal cases the kernels use.
#define CORELM_TILE_1(op, T, ...)                                                                   \
    if constexpr (T == 0) op(0, __VA_ARGS__); else if constexpr (T == 1) op(1, __VA_ARGS__);       \
    else if constexpr (T == 2) op(2, __VA_ARGS__); else if constexpr (T == 3) op(3, __VA_ARGS__);  \
    else if constexpr (T == 4) op(4, __VA_ARGS__); else if constexpr (T == 5) op(5, __VA_ARGS__);  \
    else if constexpr (T == 6) op(6, __VA_ARGS__); else op(7, __VA_ARGS__)
// Products accumulate in tile 0 or 1 from A in tiles 2-4 and B in tiles 5-7 (matmul.cpp's roles).
#define CORELM_TILE_DOT_B(op, c, a) \
    if constexpr (B == 5) op(c, a, 5); else if constexpr (B == 6) op(c, a, 6); else op(c, a, 7)
#define CORELM_TILE_DOT_A(op, c)                                                     \
    if constexpr (A == 2) { CORELM_TILE_DOT_B(op, c, 2); }                           \
    else if constexpr (A == 3) { CORELM_TILE_DOT_B(op, c, 3); }                      \
    else { CORELM_TILE_DOT_B(op, c, 4); }
#define CORELM_TILE_DOT(op)                                                                        \
    static_assert(C <= 1 && A >= 2 && A <= 4 && B >= 5 && B <= 7, "tile roles as in matmul.cpp"); \
    if constexpr (C == 0) { CORELM_TILE_DOT_A(op, 0) } else { CORELM_TILE_DOT_A(op, 1) }
#define CORELM_TILEZERO(t, unused) _tile_zero(t)

struct Hardware {
    static void configure(const TileConfig& cfg) { _tile_loadconfig(&cfg); }
    static void release() { _tile_release(); }
    template <int T> static void zero() { CORELM_TILE_1(CORELM_TILEZERO, T, 0); }
    template <int T> static void load(const void* base, size_t stride) { CORELM_TILE_1(_tile_loadd, T, base, stride); }
    template <int T> static void store(void* base, size_t stride) { CORELM_TILE_1(_tile_stored, T, base, stride); }
    template <int C, int A, int B> static void dpbssd() { CORELM_TILE_DOT(_tile_dpbssd) }
    template <int C, int A, int B> static void dpbsud() { CORELM_TILE_DOT(_tile_dpbsud) }
    template <int C, int A, int B> static void dpbusd() { CORELM_TILE_DOT(_tile_dpbusd) }
    template <int C, int A, int B> static void dpbuud() { CORELM_TILE_DOT(_tile_dpbuud) }
    template <int C, int A, int B> static void dpbf16ps() { CORELM_TILE_DOT(_tile_dpbf16ps) }
};
#endif

}  // namespace corelm::amx

namespace corelm::amx {

// One tile instruction on the caller's matrices (C = A . B, each as rows of bytes with a row
// stride), run by the path's Tiles: how the tests check the emulator against hand-computed tiles
// and, on a CPU with AMX, the instructions against the emulator.
enum class Insn { DPBSSD, DPBSUD, DPBUSD, DPBUUD, DPBF16PS };
struct TileOperand {
    const uint8_t* data;
    size_t stride;
    int rows, colsb;
};
struct TileOp {
    Insn insn;
    TileOperand c, a, b;
    uint8_t* out;  // C after the instruction, c.stride apart
};

}  // namespace corelm::amx

// tile_op of each path (matmul.cpp); amx's exists only in builds with CORELM_BUILD_AMX.
namespace corelm::amx_emu {
void tile_op(const amx::TileOp& op);
}
namespace corelm::amx {
void tile_op(const TileOp& op);
}
