// Sampling the next token of B sequences from their logits [B, vocab] in one call, each row
// with its own parameters, penalty window, logit bias and random state. The order is
// llama.cpp's default chain (and corelm/engine/sampling.py's):
//
//   logit bias -> repeat / frequency / presence penalties over the row's recent tokens
//   -> greedy (temperature <= 0: argmax, the first of equal maxima)
//   -> top-k -> top-p -> min-p, on the untempered distribution
//   -> temperature on the kept set, and one draw from the row's random state
//
// Rows are independent: each is computed by one thread, so a row's token depends only on its
// own inputs and state (not on the batch it came in, nor on the thread count).
#pragma once
#include <cstdint>

namespace corelm::sampling {

struct RowParams {
    float temperature;        // <= 0: greedy
    int32_t top_k;            // <= 0 or >= vocab: off
    float top_p;              // >= 1: off
    float min_p;              // <= 0: off
    float repeat_penalty;     // 1: off; divides positive logits, multiplies negative ones
    float presence_penalty;   // subtracted once from each recent token's logit
    float frequency_penalty;  // subtracted once per occurrence
};

// Row r's inputs: recent[recent_offsets[r] .. recent_offsets[r+1]) are the tokens its penalties
// look at; bias_ids / bias_values[bias_offsets[r] .. bias_offsets[r+1]) its logit bias. rng[r]
// is its random state (splitmix64), advanced by one draw when the row samples. Every id must
// be in [0, vocab) (bindings.cpp checks). Writes one token id per row to out[B].
struct Batch {
    const float* logits;  // [B, vocab]
    int64_t rows, vocab;
    const RowParams* params;  // [B]
    const int32_t* recent;
    const int64_t* recent_offsets;  // [B + 1]
    const int32_t* bias_ids;
    const float* bias_values;
    const int64_t* bias_offsets;  // [B + 1]
    uint64_t* rng;                // [B], updated
    int32_t* out;                 // [B]
};

void sample(const Batch& b);

}  // namespace corelm::sampling
