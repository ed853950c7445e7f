// The graph executor: a model's whole forward step as one native call.
//
// An architecture declares its forward once, in Python, as a list of named ops over named
// float32 buffers (corelm/models/graph.py); bindings.cpp checks that list and turns it into a
// Graph, whose `run` executes every op of a step in order, each through the same ops:: drivers
// (and so the same kernels, threads and results) as a single-op call. Buffers are [rows, width]
// arrays in one arena sized for the largest step seen (grown, never shrunk: steady decoding
// allocates nothing).
//
// A step is a batch of segments: `length` tokens of one sequence at positions pos.. (prefill
// chunks and decode tokens mixed). Ops before the `select` op run on all rows of the step; the
// select op copies either every row or each segment's last row into its output, and the ops
// after it (final norm, logits) run on those rows only.
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "formats.h"
#include "ops.h"

namespace corelm {

enum class OpKind {
    Embed,       // out (= or +=) rows of W at ids: the step's tokens, or positions + id_offset
    AddVector,   // out = in + vec (one row broadcast over all rows)
    Add,         // out = in + in2 (same widths)
    RmsNorm,     // out = rmsnorm(in) * w, each `group` columns normalised on their own
    LayerNorm,   // out = layernorm(in) * w + b, over whole rows
    Matmul,      // out = act(in . W^T + bias) (+ residual); act: gelu (erf / tanh), silu, relu
    Rope,        // in place on out [rows, heads, head_dim]
    Attention,   // out = attention(q = in, k = in2, v = in3), the step's k/v stored in each segment's cache first
    Glu,         // out = silu(in[:, col0 : col0+n]) * in2[:, col1 : col1+n], n = out's width
    Copy,        // out = in[:, col0 : col0 + out width]
    Select,      // out = every row, or the last row of each segment, of in
    // Tensor parallelism (collectives.h): each rank runs the same ops on its slices of the weights
    AllReduce,   // out = the sum of every rank's out (in place)
    Gather,      // rank 0: out = every rank's in side by side (rank r's in is parts[r] wide)
};

struct GraphOp {
    OpKind kind;
    std::string name;  // e.g. "blk.3.attn_q": the op's role and layer (for hooks)
    int layer = -1;
    int out = -1, in = -1, in2 = -1, in3 = -1, residual = -1;  // buffer ids
    int64_t col0 = 0, col1 = 0;
    // Matmul / Embed: the weight; RmsNorm / LayerNorm: w (and b); AddVector: vec in `w_f32`
    const uint8_t* w = nullptr;
    WeightType w_type = WeightType::F32;
    int64_t w_n = 0, w_k = 0;
    size_t w_stride = 0;         // bytes per row (0: row_bytes; sparse types have their own)
    const float* w_f32 = nullptr;
    const float* bias = nullptr;
    ops::Activation act = ops::Activation::None;
    bool accumulate = false;     // Embed: add into out instead of overwriting it
    bool from_positions = false; // Embed: ids are the rows' positions (+ id_offset)
    int64_t id_offset = 0;
    int64_t id_start = 0, id_count = 0;  // Embed: id_count > 0: the table holds ids id_start.. only, others give zero rows
    std::vector<int64_t> parts;  // Gather: every rank's width
    float eps = 0.0f;
    int64_t group = 0;           // RmsNorm: columns per normalised group (0: the whole row)
    const float* inv_freq = nullptr;  // Rope
    int64_t n_rot = 0, heads = 0, head_dim = 0;
    bool neox = true;
    int64_t kv_heads = 0;        // Attention
    bool causal = true;
    int64_t window = 0;          // Attention: a row sees at most this many keys (0: all)
    float scale = 1.0f;
};

// One sequence's share of a step. cache: its KV cache [n_layer, 2, kv_heads, capacity, head_dim]
// (fp32 or fp16), or null for an encoder's sequence (it attends to its own rows of the step only).
struct Segment {
    void* cache = nullptr;
    bool f16 = false;
    int64_t capacity = 0;
    int64_t pos = 0, length = 0;
};

// Called after each op when set: the op's index, its first input and its output (rows x
// width, valid until the next op), and the op's wall time.
struct OpView {
    const float* data;
    int64_t rows, width;
};
using OpHook = std::function<void(size_t op, OpView in, OpView out, double seconds)>;

class Graph {
public:
    // widths[b]: floats per row of buffer b. ops are checked by the caller (bindings.cpp).
    Graph(std::vector<int64_t> widths, std::vector<GraphOp> ops, int64_t n_layer);

    // Runs ops [0, until) of a step: tokens[n_tokens] are the segments' tokens one after another.
    // last_rows: the select op keeps each segment's last row (else every row). Returns the
    // output buffer of op until-1; rows_out is set to its rows.
    const float* run(const int32_t* tokens, int64_t n_tokens, const std::vector<Segment>& segments, bool last_rows,
                     size_t until, int64_t* rows_out, const OpHook& hook = nullptr);

    // The buffers' memory: an output or hook view keeps it alive (a later, larger step moves the
    // buffers to a new arena rather than resizing this one under a view).
    std::shared_ptr<std::vector<float>> arena() const { return arena_; }
    const std::vector<GraphOp>& ops() const { return ops_; }
    const std::vector<int64_t>& widths() const { return widths_; }
    int64_t n_layer() const { return n_layer_; }

private:
    void reserve(int64_t rows);
    float* buf(int id) { return arena_->data() + offsets_[size_t(id)]; }
    void attention(const GraphOp& op, int64_t rows, const std::vector<Segment>& segments);

    std::vector<int64_t> widths_;
    std::vector<GraphOp> ops_;
    int64_t n_layer_;
    std::shared_ptr<std::vector<float>> arena_ = std::make_shared<std::vector<float>>();
    std::vector<size_t> offsets_;  // of each buffer in the arena, for reserved_ rows
    int64_t reserved_ = 0;
    std::vector<int32_t> positions_, row_ids_, seq_offsets_;
};

}  // namespace corelm
