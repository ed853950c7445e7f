// The only file that knows about Python. Every entry point validates its arrays (dtype,
// shape, contiguity, index ranges) and raises a Python exception naming the problem before
// any pointer reaches a kernel; the GIL is released while native code runs.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "core/cpu_features.h"
#include "kernels/amx/tiles.h"
#include "core/dispatch.h"
#include "core/formats.h"
#include "core/collectives.h"
#include "core/graph.h"
#include "core/ops.h"
#include "core/probe.h"
#include "core/sampling.h"
#include "core/threadpool.h"

namespace py = pybind11;
using namespace corelm;

namespace {

using Array = py::array;

[[noreturn]] void fail(const std::string& msg) { throw py::value_error(msg); }

std::string shape_str(const Array& a) {
    std::string s = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
    return s + (a.ndim() == 1 ? ",)" : ")");
}

void check_contiguous(const Array& a, const char* name) {
    if (!(a.flags() & py::array::c_style)) fail(std::string(name) + " must be C-contiguous (use np.ascontiguousarray)");
}

template <typename T>
void check_dtype(const Array& a, const char* name, const char* dtype_name) {
    if (!a.dtype().is(py::dtype::of<T>()))
        throw py::type_error(std::string(name) + " must have dtype " + dtype_name + ", got " +
                             std::string(py::str(a.dtype())));
}

// A float32, C-contiguous array of `ndim` dimensions (or any ndim >= 1 when ndim == 0).
const float* f32_in(const Array& a, const char* name, int ndim = 0) {
    check_dtype<float>(a, name, "float32");
    check_contiguous(a, name);
    if (ndim && a.ndim() != ndim)
        fail(std::string(name) + " must be " + std::to_string(ndim) + "-D, got shape " + shape_str(a));
    if (!ndim && a.ndim() < 1) fail(std::string(name) + " must have at least one dimension");
    return static_cast<const float*>(a.data());
}

// A 1-D contiguous array of dtype T with n elements (n < 0: any number).
template <typename T>
const T* vec_in(const Array& a, const char* name, int64_t n, const char* dtype_name) {
    check_dtype<T>(a, name, dtype_name);
    check_contiguous(a, name);
    if (a.ndim() != 1 || (n >= 0 && a.shape(0) != n))
        fail(std::string(name) + " must be 1-D" + (n >= 0 ? " with " + std::to_string(n) + " elements" : "") +
             ", got shape " + shape_str(a));
    return static_cast<const T*>(a.data());
}

// `out` checked to be a writeable, C-contiguous array of T.
template <typename T>
Array writeable_out(const py::object& out, const char* dtype_name) {
    Array o = py::cast<Array>(out);
    check_dtype<T>(o, "out", dtype_name);
    check_contiguous(o, "out");
    if (!o.writeable()) fail("out must be writeable");
    return o;
}

// An output array: `out` when given (writeable_out, and of this shape), else a new one of `shape`.
template <typename T>
Array array_out(const py::object& out, const std::vector<py::ssize_t>& shape, const char* dtype_name) {
    if (out.is_none()) return py::array_t<T>(shape);
    Array o = writeable_out<T>(out, dtype_name);
    bool same = o.ndim() == py::ssize_t(shape.size());
    for (size_t i = 0; same && i < shape.size(); ++i) same = o.shape(py::ssize_t(i)) == shape[i];
    if (!same) fail("out has shape " + shape_str(o) + ", expected " + shape_str(py::array_t<T>(shape)));
    return o;
}

Array f32_out(const py::object& out, const std::vector<py::ssize_t>& shape) { return array_out<float>(out, shape, "float32"); }

// An output must not share memory with an input it is written from.
void check_apart(const Array& out, const Array& in, const char* in_name) {
    if (py::module_::import("numpy").attr("may_share_memory")(out, in).cast<bool>())
        fail(std::string("out must not overlap ") + in_name);
}

WeightType weight_type(int t) {
    if (!is_known_type(t)) fail("unsupported weight type id " + std::to_string(t));
    return WeightType(t);
}

// Raw weight bytes for n rows of k elements of type t, and their stride (bytes per row): row_bytes(t, k),
// or for a sparse type the tensor's own, every group's stored codes checked to fit in it.
struct WeightBytes {
    const uint8_t* data;
    size_t stride;
};

WeightBytes weight_bytes(const Array& w, WeightType t, int64_t n, int64_t k) {
    check_contiguous(w, "weight");
    if (n <= 0 || k <= 0) fail("weight dimensions must be positive, got n=" + std::to_string(n) + ", k=" + std::to_string(k));
    const size_t rb = row_bytes(t, k);
    if (k % block_size(t) || (rb == 0 && !has_own_stride(t)))
        fail(std::string("k=") + std::to_string(k) + " is not a multiple of " + type_name(t) + "'s block size " +
             std::to_string(block_size(t)));
    const auto* data = static_cast<const uint8_t*>(w.data());
    auto what = [&] { return std::string(type_name(t)) + " weight of " + std::to_string(n) + " x " + std::to_string(k); };
    if (is_sparse(t) && n % kPackRows) fail(what() + ": a sparse type needs a multiple of 16 rows");
    if (!has_own_stride(t)) {
        if (size_t(w.nbytes()) != rb * size_t(n))
            fail(what() + " needs " + std::to_string(rb * size_t(n)) + " bytes, got " + std::to_string(w.nbytes()));
        return {data, rb};
    }
    if (size_t(w.nbytes()) % size_t(n)) fail(what() + ": " + std::to_string(w.nbytes()) + " bytes is not a whole stride per row");
    const size_t stride = size_t(w.nbytes()) / size_t(n);
    if (stride < min_stride(t, k))
        fail(what() + ": " + std::to_string(stride) + " bytes per row cannot hold its headers (" +
             std::to_string(min_stride(t, k)) + ")");
    return {data, stride};  // the kernels keep their reads inside each group; sparse_check names bad groups
}

// Leading dimensions flattened into rows; the last dimension is the row length.
int64_t rows_of(const Array& a) {
    return a.ndim() && a.shape(a.ndim() - 1) ? int64_t(a.size() / a.shape(a.ndim() - 1)) : 0;
}

std::vector<py::ssize_t> shape_of(const Array& a) { return {a.shape(), a.shape() + a.ndim()}; }

// Keys and values of an attention call: same dtype (float32 or float16), same shape, contiguous.
// Returns whether they are float16.
bool kv_is_f16(const Array& k, const Array& v) {
    const bool f16 = k.dtype().is(py::dtype::of<uint16_t>()) || k.dtype().is(py::dtype("float16"));
    if (!f16) check_dtype<float>(k, "k", "float32 or float16");
    if (!k.dtype().is(v.dtype())) throw py::type_error("keys and values must have the same dtype");
    check_contiguous(k, "k");
    check_contiguous(v, "v");
    if (shape_of(k) != shape_of(v)) fail("keys " + shape_str(k) + " and values " + shape_str(v) + " differ in shape");
    return f16;
}

void check_heads(int64_t hq, int64_t d, int64_t hkv, int64_t kv_d, const char* what) {
    if (kv_d != d) fail("head_dim of q (" + std::to_string(d) + ") and " + what + " (" + std::to_string(kv_d) + ") differ");
    if (d > kMaxHeadDim) fail("head_dim " + std::to_string(d) + " exceeds " + std::to_string(kMaxHeadDim));
    if (hkv < 1 || hq % hkv) fail("query heads (" + std::to_string(hq) + ") must be a multiple of kv heads (" + std::to_string(hkv) + ")");
}

// ---- one AMX tile instruction, for the tests (emulator vs hand-computed tiles, hardware vs emulator) ----

py::array tile_op(const std::string& insn, py::array c, py::array a, py::array b, bool hardware) {
    static const std::map<std::string, corelm::amx::Insn> kInsns = {
        {"tdpbssd", corelm::amx::Insn::DPBSSD}, {"tdpbsud", corelm::amx::Insn::DPBSUD}, {"tdpbusd", corelm::amx::Insn::DPBUSD},
        {"tdpbuud", corelm::amx::Insn::DPBUUD}, {"tdpbf16ps", corelm::amx::Insn::DPBF16PS}};
    const auto it = kInsns.find(insn);
    if (it == kInsns.end()) fail("unknown tile instruction '" + insn + "'");
    // Each operand: a 2-D array read as rows of bytes (its row stride is the tile load's stride).
    auto operand = [](const py::array& x, const char* name) {
        if (x.ndim() != 2 || x.strides(1) != x.itemsize())
            fail(std::string(name) + " must be a 2-D array with contiguous rows");
        return corelm::amx::TileOperand{static_cast<const uint8_t*>(x.data()), size_t(x.strides(0)), int(x.shape(0)),
                                int(x.shape(1) * x.itemsize())};
    };
    corelm::amx::TileOp op{it->second, operand(c, "c"), operand(a, "a"), operand(b, "b"), nullptr};
    py::array out(c.dtype(), {c.shape(0), c.shape(1)});
    if (out.strides(0) != c.strides(0)) fail("c must be C-contiguous");
    op.out = static_cast<uint8_t*>(out.mutable_data());
    if (!hardware) {
        corelm::amx_emu::tile_op(op);
        return out;
    }
#ifdef CORELM_BUILD_AMX
    const auto paths = supported_isas();
    if (std::find(paths.begin(), paths.end(), "amx") == paths.end()) fail("this CPU (or Linux) does not run AMX");
    corelm::amx::tile_op(op);
    return out;
#else
    fail("this build has no AMX instructions");
#endif
}

py::dict decode_tuning_dict() {
    return py::dict(py::arg("prefetch_bytes") = g_decode_tuning.prefetch_bytes,
                    py::arg("prefetch_q8_0") = g_decode_tuning.prefetch_q8_0,
                    py::arg("sparse_groups") = g_decode_tuning.sparse_groups);
}

py::dict info() {
    const CpuFeatures& f = cpu_features();
    py::dict d;
    d["cpu"] = f.model;
    py::dict flags;
    for (const auto& [name, on] : f.flags()) flags[name] = on;
    d["features"] = flags;
    d["physical_cores"] = f.physical_cores;
    d["threads"] = num_threads();
    d["isa"] = active_isa();
    d["supported_isas"] = supported_isas();
    py::dict paths;
    for (const auto& [kernel, path] : kernel_paths()) paths[kernel.c_str()] = path;
    d["kernels"] = paths;
    d["tile_min_rows"] = corelm::amx::kMinRows;
    d["decode_tuning"] = decode_tuning_dict();
    return d;
}


// ---- the graph executor ----

// A Graph with the Python objects its ops point into (weights, norms, rotary frequencies), so
// they live as long as it does, and the lock that serialises runs (they share one arena).
struct PyGraph {
    std::unique_ptr<Graph> graph;
    py::list keep;
    int64_t vocab = 0;            // rows of the token embedding: the valid token ids
    int64_t max_position = -1;    // rows of a position embedding (-1: none): positions must stay below
    int64_t kv_heads = 0, head_dim = 0;
    bool causal = true, has_attention = false;
    bool parallel = false;        // has collective ops: runs only with MPI installed (set_collectives)
    std::mutex lock;
};

// A matmul epilogue's activation by name ("": none); `where` starts the error message.
ops::Activation activation_of(const std::string& name, const std::string& where) {
    static const std::map<std::string, ops::Activation> kinds = {
        {"", ops::Activation::None},          {"gelu_erf", ops::Activation::GeluErf}, {"gelu_tanh", ops::Activation::GeluTanh},
        {"silu", ops::Activation::Silu},      {"relu", ops::Activation::Relu},
    };
    const auto it = kinds.find(name);
    if (it == kinds.end()) fail(where + "unknown activation '" + name + "' (known: gelu_erf, gelu_tanh, silu, relu)");
    return it->second;
}

const std::map<std::string, OpKind> kOpKinds = {
    {"embed", OpKind::Embed},     {"add_vector", OpKind::AddVector}, {"add", OpKind::Add}, {"rmsnorm", OpKind::RmsNorm},
    {"layernorm", OpKind::LayerNorm}, {"matmul", OpKind::Matmul},  {"rope", OpKind::Rope},
    {"attention", OpKind::Attention}, {"glu", OpKind::Glu},         {"copy", OpKind::Copy},
    {"select", OpKind::Select},       {"all_reduce", OpKind::AllReduce}, {"gather", OpKind::Gather},
};

// One op from its Python description (a dict; see corelm/models/graph.py), checked against the
// buffers' widths: every pointer a kernel will get stays inside the arrays it was given.
GraphOp parse_op(const py::dict& d, const std::vector<int64_t>& widths, PyGraph& pg, int64_t n_layer) {
    GraphOp op;
    const auto kind_name = py::cast<std::string>(d["kind"]);
    const auto it = kOpKinds.find(kind_name);
    if (it == kOpKinds.end()) fail("unknown op kind '" + kind_name + "'");
    op.kind = it->second;
    op.name = py::cast<std::string>(d["name"]);
    const std::string where = "op " + op.name + " (" + kind_name + "): ";
    auto get_int = [&](const char* key, int64_t dflt) { return d.contains(key) ? py::cast<int64_t>(d[key]) : dflt; };
    auto buffer = [&](const char* key) {
        const int64_t b = get_int(key, -1);
        if (b < -1 || b >= int64_t(widths.size())) fail(where + key + " names no buffer");
        return int(b);
    };
    auto width = [&](int b) { return b >= 0 ? widths[size_t(b)] : int64_t(0); };
    auto f32_vector = [&](const char* key, int64_t n) -> const float* {
        if (!d.contains(key) || d[key].is_none()) return nullptr;
        Array a = py::cast<Array>(d[key]);
        const float* p = f32_in(a, key, 1);
        if (a.shape(0) != n) fail(where + key + " has " + std::to_string(a.shape(0)) + " elements, expected " + std::to_string(n));
        pg.keep.append(a);
        return p;
    };
    auto weight = [&]() {
        if (!d.contains("weight")) fail(where + "needs a weight");
        const py::tuple w = py::cast<py::tuple>(d["weight"]);  // (bytes, type, n, k)
        const Array data = py::cast<Array>(w[0]);
        op.w_type = weight_type(py::cast<int>(w[1]));
        op.w_n = py::cast<int64_t>(w[2]);
        op.w_k = py::cast<int64_t>(w[3]);
        const WeightBytes wb = weight_bytes(data, op.w_type, op.w_n, op.w_k);
        op.w = wb.data;
        op.w_stride = wb.stride;
        pg.keep.append(data);
    };
    op.layer = int(get_int("layer", -1));
    op.out = buffer("out");
    op.in = buffer("in");
    op.in2 = buffer("in2");
    op.in3 = buffer("in3");
    op.residual = buffer("residual");
    op.col0 = get_int("col0", 0);
    op.col1 = get_int("col1", 0);
    if (op.out < 0) fail(where + "needs an output buffer");
    const int64_t w_out = width(op.out), w_in = width(op.in);
    auto need_in = [&](bool same_width) {
        if (op.in < 0) fail(where + "needs an input buffer");
        if (same_width && w_in != w_out)
            fail(where + "input width " + std::to_string(w_in) + " differs from output width " + std::to_string(w_out));
    };
    switch (op.kind) {
        case OpKind::Embed:
            weight();
            if (op.w_k != w_out) fail(where + "the table's rows have " + std::to_string(op.w_k) + " columns, the output " + std::to_string(w_out));
            op.accumulate = py::cast<bool>(d.attr("get")("accumulate", false));
            op.from_positions = py::cast<bool>(d.attr("get")("from_positions", false));
            op.id_offset = get_int("id_offset", 0);
            if (op.id_offset < 0) fail(where + "id_offset must be >= 0");
            op.id_start = get_int("id_start", 0);
            op.id_count = get_int("id_count", 0);
            if (op.id_count) {  // a slice of the table (tensor parallelism): ids up to `vocab` are valid
                if (op.from_positions || op.accumulate || op.id_start < 0 || op.id_count != op.w_n)
                    fail(where + "a table slice (id_count) holds id_count rows of token ids and overwrites its output");
                pg.vocab = get_int("vocab", 0);
                if (pg.vocab < op.id_start + op.id_count) fail(where + "vocab must cover the slice");
                pg.parallel = true;
            } else if (op.from_positions) {
                pg.max_position = op.w_n - op.id_offset;
            } else {
                pg.vocab = op.w_n;
            }
            break;
        case OpKind::AddVector:
            need_in(true);
            op.w_f32 = f32_vector("vector", w_out);
            if (!op.w_f32) fail(where + "needs a vector");
            break;
        case OpKind::Add:
            need_in(true);
            if (op.in2 < 0 || width(op.in2) != w_out) fail(where + "needs a second input of the output's width");
            break;
        case OpKind::RmsNorm:
        case OpKind::LayerNorm:
            need_in(true);
            op.eps = py::cast<float>(d["eps"]);
            op.group = get_int("group", 0);
            if (op.group < 0 || (op.group && w_out % op.group)) fail(where + "group must divide the row width");
            if (op.group && op.kind == OpKind::LayerNorm) fail(where + "layernorm normalises whole rows");
            op.w_f32 = f32_vector("norm", op.group ? op.group : w_out);
            op.bias = f32_vector("bias", w_out);
            if (!op.w_f32 || (op.kind == OpKind::LayerNorm && !op.bias)) fail(where + "needs its weight (and a bias for layernorm)");
            break;
        case OpKind::Matmul: {
            need_in(false);
            weight();
            if (op.w_k != w_in || op.w_n != w_out)
                fail(where + "a " + std::to_string(op.w_n) + "x" + std::to_string(op.w_k) + " matrix maps " +
                     std::to_string(w_in) + " columns to " + std::to_string(w_out));
            op.bias = f32_vector("bias", w_out);
            if (op.residual >= 0 && width(op.residual) != w_out) fail(where + "the residual's width differs from the output's");
            op.act = activation_of(py::cast<std::string>(d.attr("get")("activation", "")), where);
            break;
        }
        case OpKind::Rope: {
            op.heads = get_int("heads", 0);
            op.head_dim = get_int("head_dim", 0);
            op.neox = py::cast<bool>(d["neox"]);
            Array f = py::cast<Array>(d["inv_freq"]);
            op.inv_freq = f32_in(f, "inv_freq", 1);
            pg.keep.append(f);
            op.n_rot = 2 * f.shape(0);
            if (op.heads < 1 || op.head_dim < 1 || op.heads * op.head_dim != w_out)
                fail(where + "heads x head_dim must equal the buffer width " + std::to_string(w_out));
            if (op.n_rot > op.head_dim || op.head_dim > kMaxHeadDim) fail(where + "rotary dims exceed head_dim");
            break;
        }
        case OpKind::Attention: {
            op.heads = get_int("heads", 0);
            op.kv_heads = get_int("kv_heads", 0);
            op.head_dim = get_int("head_dim", 0);
            op.causal = py::cast<bool>(d["causal"]);
            op.window = get_int("window", 0);
            op.scale = py::cast<float>(d["scale"]);
            check_heads(op.heads, op.head_dim, op.kv_heads, op.head_dim, "kv");
            if (op.in < 0 || op.in2 < 0 || op.in3 < 0) fail(where + "needs q, k and v buffers");
            if (w_in != op.heads * op.head_dim || w_out != w_in || width(op.in2) != op.kv_heads * op.head_dim ||
                width(op.in3) != op.kv_heads * op.head_dim)
                fail(where + "buffer widths do not match heads x head_dim");
            if (op.layer < 0 || op.layer >= n_layer) fail(where + "layer out of range");
            if (op.window < 0 || (op.window && !op.causal)) fail(where + "a window needs causal attention");
            if (pg.has_attention && (pg.kv_heads != op.kv_heads || pg.head_dim != op.head_dim || pg.causal != op.causal))
                fail(where + "every attention op must share kv heads, head_dim and causality");
            pg.has_attention = true;
            pg.kv_heads = op.kv_heads;
            pg.head_dim = op.head_dim;
            pg.causal = op.causal;
            break;
        }
        case OpKind::Glu:
            need_in(false);
            if (op.in2 < 0) fail(where + "needs a second input");
            if (op.col0 < 0 || op.col1 < 0 || op.col0 + w_out > w_in || op.col1 + w_out > width(op.in2))
                fail(where + "column ranges exceed the inputs");
            break;
        case OpKind::Copy:
            need_in(false);
            if (op.col0 < 0 || op.col0 + w_out > w_in) fail(where + "column range exceeds the input");
            break;
        case OpKind::Select:
            need_in(true);
            break;
        case OpKind::AllReduce:
            if (op.in >= 0 && op.in != op.out) fail(where + "reduces its output buffer in place");
            op.in = op.out;
            pg.parallel = true;
            break;
        case OpKind::Gather: {
            need_in(false);
            op.parts = py::cast<std::vector<int64_t>>(d["parts"]);
            int64_t total = 0;
            for (int64_t p : op.parts) {
                if (p < 1) fail(where + "every rank's part needs a width >= 1");
                total += p;
            }
            if (total != w_out) fail(where + "the parts' widths sum to " + std::to_string(total) + ", the output is " + std::to_string(w_out));
            if (std::find(op.parts.begin(), op.parts.end(), w_in) == op.parts.end()) fail(where + "the input's width is no rank's part");
            pg.parallel = true;
            break;
        }
    }
    return op;
}

// The checks that need the whole graph: one select op, and after it only ops that work row by
// row on buffers written after it (they run on the selected rows only).
void check_graph(const std::vector<GraphOp>& ops) {
    size_t selects = 0;
    std::set<int> later;  // buffers written after the select op
    for (const GraphOp& op : ops) {
        if (!selects) {
            if (op.kind == OpKind::Select) {
                ++selects;
                later.insert(op.out);
            }
            continue;
        }
        const std::string where = "op " + op.name + ": ";
        if (op.kind == OpKind::Select) fail("a graph has one select op");
        if (op.kind == OpKind::Attention || op.kind == OpKind::Rope || op.kind == OpKind::Embed)
            fail(where + "attention, rope and embedding run before the select op");
        for (int b : {op.in, op.in2, op.in3, op.residual})
            if (b >= 0 && !later.count(b)) fail(where + "after the select op, inputs must be written after it");
        later.insert(op.out);
    }
    if (selects != 1) fail("a graph needs exactly one select op");
}

std::unique_ptr<PyGraph> make_graph(const std::vector<int64_t>& widths, const py::list& op_list, int64_t n_layer) {
    if (n_layer < 1) fail("n_layer must be positive");
    for (int64_t w : widths)
        if (w < 1) fail("buffer widths must be positive");
    auto pg = std::make_unique<PyGraph>();
    std::vector<GraphOp> ops;
    for (const auto& item : op_list) ops.push_back(parse_op(py::cast<py::dict>(item), widths, *pg, n_layer));
    check_graph(ops);
    if (!pg->vocab) fail("a graph needs a token embedding");
    pg->graph = std::make_unique<Graph>(widths, std::move(ops), n_layer);
    return pg;
}

// A float32 [rows, width] view of graph memory that keeps the arena it points into alive.
Array arena_view(const std::shared_ptr<std::vector<float>>& arena, const float* data, int64_t rows, int64_t width) {
    auto* owner = new std::shared_ptr<std::vector<float>>(arena);
    py::capsule base(owner, [](void* p) { delete static_cast<std::shared_ptr<std::vector<float>>*>(p); });
    return py::array_t<float>({py::ssize_t(rows), py::ssize_t(width)}, data, base);
}

// The step's segments from (cache or None, pos, length) tuples, checked against the graph.
std::vector<Segment> parse_segments(PyGraph& pg, const py::list& items, int64_t n_tokens) {
    std::vector<Segment> segs;
    int64_t rows = 0;
    for (const auto& item : items) {
        const py::tuple t = py::cast<py::tuple>(item);
        if (t.size() != 3) fail("a segment is (cache, pos, length)");
        Segment s;
        s.pos = py::cast<int64_t>(t[1]);
        s.length = py::cast<int64_t>(t[2]);
        if (s.pos < 0 || s.length < 1) fail("segments need pos >= 0 and length >= 1");
        if (pg.max_position >= 0 && s.pos + s.length > pg.max_position)
            throw py::index_error("positions up to " + std::to_string(s.pos + s.length) + " exceed the model's " +
                                  std::to_string(pg.max_position) + " position embeddings");
        if (t[0].is_none()) {
            if (pg.causal && pg.has_attention) fail("a decoder step needs a KV cache for every segment");
        } else {
            if (!pg.causal) fail("an encoder's segments have no KV cache");
            Array c = py::cast<Array>(t[0]);
            s.f16 = c.dtype().is(py::dtype("float16"));
            if (!s.f16) check_dtype<float>(c, "cache", "float32 or float16");
            check_contiguous(c, "cache");
            if (!c.writeable()) fail("cache must be writeable");
            if (c.ndim() != 5 || c.shape(0) != pg.graph->n_layer() || c.shape(1) != 2 || c.shape(2) != pg.kv_heads ||
                c.shape(4) != pg.head_dim)
                fail("cache has shape " + shape_str(c) + ", expected (" + std::to_string(pg.graph->n_layer()) + ", 2, " +
                     std::to_string(pg.kv_heads) + ", capacity, " + std::to_string(pg.head_dim) + ")");
            s.capacity = c.shape(3);
            if (s.pos + s.length > s.capacity)
                fail("context full: " + std::to_string(s.pos) + " + " + std::to_string(s.length) +
                     " tokens exceed the context of " + std::to_string(s.capacity));
            s.cache = c.mutable_data();
        }
        if (!segs.empty() && (s.cache == nullptr) != (segs.back().cache == nullptr))
            fail("segments must all have a cache or all have none");
        rows += s.length;
        segs.push_back(s);
    }
    if (segs.empty() || rows != n_tokens)
        fail("segment lengths sum to " + std::to_string(rows) + " but the step has " + std::to_string(n_tokens) + " tokens");
    return segs;
}

void bind_graph(py::module_& m) {
    py::class_<PyGraph>(m, "Graph", "A model's forward step as one native call (see corelm/models/graph.py).")
        .def(py::init(&make_graph), py::arg("widths"), py::arg("ops"), py::arg("n_layer"),
             "widths: floats per row of each buffer; ops: dicts naming their kind, buffers and tensors (checked here).")
        .def("run", [](PyGraph& pg, const Array& tokens, const py::list& segments, bool last_rows, int64_t until,
                       const py::object& hook) {
            check_dtype<int32_t>(tokens, "tokens", "int32");
            check_contiguous(tokens, "tokens");
            if (tokens.ndim() != 1 || tokens.shape(0) < 1) fail("tokens must be a non-empty 1-D array");
            const int64_t n = tokens.shape(0);
            const auto* ids = static_cast<const int32_t*>(tokens.data());
            for (int64_t i = 0; i < n; ++i)
                if (ids[i] < 0 || ids[i] >= pg.vocab)
                    throw py::index_error("token id " + std::to_string(ids[i]) + " out of range [0, " + std::to_string(pg.vocab) + ")");
            const int64_t n_ops = int64_t(pg.graph->ops().size());
            if (until < 1 || until > n_ops) fail("until must be in [1, " + std::to_string(n_ops) + "]");
            const std::vector<Segment> segs = parse_segments(pg, segments, n);
            if (pg.parallel) {
                const auto& ops = pg.graph->ops();
                for (const GraphOp& op : ops)
                    if (op.kind == OpKind::Gather &&
                        (!collectives::active() || int64_t(op.parts.size()) != collectives::size() ||
                         op.parts[size_t(collectives::rank())] != pg.graph->widths()[size_t(op.in)]))
                        fail("this graph is one rank's share of a tensor-parallel model: it runs under MPI with " +
                             std::to_string(op.parts.size()) + " ranks (corelm.distributed)");
                if (!collectives::active()) fail("this graph is one rank's share of a tensor-parallel model: it runs under MPI (corelm.distributed)");
            }
            OpHook op_hook;
            if (!hook.is_none()) {
                op_hook = [&pg, &hook](size_t i, OpView in, OpView out, double seconds) {
                    py::gil_scoped_acquire gil;
                    const auto arena = pg.graph->arena();
                    py::object in_view = in.data ? py::object(arena_view(arena, in.data, in.rows, in.width)) : py::none();
                    hook(i, in_view, arena_view(arena, out.data, out.rows, out.width), seconds);
                };
            }
            int64_t rows = 0;
            const float* out;
            {
                py::gil_scoped_release nogil;
                std::lock_guard<std::mutex> guard(pg.lock);
                out = pg.graph->run(ids, n, segs, last_rows, size_t(until), &rows, op_hook);
            }
            const int64_t width = pg.graph->widths()[size_t(pg.graph->ops()[size_t(until - 1)].out)];
            return arena_view(pg.graph->arena(), out, rows, width);
        }, py::arg("tokens"), py::arg("segments"), py::arg("last_rows"), py::arg("until"), py::arg("hook") = py::none(),
           "One forward step: ops [0, until) over tokens (int32), the segments' tokens one after another; segments: "
           "(cache [n_layer, 2, kv_heads, capacity, head_dim] or None, pos, length). last_rows: the select op keeps each "
           "segment's last row (else all rows). hook(op_index, input, output, seconds) is called after every op. "
           "Returns op until-1's output [rows, width], a view the next run may overwrite.");
}

}  // namespace

PYBIND11_MODULE(_C, m) {
    m.doc() = "corelm native core: CPU kernels for LLM inference";
    bind_graph(m);

    m.def("info", &info, "CPU model, features, thread count and the path each kernel takes.");
    m.def("isa", &active_isa, "The kernel path in use: 'ref', 'avx2', 'avx512', 'amx' or 'amx-emu'.");
    m.def("_tile_op", &tile_op, py::arg("insn"), py::arg("c"), py::arg("a"), py::arg("b"), py::arg("hardware") = false,
          "C after one AMX instruction (tdpbssd/sud/usd/uud, tdpbf16ps) on tiles C, A, B loaded from 2-D arrays, "
          "on the emulator or (hardware=True) the CPU.");
    m.def("set_isa", &set_isa, py::arg("name"),
          "Switch kernel path; returns a warning string (empty if none) when it had to fall back.");
    m.def("supported_isas", &supported_isas, "Kernel paths this CPU can run, slowest first.");
    m.def("_decode_tuning", [](const py::object& prefetch_bytes, const py::object& sparse_groups,
                               const py::object& prefetch_q8_0) {
        if (!sparse_groups.is_none()) {
            const int g = sparse_groups.cast<int>();
            if (g != 1 && g != 4) fail("sparse_groups must be 1 or 4, got " + std::to_string(g));
            g_decode_tuning.sparse_groups = g;
        }
        if (!prefetch_bytes.is_none()) {
            const int ahead = prefetch_bytes.cast<int>();
            if (ahead < 0 || ahead % 64 || ahead > (1 << 20))
                fail("prefetch_bytes must be 0 or a multiple of 64 up to 1 MiB, got " + std::to_string(ahead));
            g_decode_tuning.prefetch_bytes = ahead;
        }
        if (!prefetch_q8_0.is_none()) g_decode_tuning.prefetch_q8_0 = prefetch_q8_0.cast<bool>();
        return decode_tuning_dict();
    }, py::arg("prefetch_bytes") = py::none(), py::arg("sparse_groups") = py::none(), py::arg("prefetch_q8_0") = py::none(),
       "How the one-row GEMVs stream the weights (chosen from the CPU at start-up): prefetch_bytes (how far on each "
       "block fetches; 0: none), sparse_groups (Q8_0_S16 row groups at once, 1 or 4) and prefetch_q8_0 (whether "
       "Q8_0_X16 prefetches too). Sets what is given; "
       "returns the setting. For tests and benchmarks.");
    m.def("set_num_threads", &set_num_threads, py::arg("n"), "Size the thread pool (n < 1: physical cores).");
    m.def("num_threads", &num_threads);
    m.def("set_collectives", [](const py::dict& d) {
        collectives::Mpi mpi;
        mpi.size = int(py::cast<int64_t>(d["size"]));
        if (mpi.size > 0) {
            auto fn = [&](const char* key) {
                const auto addr = py::cast<uintptr_t>(d[key]);
                if (!addr) fail(std::string("set_collectives: ") + key + " is null");
                return addr;
            };
            mpi.allreduce = reinterpret_cast<decltype(mpi.allreduce)>(fn("allreduce"));
            mpi.gatherv = reinterpret_cast<decltype(mpi.gatherv)>(fn("gatherv"));
            mpi.abort = reinterpret_cast<decltype(mpi.abort)>(fn("abort"));
            mpi.comm = py::cast<collectives::Handle>(d["comm"]);
            mpi.f32 = py::cast<collectives::Handle>(d["float32"]);
            mpi.sum = py::cast<collectives::Handle>(d["sum"]);
            mpi.rank = int(py::cast<int64_t>(d["rank"]));
            mpi.timeout = py::cast<double>(d["timeout"]);
        }
        try {
            collectives::install(mpi);
        } catch (const std::invalid_argument& e) {
            fail(std::string("set_collectives: ") + e.what());
        }
    }, py::arg("mpi"),
       "Install the MPI entry points the graph's all_reduce / gather ops call (see corelm/distributed.py): a dict "
       "of allreduce, gatherv, abort (function addresses), comm, float32, sum (MPI handles), rank, size, timeout "
       "(seconds); size 0 removes them.");
    m.def("collective_stats", []() {
        const collectives::Stats st = collectives::stats();
        py::dict d;
        d["calls"] = st.calls;
        d["bytes"] = st.bytes;
        d["seconds"] = st.seconds;
        return d;
    }, "Calls, bytes sent and seconds spent in the graph's collectives since the last reset.");
    m.def("reset_collective_stats", &collectives::reset_stats);
    m.def("read_bandwidth", [](size_t bytes, int reps, int streams) {
        if (bytes < (1u << 20)) fail("the bandwidth probe needs at least 1 MiB");
        py::gil_scoped_release nogil;
        return read_bandwidth_gbs(bytes, reps, streams);
    }, py::arg("bytes") = size_t(1) << 30, py::arg("reps") = 5, py::arg("streams") = 8,
       "Best-of-reps read bandwidth (GB/s) of the thread pool over a buffer of `bytes`.");
    m.def("row_bytes", [](int t, int64_t k) { return row_bytes(weight_type(t), k); }, py::arg("type"), py::arg("k"));
    m.def("weight_types", [] {
        py::list out;
        for (const TypeInfo& info : kTypes) {
            py::dict d;
            d["id"] = int(info.type);
            d["name"] = info.name;
            d["block_size"] = info.block;
            d["block_bytes"] = info.block_bytes;
            d["base"] = int(info.base);
            d["packed"] = int(info.packed);
            switch (info.type) {  // the matrix product kernel of the type (kernel_table.h), as info()["kernels"] names it
#define CORELM_KERNEL_NAME(unused, type, name) \
    case WeightType::type: d["kernel"] = #name; break;
                CORELM_MATMUL_KERNELS(CORELM_KERNEL_NAME, _)
#undef CORELM_KERNEL_NAME
            }
            constexpr const char* kSparsity[] = {"", "unstructured", "2:4", "block"};  // Sparsity's order
            d["sparsity"] = kSparsity[int(info.sparsity)];
            out.append(d);
        }
        return out;
    }, "Every weight type's facts (formats.h's table): id, name, block_size, block_bytes, base (the GGUF type a "
       "16-row layout comes from), packed (a GGUF type's 16-row layout), kernel (its matrix product's name), sparsity ('' (zeros stored), "
       "'unstructured' or 'block' (rows of a tensor's own stride) or '2:4').");

    m.def("matmul", [](const Array& x, const Array& w, int type, int64_t n, const py::object& out,
                       const py::object& bias, const py::object& residual, const std::string& activation) {
        const ops::Activation act = activation_of(activation, "");
        const WeightType t = weight_type(type);
        const float* xp = f32_in(x, "x");
        const int64_t k = x.shape(x.ndim() - 1), rows = rows_of(x);
        const WeightBytes wb = weight_bytes(w, t, n, k);
        std::vector<py::ssize_t> shape = shape_of(x);
        shape.back() = n;
        Array y = f32_out(out, shape);
        float* yp = static_cast<float*>(y.mutable_data());
        const float* bp = nullptr;
        const float* rp = nullptr;
        if (!bias.is_none()) {
            const Array b = py::cast<Array>(bias);
            bp = f32_in(b, "bias", 1);
            if (b.shape(0) != n) fail("bias has " + std::to_string(b.shape(0)) + " elements, expected n=" + std::to_string(n));
        }
        if (!residual.is_none()) {
            const Array r = py::cast<Array>(residual);
            rp = f32_in(r, "residual");
            if (shape_of(r) != shape) fail("residual has shape " + shape_str(r) + ", expected " + shape_str(y));
        }
        if (rows > 0) {
            py::gil_scoped_release nogil;
            ops::matmul(xp, rows, k, wb.data, t, n, yp, bp, rp, act, wb.stride);
        }
        return y;
    }, py::arg("x"), py::arg("w"), py::arg("type"), py::arg("n"), py::arg("out") = py::none(),
       py::arg("bias") = py::none(), py::arg("residual") = py::none(), py::arg("activation") = "",
       "y[..., n] = act(x[..., k] @ W.T (+ bias[n])) (+ residual[..., n]) for W (n rows of k elements of `type`, "
       "raw bytes); activation: '' (none), 'gelu_erf' or 'gelu_tanh'. residual may be out itself: out += x @ W.T.");

    m.def("quantize", [](const Array& x, int type) {
        const WeightType t = weight_type(type);
        if (is_packed(t)) fail(std::string("quantize to ") + type_name(unpacked_of(t)) + ", then pack");
        const float* xp = f32_in(x, "x", 2);
        const int64_t rows = x.shape(0), k = x.shape(1);
        const size_t rb = row_bytes(t, k);
        if (rb == 0) fail("k=" + std::to_string(k) + " is not a multiple of " + type_name(t) + "'s block size " + std::to_string(block_size(t)));
        py::array_t<uint8_t> out({py::ssize_t(rows), py::ssize_t(rb)});
        uint8_t* op = out.mutable_data();
        py::gil_scoped_release nogil;
        ops::quantize(xp, t, rows, k, op);
        return out;
    }, py::arg("x"), py::arg("type"), "Rows of fp32 to the raw bytes of `type` (GGUF layout): uint8[rows, row_bytes].");

    auto repack = [&m](const char* name, bool to_packed, const char* doc) {
        m.def(name, [to_packed](const Array& w, int type, int64_t n, int64_t k, const py::object& out) {
            const WeightType t = weight_type(type);
            const WeightType packed = to_packed ? packed_of(t) : t;
            if (!is_packed(packed) || (to_packed && is_packed(t)))
                fail(std::string(type_name(t)) + (to_packed ? " cannot be packed" : " is not a packed type"));
            const WeightBytes wb = weight_bytes(w, t, n, k);
            const py::ssize_t rb = py::ssize_t(row_bytes(to_packed ? t : unpacked_of(t), k));
            Array o = array_out<uint8_t>(out, {py::ssize_t(n), rb}, "uint8");
            if (!out.is_none()) check_apart(o, w, "w");
            uint8_t* op = static_cast<uint8_t*>(o.mutable_data());
            py::gil_scoped_release nogil;
            if (to_packed) ops::pack(wb.data, packed, n, k, op);
            else ops::unpack(wb.data, packed, n, k, op, wb.stride);
            return o;
        }, py::arg("w"), py::arg("type"), py::arg("n"), py::arg("k"), py::arg("out") = py::none(), doc);
    };
    repack("pack", true,
           "GGUF-layout rows of a type to its 16-row interleaved layout (its *_X16 type): whole groups of 16 rows "
           "interleaved, the rest as they are. Written into `out` (uint8 [n, row bytes], not overlapping w) if given.");
    repack("unpack", false, "A *_X16 or sparse layout back to its GGUF type's rows. Written into `out` (as pack's) if given.");

    m.def("copy", [](const Array& src, const py::object& out) {
        check_contiguous(src, "src");
        Array o = writeable_out<uint8_t>(out, "uint8");
        if (src.nbytes() != o.nbytes())
            fail("out has " + std::to_string(o.nbytes()) + " bytes, src " + std::to_string(src.nbytes()));
        check_apart(o, src, "src");
        const auto* from = static_cast<const uint8_t*>(src.data());
        auto* to = static_cast<uint8_t*>(o.mutable_data());
        py::gil_scoped_release nogil;
        ops::copy(from, to, size_t(src.nbytes()));
    }, py::arg("src"), py::arg("out"),
       "Copies src's bytes (any C-contiguous array) into out (uint8, C-contiguous, as many bytes, not overlapping) on the "
       "thread pool: a load's first touch of fresh pages goes as fast as the threads that fault them.");

    m.def("sparse_check", [](const Array& w, int type, int64_t n, int64_t k) {
        const WeightType t = weight_type(type);
        if (!is_sparse(t)) fail(std::string(type_name(t)) + " is not a sparse type");
        const WeightBytes wb = weight_bytes(w, t, n, k);
        int64_t bad = -1, codes = 0;
        {
            py::gil_scoped_release nogil;
            for (int64_t g = 0; g < n / kPackRows && bad < 0; ++g) {
                const int64_t c = ref::sparse_group_codes(t, wb.data + size_t(g) * kPackRows * wb.stride, k, kPackRows * wb.stride);
                if (c < 0) bad = g;
                codes += c;
            }
        }
        if (bad >= 0)
            fail(std::string(type_name(t)) + " weight of " + std::to_string(n) + " x " + std::to_string(k) + ": rows " +
                 std::to_string(bad * kPackRows) + ".." + std::to_string(bad * kPackRows + kPackRows - 1) +
                 " announce more stored codes than their " + std::to_string(kPackRows * wb.stride) + " bytes hold (corrupted)");
        return codes;
    }, py::arg("w"), py::arg("type"), py::arg("n"), py::arg("k"),
       "The codes a sparse matrix stores (the rest of its n x k are zero); raises ValueError for a group whose "
       "masks or block map announce more than it holds (the kernels never read past a group either way; this names it).");

    m.def("sparsify", [](const Array& w, int type, int64_t n, int64_t k, int layout) {
        const WeightType t = weight_type(type), sparse = weight_type(layout);
        if (!is_sparse(sparse)) fail(std::string(type_name(sparse)) + " is not a sparse layout");
        if (t != unpacked_of(sparse) && t != packed_of(unpacked_of(sparse)))
            fail(std::string(type_name(sparse)) + " is made from " + type_name(unpacked_of(sparse)) + ", not " + type_name(t));
        if (n % kPackRows) fail("a sparse layout needs a multiple of 16 rows, got " + std::to_string(n));
        const WeightBytes wb = weight_bytes(w, t, n, k);
        int64_t stride;
        {
            py::gil_scoped_release nogil;
            stride = ops::sparse_stride(wb.data, t, sparse, n, k);
        }
        if (stride < 0) fail("the matrix is not 2:4 sparse (a row keeps more than 2 of some 4 consecutive codes)");
        py::array_t<uint8_t> out({py::ssize_t(n), py::ssize_t(stride)});
        uint8_t* op = out.mutable_data();
        py::gil_scoped_release nogil;
        ops::sparsify(wb.data, t, sparse, n, k, size_t(stride), op);
        return out;
    }, py::arg("w"), py::arg("type"), py::arg("n"), py::arg("k"), py::arg("layout"),
       "A Q8_0 (or Q8_0_X16) matrix of n x k in a sparse layout: Q8_0_S16 (its zero codes left out; uint8[n, "
       "stride], the stride the fullest group of 16 rows needs), Q8_0_24 (2:4; ValueError when it is not) or Q8_0_B16 (its "
       "all-zero blocks of 16 rows x 32 left out; uint8[n, stride] too).");

    m.def("dequantize", [](const Array& w, int type, int64_t n, int64_t k) {
        const WeightType t = weight_type(type);
        const WeightBytes wb = weight_bytes(w, t, n, k);
        py::array_t<float> out({py::ssize_t(n), py::ssize_t(k)});
        float* op = out.mutable_data();
        py::gil_scoped_release nogil;
        ops::dequantize(wb.data, t, n, k, op, wb.stride);
        return out;
    }, py::arg("w"), py::arg("type"), py::arg("n"), py::arg("k"), "Raw weight bytes of n x k to fp32.");

    m.def("get_rows", [](const Array& w, int type, int64_t n, int64_t k, const Array& ids, const py::object& out) {
        const WeightType t = weight_type(type);
        const WeightBytes wb = weight_bytes(w, t, n, k);
        check_dtype<int32_t>(ids, "ids", "int32");
        check_contiguous(ids, "ids");
        if (ids.ndim() != 1) fail("ids must be 1-D, got shape " + shape_str(ids));
        const auto* ip = static_cast<const int32_t*>(ids.data());
        const int64_t len = ids.shape(0);
        for (int64_t i = 0; i < len; ++i)
            if (ip[i] < 0 || ip[i] >= n)
                throw py::index_error("token id " + std::to_string(ip[i]) + " out of range [0, " + std::to_string(n) + ")");
        Array y = f32_out(out, {py::ssize_t(len), py::ssize_t(k)});
        float* op = static_cast<float*>(y.mutable_data());
        py::gil_scoped_release nogil;
        ops::get_rows(wb.data, t, n, k, ip, len, op, wb.stride);
        return y;
    }, py::arg("w"), py::arg("type"), py::arg("n"), py::arg("k"), py::arg("ids"), py::arg("out") = py::none(),
       "Embedding lookup: rows ids of W (n x k, `type`) as fp32 [len(ids), k].");

    m.def("attention", [](const Array& q, const Array& k_cache, const Array& v_cache, int64_t n_past, float scale,
                          const py::object& out) {
        const float* qp = f32_in(q, "q", 3);
        const int64_t m_rows = q.shape(0), hq = q.shape(1), d = q.shape(2);
        const bool f16 = kv_is_f16(k_cache, v_cache);
        if (k_cache.ndim() != 3) fail("k_cache and v_cache must be 3-D [kv_heads, capacity, head_dim]");
        const int64_t hkv = k_cache.shape(0), t_cap = k_cache.shape(1);
        check_heads(hq, d, hkv, k_cache.shape(2), "cache");
        if (n_past < 0 || n_past + m_rows > t_cap)
            fail("positions " + std::to_string(n_past) + ".." + std::to_string(n_past + m_rows) + " exceed the cache capacity " + std::to_string(t_cap));
        Array y = f32_out(out, shape_of(q));
        if (m_rows > 0) {
            const AttentionArgs a{qp, k_cache.data(), v_cache.data(), f16, t_cap * d, d, m_rows, hq, hkv, d, n_past,
                                  /*causal=*/true, scale, static_cast<float*>(y.mutable_data())};
            py::gil_scoped_release nogil;
            ops::attention(a);
        }
        return y;
    }, py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("n_past"), py::arg("scale"), py::arg("out") = py::none(),
       "Causal GQA: q [m, hq, d] at positions n_past.. against caches [hkv, capacity, d] (float32 or float16).");

    m.def("self_attention", [](const Array& q, const Array& k, const Array& v, float scale, bool causal,
                               const py::object& seq_lengths, const py::object& out) {
        const float* qp = f32_in(q, "q", 3);
        const int64_t m_rows = q.shape(0), hq = q.shape(1), d = q.shape(2);
        const bool f16 = kv_is_f16(k, v);
        if (k.ndim() != 3 || k.shape(0) != m_rows)
            fail("k and v must be 3-D [" + std::to_string(m_rows) + ", kv_heads, head_dim], got " + shape_str(k));
        const int64_t hkv = k.shape(1);
        check_heads(hq, d, hkv, k.shape(2), "k");
        // The first row of each sequence, from the sequences' lengths (which must cover the rows).
        std::vector<int32_t> offsets{0};
        if (!seq_lengths.is_none()) {
            auto lengths = py::cast<py::array_t<int64_t, py::array::c_style | py::array::forcecast>>(seq_lengths);
            if (lengths.ndim() != 1) fail("seq_lengths must be 1-D");
            for (py::ssize_t s = 0; s < lengths.size(); ++s) {
                const int64_t len = lengths.at(s);
                if (len < 1 || offsets.back() + len > m_rows)
                    fail("seq_lengths must be positive and sum to the rows of q (" + std::to_string(m_rows) + ")");
                offsets.push_back(int32_t(offsets.back() + len));
            }
            if (offsets.back() != m_rows) fail("seq_lengths must be positive and sum to the rows of q (" + std::to_string(m_rows) + ")");
        }
        Array y = f32_out(out, shape_of(q));
        if (m_rows > 0) {
            AttentionArgs a{qp, k.data(), v.data(), f16, d, hkv * d, m_rows, hq, hkv, d, 0,
                            causal, scale, static_cast<float*>(y.mutable_data())};
            if (offsets.size() > 1) { a.seq_offsets = offsets.data(); a.n_seqs = int64_t(offsets.size()) - 1; }
            py::gil_scoped_release nogil;
            ops::attention(a);
        }
        return y;
    }, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("scale"), py::arg("causal") = false,
       py::arg("seq_lengths") = py::none(), py::arg("out") = py::none(),
       "GQA of m rows among themselves: q [m, hq, d], k/v [m, hkv, d] (float32 or float16). causal=False lets "
       "every row see all keys (encoders). seq_lengths: the rows are several sequences one after another, "
       "each attending only to its own rows (one call for a batch).");

    m.def("rmsnorm", [](const Array& x, const Array& w, float eps, const py::object& out) {
        const float* xp = f32_in(x, "x");
        const float* wp = f32_in(w, "weight", 1);
        const int64_t d = x.shape(x.ndim() - 1);
        if (w.shape(0) != d) fail("weight has " + std::to_string(w.shape(0)) + " elements, rows have " + std::to_string(d));
        Array y = f32_out(out, shape_of(x));
        float* yp = static_cast<float*>(y.mutable_data());
        py::gil_scoped_release nogil;
        ops::rmsnorm(xp, wp, yp, rows_of(x), d, eps);
        return y;
    }, py::arg("x"), py::arg("weight"), py::arg("eps"), py::arg("out") = py::none());

    m.def("layernorm", [](const Array& x, const Array& w, const Array& b, float eps, const py::object& out) {
        const float* xp = f32_in(x, "x");
        const float* wp = f32_in(w, "weight", 1);
        const float* bp = f32_in(b, "bias", 1);
        const int64_t d = x.shape(x.ndim() - 1);
        if (w.shape(0) != d || b.shape(0) != d) fail("weight and bias must have " + std::to_string(d) + " elements");
        Array y = f32_out(out, shape_of(x));
        float* yp = static_cast<float*>(y.mutable_data());
        py::gil_scoped_release nogil;
        ops::layernorm(xp, wp, bp, yp, rows_of(x), d, eps);
        return y;
    }, py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("eps"), py::arg("out") = py::none());

    m.def("softmax", [](const Array& x, const py::object& out) {
        const float* xp = f32_in(x, "x");
        Array y = f32_out(out, shape_of(x));
        float* yp = static_cast<float*>(y.mutable_data());
        const int64_t n = x.shape(x.ndim() - 1);
        py::gil_scoped_release nogil;
        ops::softmax(xp, yp, rows_of(x), n);
        return y;
    }, py::arg("x"), py::arg("out") = py::none(), "Softmax over the last axis.");

    m.def("rope", [](Array& x, const Array& pos, const Array& inv_freq, bool neox) {
        f32_in(x, "x", 3);
        if (!x.writeable()) fail("x must be writeable (rope works in place)");
        check_dtype<int32_t>(pos, "positions", "int32");
        check_contiguous(pos, "positions");
        const float* fp = f32_in(inv_freq, "inv_freq", 1);
        const int64_t rows = x.shape(0), heads = x.shape(1), d = x.shape(2), n_rot = 2 * inv_freq.shape(0);
        if (pos.ndim() != 1 || pos.shape(0) != rows) fail("positions must be 1-D with one entry per row of x");
        if (n_rot > d || d > kMaxHeadDim) fail("rotary dims " + std::to_string(n_rot) + " exceed head_dim " + std::to_string(d));
        float* xp = static_cast<float*>(x.mutable_data());
        const auto* pp = static_cast<const int32_t*>(pos.data());
        py::gil_scoped_release nogil;
        ops::rope(xp, pp, fp, rows, heads, d, n_rot, neox);
    }, py::arg("x"), py::arg("positions"), py::arg("inv_freq"), py::arg("neox"),
       "In place on x [rows, heads, head_dim]: rotate the first 2*len(inv_freq) dims by positions[row]*inv_freq; "
       "neox=True pairs (i, i+n/2) (GPT-NeoX / Hugging Face), False pairs (2i, 2i+1) (GPT-J / llama.cpp normal).");

    auto unary = [&m](const char* name, ops::Unary op) {
        m.def(name, [op](const Array& x, const py::object& out) {
            const float* xp = f32_in(x, "x");
            Array y = f32_out(out, shape_of(x));
            float* yp = static_cast<float*>(y.mutable_data());
            py::gil_scoped_release nogil;
            ops::unary(op, xp, yp, int64_t(x.size()));
            return y;
        }, py::arg("x"), py::arg("out") = py::none());
    };
    unary("silu", ops::Unary::silu);
    unary("gelu_tanh", ops::Unary::gelu_tanh);
    unary("gelu_erf", ops::Unary::gelu_erf);

    auto binary = [&m](const char* name, ops::Binary op) {
        m.def(name, [op](const Array& a, const Array& b, const py::object& out) {
            const float* ap = f32_in(a, "a");
            const float* bp = f32_in(b, "b");
            const int64_t n = a.shape(a.ndim() - 1), rows = rows_of(a);
            int64_t b_stride = n;
            if (shape_of(a) != shape_of(b)) {
                if (b.ndim() == 1 && b.shape(0) == n) b_stride = 0;
                else fail("b of shape " + shape_str(b) + " does not match a " + shape_str(a) + " (or its last axis)");
            }
            Array y = f32_out(out, shape_of(a));
            float* yp = static_cast<float*>(y.mutable_data());
            py::gil_scoped_release nogil;
            ops::binary(op, ap, n, bp, b_stride, yp, n, rows, n);
            return y;
        }, py::arg("a"), py::arg("b"), py::arg("out") = py::none());
    };
    binary("add", ops::Binary::add);
    binary("mul", ops::Binary::mul);
    binary("swiglu", ops::Binary::swiglu);

    // ---- sampling ----

    m.def("sample", [](const Array& logits, const Array& temperature, const Array& top_k, const Array& top_p,
                       const Array& min_p, const Array& repeat_penalty, const Array& presence_penalty,
                       const Array& frequency_penalty, const Array& recent, const Array& recent_offsets,
                       const Array& bias_ids, const Array& bias_values, const Array& bias_offsets, Array& rng) {
        const float* lp = f32_in(logits, "logits", 2);
        const int64_t rows = logits.shape(0), vocab = logits.shape(1);
        if (vocab < 1) fail("logits must have at least one column");
        const float* temp = vec_in<float>(temperature, "temperature", rows, "float32");
        const int32_t* topk = vec_in<int32_t>(top_k, "top_k", rows, "int32");
        const float* topp = vec_in<float>(top_p, "top_p", rows, "float32");
        const float* minp = vec_in<float>(min_p, "min_p", rows, "float32");
        const float* rep = vec_in<float>(repeat_penalty, "repeat_penalty", rows, "float32");
        const float* pres = vec_in<float>(presence_penalty, "presence_penalty", rows, "float32");
        const float* freq = vec_in<float>(frequency_penalty, "frequency_penalty", rows, "float32");
        const int32_t* rec = vec_in<int32_t>(recent, "recent", -1, "int32");
        const int64_t* rec_off = vec_in<int64_t>(recent_offsets, "recent_offsets", rows + 1, "int64");
        const int32_t* bid = vec_in<int32_t>(bias_ids, "bias_ids", -1, "int32");
        const float* bval = vec_in<float>(bias_values, "bias_values", bias_ids.shape(0), "float32");
        const int64_t* b_off = vec_in<int64_t>(bias_offsets, "bias_offsets", rows + 1, "int64");
        vec_in<uint64_t>(rng, "rng", rows, "uint64");
        if (!rng.writeable()) fail("rng must be writeable (each row's state advances)");
        // Offsets split the flat arrays into one run per row; every id must be a column.
        auto check_runs = [rows, vocab](const int64_t* off, const std::string& off_name, const int32_t* ids,
                                        const std::string& ids_name, int64_t n) {
            if (off[0] != 0 || off[rows] != n)
                fail(off_name + " must start at 0 and end at len(" + ids_name + ") = " + std::to_string(n));
            for (int64_t r = 0; r < rows; ++r)
                if (off[r + 1] < off[r]) fail(off_name + " must not decrease");
            for (int64_t i = 0; i < n; ++i)
                if (ids[i] < 0 || ids[i] >= vocab)
                    fail(ids_name + " holds token id " + std::to_string(ids[i]) + ", out of range [0, " +
                         std::to_string(vocab) + ")");
        };
        check_runs(rec_off, "recent_offsets", rec, "recent", recent.shape(0));
        check_runs(b_off, "bias_offsets", bid, "bias_ids", bias_ids.shape(0));
        std::vector<sampling::RowParams> params(static_cast<size_t>(rows));
        for (int64_t r = 0; r < rows; ++r) {
            const std::string at = " (row " + std::to_string(r) + ")";
            if (std::isnan(temp[r])) fail("temperature must be a number" + at);
            if (!(topp[r] > 0 && topp[r] <= 1)) fail("top_p must be above 0 and at most 1, got " + std::to_string(topp[r]) + at);
            if (!(minp[r] >= 0 && minp[r] <= 1)) fail("min_p must be from 0 to 1, got " + std::to_string(minp[r]) + at);
            if (!(rep[r] > 0) || !std::isfinite(rep[r])) fail("repeat_penalty must be positive, got " + std::to_string(rep[r]) + at);
            if (!std::isfinite(pres[r]) || !std::isfinite(freq[r])) fail("presence and frequency penalties must be finite" + at);
            params[r] = {temp[r], topk[r], topp[r], minp[r], rep[r], pres[r], freq[r]};
        }
        py::array_t<int32_t> out(rows);
        const sampling::Batch b{lp, rows, vocab, params.data(), rec, rec_off, bid, bval, b_off,
                                static_cast<uint64_t*>(rng.mutable_data()), out.mutable_data()};
        if (rows > 0) {
            py::gil_scoped_release nogil;
            sampling::sample(b);
        }
        return out;
    }, py::arg("logits"), py::arg("temperature"), py::arg("top_k"), py::arg("top_p"), py::arg("min_p"),
       py::arg("repeat_penalty"), py::arg("presence_penalty"), py::arg("frequency_penalty"), py::arg("recent"),
       py::arg("recent_offsets"), py::arg("bias_ids"), py::arg("bias_values"), py::arg("bias_offsets"), py::arg("rng"),
       "One token id per row of logits [B, vocab] (int32[B]), each row with its own parameters (float32 / int32 "
       "arrays of B): logit bias (bias_ids / bias_values, row r's at bias_offsets[r]:bias_offsets[r+1]), then "
       "repeat / presence / frequency penalties over row r's recent[recent_offsets[r]:recent_offsets[r+1]], then "
       "greedy (temperature <= 0: argmax) or top-k, top-p, min-p on the untempered distribution, temperature "
       "and a draw from rng[r] (uint64 splitmix64 states, advanced in place).");
}
