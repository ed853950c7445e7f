// Reference k-quant quantizers (Q4_K, Q5_K, Q6_K): the algorithm of ggml-quants.c's
// quantize_row_qX_K_ref, which llama-quantize uses when it has no importance matrix, so that a
// corelm-written file has the codes llama.cpp would write (tests/test_quantize_k.py checks the
// bytes against llama.cpp's). Float operations keep ggml's order: the search compares sums.
//
// Each super-block of 256 is fitted in two levels: every sub-block gets its own best float
// scale (and min), searched over a small grid of candidate scales; those are then quantized
// to 6 bits (Q4_K/Q5_K) or 8 bits (Q6_K) against one fp16 super-block scale, and the codes are
// finally re-rounded against the scales as stored.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "../../core/decode.h"
#include "../../core/kernel_table.h"

namespace corelm::ref {

namespace {

// Round half to even, as ggml's nearest_int (its magic-number trick) does for |v| < 2^22.
inline int nearest(float v) { return int(std::nearbyint(v)); }

// Asymmetric fit of n values to codes 0..nmax: x ~ scale * L - min_out, minimising the weighted
// squared error over nstep+1 candidate scales (nmax + rmin + rdelta*i) / (max - min), each with
// its least-squares (scale, min). Returns the scale; min_out >= 0.
float fit_scale_min(int n, int nmax, const float* x, const float* w, uint8_t* L, float& min_out, float rmin,
                    float rdelta, int nstep) {
    float min = x[0], max = x[0];
    float sum_w = w[0], sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        min = std::min(min, x[i]);
        max = std::max(max, x[i]);
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        std::fill_n(L, n, uint8_t(0));
        min_out = -min;
        return 0.0f;
    }
    float iscale = float(nmax) / (max - min);
    float scale = 1.0f / iscale;
    float best = 0.0f;
    for (int i = 0; i < n; ++i) {
        L[i] = uint8_t(std::clamp(nearest(iscale * (x[i] - min)), 0, nmax));
        const float diff = scale * float(L[i]) + min - x[i];
        best += w[i] * (diff * diff);
    }
    uint8_t trial[kQK];
    for (int step = 0; step <= nstep; ++step) {
        iscale = (rmin + rdelta * float(step) + float(nmax)) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            const int l = std::clamp(nearest(iscale * (x[i] - min)), 0, nmax);
            trial[i] = uint8_t(l);
            sum_l += w[i] * float(l);
            sum_l2 += w[i] * float(l) * float(l);
            sum_xl += w[i] * float(l) * x[i];
        }
        const float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D <= 0) continue;
        float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
        float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
        if (this_min > 0) {
            this_min = 0;
            this_scale = sum_xl / sum_l2;
        }
        float err = 0;
        for (int i = 0; i < n; ++i) {
            const float diff = this_scale * float(trial[i]) + this_min - x[i];
            err += w[i] * (diff * diff);
        }
        if (err < best) {
            std::copy_n(trial, n, L);
            best = err;
            scale = this_scale;
            min = this_min;
        }
    }
    min_out = -min;
    return scale;
}

// Symmetric fit of n values to codes -nmax..nmax-1 (stored + nmax), weighted by x^2: the scale
// -nmax/max and 18 neighbours (nmax + 0.1*i), keeping the one of least weighted squared error.
float fit_scale_symmetric(int n, int nmax, const float* x, int8_t* L) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; ++i) {
        if (std::fabs(x[i]) > amax) {
            amax = std::fabs(x[i]);
            max = x[i];
        }
    }
    if (amax < 1e-30f) {
        std::fill_n(L, n, int8_t(0));
        return 0.0f;
    }
    auto sums = [&](float iscale, float& sumlx, float& suml2) {
        sumlx = suml2 = 0;
        for (int i = 0; i < n; ++i) {
            const float l = float(std::clamp(nearest(iscale * x[i]), -nmax, nmax - 1));
            const float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
    };
    auto codes = [&](float iscale) {
        for (int i = 0; i < n; ++i) L[i] = int8_t(nmax + std::clamp(nearest(iscale * x[i]), -nmax, nmax - 1));
    };
    float iscale = -float(nmax) / max, sumlx, suml2;
    sums(iscale, sumlx, suml2);
    codes(iscale);
    float scale = sumlx / suml2, best = scale * sumlx;
    for (int step = -9; step <= 9; ++step) {
        if (step == 0) continue;
        iscale = -(float(nmax) + 0.1f * float(step)) / max;
        sums(iscale, sumlx, suml2);
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            codes(iscale);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

// The 12 bytes of Q4_K/Q5_K scales: 6-bit scale and min of sub-block j (inverse of scale_min_k4).
void pack_scale_min_k4(const uint8_t* ls, const uint8_t* lm, uint8_t* out) {
    for (int j = 0; j < kQK_K / 32; ++j) {
        if (j < 4) {
            out[j] = ls[j];
            out[j + 4] = lm[j];
        } else {
            out[j + 4] = uint8_t((ls[j] & 0x0f) | ((lm[j] & 0x0f) << 4));
            out[j - 4] |= uint8_t((ls[j] >> 4) << 6);
            out[j] |= uint8_t((lm[j] >> 4) << 6);
        }
    }
}

// Q4_K and Q5_K share everything but the code range, the search grid and the bit packing.
template <typename Block>
void quantize_super_min(const float* x, Block& y, uint8_t* L, int nmax, float rmin, float rdelta, int nstep) {
    float scales[kQK_K / 32], mins[kQK_K / 32], w[kQK];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < kQK_K / 32; ++j) {
        const float* xs = x + kQK * j;
        float sum_x2 = 0;
        for (int i = 0; i < kQK; ++i) sum_x2 += xs[i] * xs[i];
        const float av_x = std::sqrt(sum_x2 / float(kQK));
        for (int i = 0; i < kQK; ++i) w[i] = av_x + std::fabs(xs[i]);
        scales[j] = fit_scale_min(kQK, nmax, xs, w, L + kQK * j, mins[j], rmin, rdelta, nstep);
        max_scale = std::max(max_scale, scales[j]);
        max_min = std::max(max_min, mins[j]);
    }
    const float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
    const float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
    uint8_t ls[kQK_K / 32], lm[kQK_K / 32];
    for (int j = 0; j < kQK_K / 32; ++j) {
        // Through uint8_t first, as ggml does (a negative fitted scale wraps, then clamps to 63).
        ls[j] = std::min<uint8_t>(63, uint8_t(nearest(inv_scale * scales[j])));
        lm[j] = std::min<uint8_t>(63, uint8_t(nearest(inv_min * mins[j])));
    }
    std::memset(y.scales, 0, sizeof(y.scales));
    pack_scale_min_k4(ls, lm, y.scales);
    y.d = f32_to_fp16(max_scale / 63.0f);
    y.dmin = f32_to_fp16(max_min / 63.0f);
    for (int j = 0; j < kQK_K / 32; ++j) {  // re-round against the scales as stored
        uint8_t sc, m;
        scale_min_k4(j, y.scales, sc, m);
        const float d = fp16_to_f32(y.d) * float(sc);
        if (d == 0.0f) continue;
        const float dm = fp16_to_f32(y.dmin) * float(m);
        for (int i = 0; i < kQK; ++i) L[kQK * j + i] = uint8_t(std::clamp(nearest((x[kQK * j + i] + dm) / d), 0, nmax));
    }
}

}  // namespace

void quantize_row_q4_K(const float* x, block_q4_K* y, int64_t k) {
    for (int64_t b = 0; b < k / kQK_K; ++b, x += kQK_K) {
        uint8_t L[kQK_K];
        quantize_super_min(x, y[b], L, 15, -1.0f, 0.1f, 20);
        for (int c = 0; c < kQK_K / 64; ++c)  // 64 values per 32 bytes: low nibbles, then high
            for (int l = 0; l < 32; ++l) y[b].qs[32 * c + l] = uint8_t(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
    }
}

void quantize_row_q5_K(const float* x, block_q5_K* y, int64_t k) {
    for (int64_t b = 0; b < k / kQK_K; ++b, x += kQK_K) {
        uint8_t L[kQK_K];
        quantize_super_min(x, y[b], L, 31, -0.5f, 0.1f, 15);
        std::memset(y[b].qh, 0, sizeof(y[b].qh));
        for (int c = 0; c < kQK_K / 64; ++c) {  // as Q4_K, fifth bits in bits 2c and 2c+1 of qh
            for (int l = 0; l < 32; ++l) {
                const uint8_t lo = L[64 * c + l], hi = L[64 * c + 32 + l];
                y[b].qs[32 * c + l] = uint8_t((lo & 0x0f) | ((hi & 0x0f) << 4));
                y[b].qh[l] |= uint8_t(((lo >> 4) << (2 * c)) | ((hi >> 4) << (2 * c + 1)));
            }
        }
    }
}

void quantize_row_q6_K(const float* x, block_q6_K* y, int64_t k) {
    for (int64_t b = 0; b < k / kQK_K; ++b, x += kQK_K) {
        int8_t L[kQK_K];
        float scales[kQK_K / 16];
        float max_scale = 0, max_abs_scale = 0;
        for (int j = 0; j < kQK_K / 16; ++j) {
            scales[j] = fit_scale_symmetric(16, 32, x + 16 * j, L + 16 * j);
            if (std::fabs(scales[j]) > max_abs_scale) {
                max_abs_scale = std::fabs(scales[j]);
                max_scale = scales[j];
            }
        }
        block_q6_K& out = y[b];
        std::memset(&out, 0, sizeof(out));
        if (max_abs_scale < 1e-15f) continue;  // an all-zero block: d = 0
        const float iscale = -128.0f / max_scale;
        out.d = f32_to_fp16(1.0f / iscale);
        for (int j = 0; j < kQK_K / 16; ++j) out.scales[j] = int8_t(std::min(127, nearest(iscale * scales[j])));
        for (int j = 0; j < kQK_K / 16; ++j) {
            const float d = fp16_to_f32(out.d) * float(out.scales[j]);
            if (d == 0.0f) continue;
            for (int i = 0; i < 16; ++i) L[16 * j + i] = int8_t(std::clamp(nearest(x[16 * j + i] / d), -32, 31) + 32);
        }
        for (int h = 0; h < 2; ++h) {  // two halves of 128: low nibbles in ql, top two bits in qh
            const int8_t* q = L + 128 * h;
            for (int l = 0; l < 32; ++l) {
                out.ql[64 * h + l] = uint8_t((q[l] & 0x0f) | ((q[l + 64] & 0x0f) << 4));
                out.ql[64 * h + l + 32] = uint8_t((q[l + 32] & 0x0f) | ((q[l + 96] & 0x0f) << 4));
                out.qh[32 * h + l] = uint8_t((q[l] >> 4) | ((q[l + 32] >> 4) << 2) | ((q[l + 64] >> 4) << 4) |
                                             ((q[l + 96] >> 4) << 6));
            }
        }
    }
}

}  // namespace corelm::ref
