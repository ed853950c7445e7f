#include "graph.h"

#include <algorithm>
#include <cstring>

#include "collectives.h"

namespace corelm {

Graph::Graph(std::vector<int64_t> widths, std::vector<GraphOp> ops, int64_t n_layer)
    : widths_(std::move(widths)), ops_(std::move(ops)), n_layer_(n_layer), offsets_(widths_.size()) {}

void Graph::reserve(int64_t rows) {
    if (rows <= reserved_) return;
    reserved_ = std::max(rows, reserved_ * 2);  // grows geometrically: few reallocations while prefill sizes vary
    size_t at = 0;
    for (size_t b = 0; b < widths_.size(); ++b) {
        offsets_[b] = at;
        at += size_t(reserved_ * widths_[b] + 15) / 16 * 16;  // 64-byte aligned rows of each buffer
    }
    arena_ = std::make_shared<std::vector<float>>(at, 0.0f);
}

namespace {

// Keys and values of `rows` rows ([rows, kv_heads, head_dim] each) into a cache at positions pos..
void store_kv(const Segment& s, int64_t layer, int64_t kv_heads, int64_t d, const float* k, const float* v,
              int64_t rows) {
    const int64_t head_stride = s.capacity * d, layer_stride = 2 * kv_heads * head_stride;
    for (int kv = 0; kv < 2; ++kv) {
        const float* src = kv == 0 ? k : v;
        const int64_t base = layer * layer_stride + kv * kv_heads * head_stride;
        for (int64_t r = 0; r < rows; ++r)
            for (int64_t h = 0; h < kv_heads; ++h) {
                const float* from = src + (r * kv_heads + h) * d;
                const int64_t to = base + h * head_stride + (s.pos + r) * d;
                if (s.f16) {
                    uint16_t* dst = static_cast<uint16_t*>(s.cache) + to;
                    for (int64_t i = 0; i < d; ++i) dst[i] = f32_to_fp16(from[i]);
                } else {
                    std::memcpy(static_cast<float*>(s.cache) + to, from, size_t(d) * sizeof(float));
                }
            }
    }
}

}  // namespace

void Graph::attention(const GraphOp& op, int64_t rows, const std::vector<Segment>& segments) {
    const float* q = buf(op.in);
    const float* k = buf(op.in2);
    const float* v = buf(op.in3);
    float* out = buf(op.out);
    const int64_t hq = op.heads, hkv = op.kv_heads, d = op.head_dim;
    if (!segments.front().cache) {  // encoder: each sequence attends to its own rows of the step
        AttentionArgs a{q, k, v, false, d, hkv * d, rows, hq, hkv, d, 0, op.causal, op.scale, out};
        a.seq_offsets = seq_offsets_.data();
        a.n_seqs = int64_t(segments.size());
        ops::attention(a);
        return;
    }
    thread_local std::vector<AttentionArgs> problems;
    problems.clear();
    int64_t r0 = 0;
    for (const Segment& s : segments) {
        store_kv(s, op.layer, hkv, d, k + r0 * hkv * d, v + r0 * hkv * d, s.length);
        const size_t elem = s.f16 ? 2 : 4;
        const auto* layer_k = static_cast<const char*>(s.cache) + size_t(op.layer * 2 * hkv * s.capacity * d) * elem;
        const auto* layer_v = layer_k + size_t(hkv * s.capacity * d) * elem;
        AttentionArgs a{q + r0 * hq * d, layer_k, layer_v, s.f16, s.capacity * d, d, s.length, hq, hkv, d, s.pos,
                        op.causal, op.scale, out + r0 * hq * d};
        a.window = op.window;
        problems.push_back(a);
        r0 += s.length;
    }
    ops::attention_batch(problems.data(), int64_t(problems.size()));
}

const float* Graph::run(const int32_t* tokens, int64_t n_tokens, const std::vector<Segment>& segments, bool last_rows,
                        size_t until, int64_t* rows_out, const OpHook& hook) {
    reserve(n_tokens);
    positions_.resize(size_t(n_tokens));
    seq_offsets_.assign(1, 0);
    row_ids_.clear();
    for (const Segment& s : segments) {
        const int32_t r0 = seq_offsets_.back();
        for (int64_t i = 0; i < s.length; ++i) positions_[size_t(r0 + i)] = int32_t(s.pos + i);
        seq_offsets_.push_back(int32_t(r0 + s.length));
        if (last_rows) row_ids_.push_back(int32_t(r0 + s.length - 1));
    }
    if (!last_rows)
        for (int32_t r = 0; r < int32_t(n_tokens); ++r) row_ids_.push_back(r);
    thread_local std::vector<int32_t> ids;
    int64_t rows = n_tokens;  // rows of the current phase: all, then the selected ones
    for (size_t i = 0; i < until; ++i) {
        const GraphOp& op = ops_[i];
        const auto t0 = std::chrono::steady_clock::now();
        const int64_t w_out = widths_[size_t(op.out)];
        float* out = buf(op.out);
        const float* in = op.in >= 0 ? buf(op.in) : nullptr;
        const int64_t w_in = op.in >= 0 ? widths_[size_t(op.in)] : 0;
        switch (op.kind) {
            case OpKind::Embed: {
                const int32_t* src = tokens;
                if (op.from_positions) {
                    ids.resize(size_t(rows));
                    for (int64_t r = 0; r < rows; ++r) ids[size_t(r)] = positions_[size_t(r)] + int32_t(op.id_offset);
                    src = ids.data();
                }
                if (op.id_count) {  // this rank's rows of a table split by ids: the others' ids give zeros
                    ids.resize(size_t(rows));
                    for (int64_t r = 0; r < rows; ++r) {
                        const int64_t id = int64_t(tokens[r]) - op.id_start;
                        ids[size_t(r)] = id >= 0 && id < op.id_count ? int32_t(id) : 0;
                    }
                    ops::get_rows(op.w, op.w_type, op.w_n, op.w_k, ids.data(), rows, out, op.w_stride);
                    for (int64_t r = 0; r < rows; ++r) {
                        const int64_t id = int64_t(tokens[r]) - op.id_start;
                        if (id < 0 || id >= op.id_count) std::memset(out + r * w_out, 0, size_t(w_out) * sizeof(float));
                    }
                    break;
                }
                if (!op.accumulate) {
                    ops::get_rows(op.w, op.w_type, op.w_n, op.w_k, src, rows, out, op.w_stride);
                    break;
                }
                thread_local std::vector<float> tmp;
                tmp.resize(size_t(rows * w_out));
                ops::get_rows(op.w, op.w_type, op.w_n, op.w_k, src, rows, tmp.data(), op.w_stride);
                ops::binary(ops::Binary::add, out, w_out, tmp.data(), w_out, out, w_out, rows, w_out);
                break;
            }
            case OpKind::AddVector:
                ops::binary(ops::Binary::add, in, w_in, op.w_f32, 0, out, w_out, rows, w_out);
                break;
            case OpKind::Add:
                ops::binary(ops::Binary::add, in, w_in, buf(op.in2), widths_[size_t(op.in2)], out, w_out, rows, w_out);
                break;
            case OpKind::RmsNorm: {
                const int64_t g = op.group ? op.group : w_out;
                ops::rmsnorm(in, op.w_f32, out, rows * (w_out / g), g, op.eps);
                break;
            }
            case OpKind::LayerNorm:
                ops::layernorm(in, op.w_f32, op.bias, out, rows, w_out, op.eps);
                break;
            case OpKind::Matmul:
                ops::matmul(in, rows, w_in, op.w, op.w_type, op.w_n, out, op.bias,
                            op.residual >= 0 ? buf(op.residual) : nullptr, op.act, op.w_stride);
                break;
            case OpKind::Rope:
                ops::rope(out, positions_.data(), op.inv_freq, rows, op.heads, op.head_dim, op.n_rot, op.neox);
                break;
            case OpKind::Attention:
                attention(op, rows, segments);
                break;
            case OpKind::Glu:
                ops::binary(ops::Binary::swiglu, in + op.col0, w_in, buf(op.in2) + op.col1, widths_[size_t(op.in2)], out,
                            w_out, rows, w_out);
                break;
            case OpKind::Copy:
                for (int64_t r = 0; r < rows; ++r)
                    std::memcpy(out + r * w_out, in + r * w_in + op.col0, size_t(w_out) * sizeof(float));
                break;
            case OpKind::Select:
                for (size_t j = 0; j < row_ids_.size(); ++j)
                    std::memmove(out + int64_t(j) * w_out, in + int64_t(row_ids_[j]) * w_in, size_t(w_out) * sizeof(float));
                rows = int64_t(row_ids_.size());
                break;
            case OpKind::AllReduce:
                collectives::all_reduce(out, rows * w_out, op.name.c_str());
                break;
            case OpKind::Gather:
                collectives::gather_columns(in, rows, op.parts, out, op.name.c_str());
                break;
        }
        if (hook) {
            const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            // A select op's input had the step's rows; every other op's input has the rows it ran on.
            const int64_t in_rows = op.kind == OpKind::Select ? n_tokens : rows;
            hook(i, OpView{in, in ? in_rows : 0, w_in}, OpView{out, rows, w_out}, seconds);
        }
    }
    *rows_out = rows;
    return buf(ops_[until - 1].out);
}

}  // namespace corelm
