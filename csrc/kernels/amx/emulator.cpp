// A software AMX: the tile registers as arrays and each instruction as the Intel SDM's
// pseudo-code (vol. 2, "TILELOADD", "TDPBSSD/TDPBSUD/TDPBUSD/TDPBUUD", "TDPBF16PS"), step by step,
// with its #UD / #GP conditions raised as exceptions. Tile state is per thread, like the
// hardware's. Compiled with the amx-emu path's flags (AVX-512, FMA), used by that path and by the
// tests that check the instructions against hand-computed tiles and against the real ones.
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "tiles.h"

namespace corelm::amx::emu {

namespace {

constexpr int kTmulMaxK = 16, kTmulMaxN = 16;  // CPUID leaf 0x1E, the values every AMX CPU reports

struct State {
    bool configured = false;
    TileConfig cfg;
    alignas(64) uint8_t tile[kTiles][kMaxRows][kMaxColsb] = {};
};
thread_local State g;

[[noreturn]] void fault(const std::string& what) { throw std::runtime_error("AMX emulator: " + what); }

int rows(int t) { return g.cfg.rows[t]; }
int colsb(int t) { return g.cfg.colsb[t]; }

void check_tile(int t, const char* insn) {
    if (!g.configured) fault(std::string(insn) + " before ldtilecfg (#UD)");
    if (t < 0 || t >= kTiles) fault(std::string(insn) + ": no tile " + std::to_string(t) + " (#UD)");
    if (rows(t) == 0 || colsb(t) == 0) fault(std::string(insn) + ": tile " + std::to_string(t) + " is not configured (#UD)");
}

// The checks shared by the dot-product instructions (their "Exceptions" and "Operation" sections).
void check_dot(int c, int a, int b, const char* insn) {
    check_tile(c, insn);
    check_tile(a, insn);
    check_tile(b, insn);
    if (c == a || c == b || a == b) fault(std::string(insn) + ": operands must be three different tiles (#UD)");
    if (colsb(a) % 4 || colsb(b) % 4 || colsb(c) % 4) fault(std::string(insn) + ": colsb not a multiple of 4 (#UD)");
    if (rows(c) != rows(a)) fault(std::string(insn) + ": dest rows != src1 rows (#UD)");
    if (colsb(a) / 4 != rows(b)) fault(std::string(insn) + ": src1 colsb / 4 != src2 rows (#UD)");
    if (colsb(c) != colsb(b)) fault(std::string(insn) + ": dest colsb != src2 colsb (#UD)");
    if (colsb(c) / 4 > kTmulMaxN || rows(b) > kTmulMaxK) fault(std::string(insn) + ": beyond tmul_maxn / tmul_maxk (#UD)");
}

// write_row_and_zero / zero_upper_rows: bytes past colsb and rows past `rows` read back as 0.
void write_row_and_zero(int t, int row, const void* data, int nbytes) {
    std::memcpy(g.tile[t][row], data, size_t(nbytes));
    std::memset(g.tile[t][row] + nbytes, 0, size_t(kMaxColsb - nbytes));
}
void zero_upper_rows(int t, int from) {
    for (int r = from; r < kMaxRows; ++r) std::memset(g.tile[t][r], 0, kMaxColsb);
}

template <typename T>
T element(int t, int row, int i) {
    T v;
    std::memcpy(&v, g.tile[t][row] + i * sizeof(T), sizeof(T));
    return v;
}

int32_t extend(uint8_t byte, bool is_signed) { return is_signed ? int32_t(int8_t(byte)) : int32_t(byte); }

// bfloat16 and fp32 under the instruction's DAZ = FTZ = 1: denormal inputs and results are zeros
// of the same sign.
float flush(float f) { return std::fpclassify(f) == FP_SUBNORMAL ? std::copysign(0.0f, f) : f; }
float make_fp32(uint16_t bf16) {
    uint32_t bits = uint32_t(bf16) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return flush(f);
}

}  // namespace

void ldtilecfg(const TileConfig& cfg) {
    if (cfg.palette == 0) {  // palette 0 is the init state, as tilerelease leaves it
        tilerelease();
        return;
    }
    if (cfg.palette != 1) fault("ldtilecfg: palette " + std::to_string(cfg.palette) + " is not supported (#GP)");
    for (uint8_t byte : cfg.reserved)
        if (byte) fault("ldtilecfg: reserved bytes must be zero (#GP)");
    for (int t = 0; t < 16; ++t) {
        const bool exists = t < kTiles;
        if (cfg.rows[t] > (exists ? kMaxRows : 0) || cfg.colsb[t] > (exists ? kMaxColsb : 0))
            fault("ldtilecfg: tile " + std::to_string(t) + " shape " + std::to_string(cfg.rows[t]) + " x " +
                  std::to_string(cfg.colsb[t]) + " bytes is beyond palette 1 (#GP)");
        if ((cfg.rows[t] == 0) != (cfg.colsb[t] == 0)) fault("ldtilecfg: tile " + std::to_string(t) + " half configured (#GP)");
    }
    g.cfg = cfg;
    g.configured = true;
    std::memset(g.tile, 0, sizeof(g.tile));
}

void tilerelease() {
    g = State{};
}

void tilezero(int t) {
    check_tile(t, "tilezero");
    zero_upper_rows(t, 0);
}

void tileloadd(int t, const void* base, size_t stride) {
    check_tile(t, "tileloadd");
    const auto* mem = static_cast<const uint8_t*>(base);
    zero_upper_rows(t, g.cfg.start_row);  // rows below start_row were loaded before an interrupt
    for (int r = g.cfg.start_row; r < rows(t); ++r) write_row_and_zero(t, r, mem + r * stride, colsb(t));
    zero_upper_rows(t, rows(t));
    g.cfg.start_row = 0;
}

void tilestored(int t, void* base, size_t stride) {
    check_tile(t, "tilestored");
    auto* mem = static_cast<uint8_t*>(base);
    for (int r = g.cfg.start_row; r < rows(t); ++r) std::memcpy(mem + r * stride, g.tile[t][r], size_t(colsb(t)));
    g.cfg.start_row = 0;
}

void tdpb(Dot kind, int c, int a, int b) {
    check_dot(c, a, b, "tdpb*d");
    const bool a_signed = kind == Dot::SS || kind == Dot::SU;
    const bool b_signed = kind == Dot::SS || kind == Dot::US;
    for (int m = 0; m < rows(c); ++m) {
        uint32_t tmp[kMaxColsb / 4];  // int32 lanes, wrapping like the hardware's adds
        for (int n = 0; n < colsb(c) / 4; ++n) tmp[n] = uint32_t(element<int32_t>(c, m, n));
        for (int k = 0; k < colsb(a) / 4; ++k)
            for (int n = 0; n < colsb(c) / 4; ++n)
                for (int i = 0; i < 4; ++i)  // DPBD: four byte products, each extended to 32 bits
                    tmp[n] += uint32_t(extend(g.tile[a][m][4 * k + i], a_signed) *
                                       extend(g.tile[b][k][4 * n + i], b_signed));
        write_row_and_zero(c, m, tmp, colsb(c));
    }
    zero_upper_rows(c, rows(c));
    g.cfg.start_row = 0;
}

void tdpbf16ps(int c, int a, int b) {
    check_dot(c, a, b, "tdpbf16ps");
    for (int m = 0; m < rows(c); ++m) {
        // Even and odd bfloat16 products go to separate fp32 sums (temp1), added to the destination
        // only after the whole row: the SDM's order, each step one RNE rounding with DAZ / FTZ.
        float temp1[kMaxColsb / 2] = {};
        for (int k = 0; k < colsb(a) / 4; ++k)
            for (int n = 0; n < colsb(c) / 4; ++n)
                for (int i = 0; i < 2; ++i) {
                    const float x = make_fp32(element<uint16_t>(a, m, 2 * k + i));
                    const float y = make_fp32(element<uint16_t>(b, k, 2 * n + i));
                    temp1[2 * n + i] = flush(std::fma(x, y, temp1[2 * n + i]));
                }
        float row[kMaxColsb / 4];
        for (int n = 0; n < colsb(c) / 4; ++n) {
            const float sum = flush(temp1[2 * n] + temp1[2 * n + 1]);
            row[n] = flush(flush(element<float>(c, m, n)) + sum);
        }
        write_row_and_zero(c, m, row, colsb(c));
    }
    zero_upper_rows(c, rows(c));
    g.cfg.start_row = 0;
}

}  // namespace corelm::amx::emu
