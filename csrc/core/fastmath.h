// exp and the activations built on it, written as plain float and integer arithmetic (no libm
// call) so that loops over them vectorise on every path: std::exp / std::tanh are scalar calls,
// ~10-20 ns per element, which made GELU 40% of GPT-2's prefill. Accuracy: within 2 ulp of
// std::exp over the whole float range (tests/test_kernels.py checks it against numpy).
#pragma once
#include <cstdint>
#include <cmath>
#include <cstring>

namespace corelm {

// e^x = 2^n * e^r with n = round(x / ln 2), |r| <= ln(2)/2, e^r by a degree-6 polynomial
// (Cephes' expf coefficients); 2^n built in the exponent bits.
inline float exp_fast(float x) {
    constexpr float kLog2e = 1.44269504088896341f, kRound = 12582912.0f;  // 1.5 * 2^23
    constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
    constexpr float kMax = 88.3762626647949f, kMin = -87.3365447504f;  // 2^n stays a normal float
    const float xc = x > kMax ? kMax : (x < kMin ? kMin : x);
    const float t = xc * kLog2e + kRound;  // round to nearest: n sits in t's low mantissa bits
    const float n = t - kRound;
    const float r = (xc - n * kLn2Hi) - n * kLn2Lo;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t ti, bits;
    std::memcpy(&ti, &t, 4);
    bits = (ti - 0x4b400000 + 127) << 23;  // n + 127 in the exponent field
    float scale;
    std::memcpy(&scale, &bits, 4);
    const float y = p * scale;
    return x > kMax ? INFINITY : (x < kMin ? 0.0f : y);  // NaN compares false: stays NaN
}

inline float silu_fast(float v) { return v / (1.0f + exp_fast(-v)); }

// 0.5 v (1 + tanh(u)) = v * sigmoid(2u), u = sqrt(2/pi) (v + 0.044715 v^3)
inline float gelu_tanh_fast(float v) {
    constexpr float kTwoSqrt2OverPi = 1.5957691216057308f;
    return v / (1.0f + exp_fast(-kTwoSqrt2OverPi * (v + 0.044715f * v * v * v)));
}

// 0.5 v (1 + erf(v / sqrt 2)). 1 + erf(z) is 2 - erfc(z) for z >= 0 and erfc(-z) below, so the
// negative side never subtracts nearly equal numbers; erfc(|z|) = poly(t) e^(-z^2), t = 1/(1 + p|z|)
// (Abramowitz & Stegun 7.1.26: absolute error below 1.5e-7).
inline float gelu_erf_fast(float v) {
    constexpr float kInvSqrt2 = 0.7071067811865476f, kP = 0.3275911f;
    const float z = v * kInvSqrt2, az = std::fabs(z);
    const float t = 1.0f / (1.0f + kP * az);
    const float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
    const float erfc_az = poly * exp_fast(-az * az);
    return 0.5f * v * (z >= 0.0f ? 2.0f - erfc_az : erfc_az);
}

}  // namespace corelm
