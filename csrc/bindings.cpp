// The only file that knows about Python. Every entry point validates its arrays (dtype,
// shape, contiguity, index ranges) and raises a Python exception naming the problem before
// any pointer reaches a kernel; the GIL is released while native code runs.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/cpu_features.h"
#include "core/dispatch.h"
#include "core/formats.h"
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

// An output array: the given one after checks, or a new one of `shape`.
Array f32_out(const py::object& out, const std::vector<py::ssize_t>& shape) {
    if (out.is_none()) return py::array_t<float>(shape);
    Array o = py::cast<Array>(out);
    check_dtype<float>(o, "out", "float32");
    check_contiguous(o, "out");
    if (!o.writeable()) fail("out must be writeable");
    bool same = o.ndim() == py::ssize_t(shape.size());
    for (size_t i = 0; same && i < shape.size(); ++i) same = o.shape(py::ssize_t(i)) == shape[i];
    if (!same) fail("out has shape " + shape_str(o) + ", expected " + shape_str(py::array_t<float>(shape)));
    return o;
}

WeightType weight_type(int t) {
    if (!is_known_type(t)) fail("unsupported weight type id " + std::to_string(t));
    return WeightType(t);
}

// Raw weight bytes for n rows of k elements of type t.
const uint8_t* weight_bytes(const Array& w, WeightType t, int64_t n, int64_t k) {
    check_contiguous(w, "weight");
    if (n <= 0 || k <= 0) fail("weight dimensions must be positive, got n=" + std::to_string(n) + ", k=" + std::to_string(k));
    const size_t rb = row_bytes(t, k);
    if (rb == 0)
        fail(std::string("k=") + std::to_string(k) + " is not a multiple of " + type_name(t) + "'s block size " +
             std::to_string(block_size(t)));
    if (size_t(w.nbytes()) != rb * size_t(n))
        fail(std::string(type_name(t)) + " weight of " + std::to_string(n) + " x " + std::to_string(k) + " needs " +
             std::to_string(rb * size_t(n)) + " bytes, got " + std::to_string(w.nbytes()));
    return static_cast<const uint8_t*>(w.data());
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
    return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
    m.doc() = "corelm native core: CPU kernels for LLM inference";

    m.def("info", &info, "CPU model, features, thread count and the path each kernel takes.");
    m.def("isa", &active_isa, "The kernel path in use: 'ref', 'avx2' or 'avx512'.");
    m.def("set_isa", &set_isa, py::arg("name"),
          "Switch kernel path; returns a warning string (empty if none) when it had to fall back.");
    m.def("supported_isas", &supported_isas, "Kernel paths this CPU can run, slowest first.");
    m.def("set_num_threads", &set_num_threads, py::arg("n"), "Size the thread pool (n < 1: physical cores).");
    m.def("num_threads", &num_threads);
    m.def("read_bandwidth", [](size_t bytes, int reps, int streams) {
        if (bytes < (1u << 20)) fail("the bandwidth probe needs at least 1 MiB");
        py::gil_scoped_release nogil;
        return read_bandwidth_gbs(bytes, reps, streams);
    }, py::arg("bytes") = size_t(1) << 30, py::arg("reps") = 5, py::arg("streams") = 8,
       "Best-of-reps read bandwidth (GB/s) of the thread pool over a buffer of `bytes`.");
    m.def("row_bytes", [](int t, int64_t k) { return row_bytes(weight_type(t), k); }, py::arg("type"), py::arg("k"));

    m.def("matmul", [](const Array& x, const Array& w, int type, int64_t n, const py::object& out,
                       const py::object& bias, const py::object& residual, const std::string& activation) {
        ops::Activation act = ops::Activation::None;
        if (activation == "gelu_erf") act = ops::Activation::GeluErf;
        else if (activation == "gelu_tanh") act = ops::Activation::GeluTanh;
        else if (!activation.empty()) fail("unknown activation '" + activation + "' (known: gelu_erf, gelu_tanh)");
        const WeightType t = weight_type(type);
        const float* xp = f32_in(x, "x");
        const int64_t k = x.shape(x.ndim() - 1), rows = rows_of(x);
        const uint8_t* wp = weight_bytes(w, t, n, k);
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
            ops::matmul(xp, rows, k, wp, t, n, yp, bp, rp, act);
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
        m.def(name, [to_packed](const Array& w, int type, int64_t n, int64_t k) {
            const WeightType t = weight_type(type);
            const WeightType packed = to_packed ? packed_of(t) : t;
            if (!is_packed(packed) || (to_packed && is_packed(t)))
                fail(std::string(type_name(t)) + (to_packed ? " cannot be packed" : " is not a packed type"));
            const uint8_t* wp = weight_bytes(w, t, n, k);
            py::array_t<uint8_t> out({py::ssize_t(n), py::ssize_t(row_bytes(t, k))});
            uint8_t* op = out.mutable_data();
            py::gil_scoped_release nogil;
            if (to_packed) ops::pack(wp, packed, n, k, op);
            else ops::unpack(wp, packed, n, k, op);
            return out;
        }, py::arg("w"), py::arg("type"), py::arg("n"), py::arg("k"), doc);
    };
    repack("pack", true,
           "GGUF-layout rows of a type with a 16-row interleaved layout (F32, F16, BF16, Q8_0, Q5_0, Q4_0, Q4_K, "
           "Q5_K, Q6_K) to that layout (its *_X16 type): whole groups of 16 rows interleaved, the rest as they are.");
    repack("unpack", false, "A *_X16 layout back to GGUF-layout rows.");

    m.def("dequantize", [](const Array& w, int type, int64_t n, int64_t k) {
        const WeightType t = weight_type(type);
        const uint8_t* wp = weight_bytes(w, t, n, k);
        py::array_t<float> out({py::ssize_t(n), py::ssize_t(k)});
        float* op = out.mutable_data();
        py::gil_scoped_release nogil;
        ops::dequantize(wp, t, n, k, op);
        return out;
    }, py::arg("w"), py::arg("type"), py::arg("n"), py::arg("k"), "Raw weight bytes of n x k to fp32.");

    m.def("get_rows", [](const Array& w, int type, int64_t n, int64_t k, const Array& ids, const py::object& out) {
        const WeightType t = weight_type(type);
        const uint8_t* wp = weight_bytes(w, t, n, k);
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
        ops::get_rows(wp, t, n, k, ip, len, op);
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
            ops::binary(op, ap, bp, yp, rows, n, b_stride);
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
