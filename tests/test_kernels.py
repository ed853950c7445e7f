"""Every kernel on every path this CPU runs, against numpy formulas and the reference path.

Tolerances: integer arithmetic is bit-exact (checked with scales of 1 so the float scaling
adds no rounding); float results are within a few ulps of the magnitude of the summed
terms (|x|.|w|), since paths differ only in summation order.
"""

import threading

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corelm import _C
from corelm.kernels import Weight, WeightType, embedding, matmul

KQUANTS = [WeightType.Q4_K, WeightType.Q5_K, WeightType.Q6_K]
TYPES = list(WeightType)  # including the packed layouts (16-row groups)
ROWS = [1, 2, 3, 5, 17, 33]
# The `isa` fixture selects a path for the whole test; reusing it across examples is intended.
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def rows_for(wtype: WeightType, n: int) -> int:
    """Packed layouts need at least one whole group of 16 rows (the rest stay in GGUF layout); sparse ones
    whole groups only."""
    if wtype.sparse:
        return -(-n // 16) * 16
    return max(n, 16) if wtype.packed else n


def make_weight(x: np.ndarray, wtype: WeightType) -> Weight:
    if wtype.sparse:  # a matrix the layout holds: 2:4 for Q8_0_24, any for Q8_0_S16
        from corelm.quantize.sparsify import prune

        x = prune(x, 0.5, (2, 4), None) if wtype == WeightType.Q8_0_24 else x
        return Weight.from_float(x, wtype.base).sparse(wtype)
    if wtype.packed:
        w = Weight.from_float(x, wtype.base).packed()
        assert w.type == wtype
        return w
    return Weight.from_float(x, wtype)


# ---- numpy references ----


def quantize_act_np(x):
    """The activation quantization every integer path uses: int8 per block of 32, d = amax/127."""
    b = x.reshape(*x.shape[:-1], -1, 32).astype(np.float32)
    amax = np.abs(b).max(-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(amax == 0, np.float32(0), np.float32(127) / amax).astype(np.float32)
    q = np.rint((b * inv).astype(np.float32))
    return q, (amax / np.float32(127)).astype(np.float32)


def matmul_np(x, w: Weight):
    """float64 result of the exact arithmetic the kernels are specified to do."""
    wf = w.to_float().astype(np.float64)
    if w.type.block_size == 1:
        return x.astype(np.float64) @ wf.T
    q, d = quantize_act_np(x)
    xd = (q * d).reshape(x.shape).astype(np.float64)
    return xd @ wf.T


def magnitude(x, w: Weight):
    wf = np.abs(w.to_float().astype(np.float64))
    return np.abs(x.astype(np.float64)) @ wf.T + 1e-30


# ---- weight formats ----


@pytest.mark.parametrize(
    "wtype", [WeightType.Q8_0, WeightType.Q4_0, WeightType.Q4_1, WeightType.Q5_0, WeightType.Q5_1, WeightType.F16,
              WeightType.BF16], ids=lambda t: t.name)  # fmt: skip
@given(rows=st.sampled_from([1, 3, 7]), blocks=st.integers(1, 9), seed=st.integers(0, 2**31 - 1))
@SETTINGS
def test_quantize_bytes_equal_gguf(wtype, rows, blocks, seed):
    rng = np.random.default_rng(seed)
    x = rand(rng, rows, 32 * blocks, scale=rng.choice([1e-3, 1.0, 300.0]))
    x[0, :32] = 0.0  # an all-zero block: scale 0
    x[-1, 5] = -np.abs(x[-1]).max() * 1.5  # a negative extreme decides Q4_0's sign
    ours = Weight.from_float(x, wtype)
    theirs = gguf.quantize(x, gguf.GGMLQuantizationType(int(wtype)))
    assert ours.data.tobytes() == theirs.tobytes()
    back = gguf.dequantize(theirs, gguf.GGMLQuantizationType(int(wtype))).astype(np.float32)
    np.testing.assert_array_equal(ours.to_float(), back.reshape(x.shape))


def test_fp16_rounding_edges():
    x = np.array([[65504.0, 65520.0, 6.0e-8, 2.98e-8, -0.0, 1e-10, np.inf, -np.inf] * 4], dtype=np.float32)
    ours = Weight.from_float(x, WeightType.F16).data.view(np.float16)
    with np.errstate(over="ignore"):
        expected = x.reshape(-1).astype(np.float16)
    np.testing.assert_array_equal(ours.reshape(-1), expected)


# ---- matmul ----


@pytest.mark.parametrize("wtype", TYPES, ids=lambda t: t.name)
@given(
    m=st.sampled_from(ROWS),
    n=st.sampled_from([1, 3, 4, 17, 64]),
    k=st.sampled_from([32, 64, 96, 256, 512, 2048]),
    seed=st.integers(0, 2**31 - 1),
)
@SETTINGS
def test_matmul_matches_numpy(isa, wtype, m, n, k, seed):
    rng = np.random.default_rng(seed)
    n = rows_for(wtype, n)
    k = k if wtype.block_size == 32 or k % wtype.block_size == 0 else wtype.block_size * max(1, k // wtype.block_size)
    x, w = rand(rng, m, k), make_weight(rand(rng, n, k), wtype)
    y = matmul(x, w)
    assert y.shape == (m, n) and y.dtype == np.float32
    err = np.abs(y - matmul_np(x, w)) / magnitude(x, w)
    assert err.max() < 1e-5, f"{isa} {wtype.name} rel err {err.max()}"


@pytest.mark.parametrize("wtype", [WeightType.F32, WeightType.F16, WeightType.BF16], ids=lambda t: t.name)
def test_matmul_float_types_any_k(isa, wtype):
    rng = np.random.default_rng(1)
    for k in [1, 7, 15, 17, 33, 100]:
        x, w = rand(rng, 3, k), Weight.from_float(rand(rng, 5, k), wtype)
        assert (np.abs(matmul(x, w) - matmul_np(x, w)) / magnitude(x, w)).max() < 1e-5


def unit_scale_problem(wtype: WeightType, m: int, n: int, k: int, seed: int):
    """(x, w, exact x @ codes.T) for a Q8_0 / Q4_0 matrix (packed if wtype is) whose every scale is 1, with
    every code including -128, and activations whose every block has amax 127 (scale exactly 1): each
    output is an integer dot product, exact in float32."""
    rng = np.random.default_rng(seed)
    base = wtype.base
    lo, hi = (-128, 128) if base == WeightType.Q8_0 else (-8, 8)
    codes = rng.integers(lo, hi, size=(n, k))
    blocks = codes.reshape(n, -1, 32)
    one = np.frombuffer(np.float16(1.0).tobytes(), np.uint8)
    if base == WeightType.Q8_0:
        body = blocks.astype(np.int8).view(np.uint8)
    else:
        q = (blocks + 8).astype(np.uint8)
        body = q[..., :16] | (q[..., 16:] << 4)
    raw = np.concatenate([np.broadcast_to(one, (*body.shape[:2], 2)), body], axis=-1)
    w = Weight(np.ascontiguousarray(raw.reshape(n, -1)), base, n, k)
    if wtype.packed:
        w = w.packed()
    x = rng.integers(-127, 128, size=(m, k)).astype(np.float32)
    x.reshape(m, -1, 32)[..., 3] = 127
    return x, w, (x.astype(np.int64) @ codes.T.astype(np.int64)).astype(np.float32)


@pytest.mark.parametrize(
    "wtype", [WeightType.Q8_0, WeightType.Q4_0, WeightType.Q8_0_X16, WeightType.Q4_0_X16], ids=lambda t: t.name
)
def test_integer_dot_is_bit_exact(isa, wtype):
    """With every scale 1, each output is an integer dot product, exact in float32."""
    x, w, expected = unit_scale_problem(wtype, 5, 37 if wtype.packed else 19, 1024, seed=7)
    np.testing.assert_array_equal(matmul(x, w), expected)


@pytest.mark.parametrize("wtype", TYPES, ids=lambda t: t.name)
def test_paths_agree_with_ref(wtype):
    rng = np.random.default_rng(3)
    x, w = rand(rng, 9, 2048), make_weight(rand(rng, rows_for(wtype, 37), 2048), wtype)
    others = [isa for isa in _C.supported_isas() if isa != "ref"]
    if not others:
        pytest.skip("this CPU runs only the ref path: nothing to compare it with")
    previous = _C.isa()
    try:
        _C.set_isa("ref")
        y_ref = matmul(x, w)
        for isa in others:
            _C.set_isa(isa)
            assert (np.abs(matmul(x, w) - y_ref) / magnitude(x, w)).max() < 1e-5, isa
    finally:
        _C.set_isa(previous)


@pytest.mark.parametrize("wtype", TYPES, ids=lambda t: t.name)
def test_result_independent_of_thread_count(wtype):
    rng = np.random.default_rng(4)
    x, w = rand(rng, 7, 1024), make_weight(rand(rng, rows_for(wtype, 300), 1024), wtype)
    previous = _C.num_threads()
    try:
        _C.set_num_threads(1)
        one = matmul(x, w)
        _C.set_num_threads(3)
        np.testing.assert_array_equal(matmul(x, w), one)
    finally:
        _C.set_num_threads(previous)


def test_matmul_from_python_threads():
    """The GIL is released: concurrent calls from Python threads give the same answers."""
    rng = np.random.default_rng(5)
    x, w = rand(rng, 4, 1024), Weight.from_float(rand(rng, 512, 1024), WeightType.Q4_0)
    expected = matmul(x, w)
    results = [None] * 4

    def run(i):
        results[i] = [matmul(x, w) for _ in range(5)]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        for y in r:
            np.testing.assert_array_equal(y, expected)


def test_matmul_out_and_batch_dims():
    rng = np.random.default_rng(6)
    x, w = rand(rng, 2, 3, 64), Weight.from_float(rand(rng, 8, 64), WeightType.Q8_0)
    out = np.empty((2, 3, 8), np.float32)
    y = matmul(x, w, out=out)
    assert y is out or np.shares_memory(y, out)
    np.testing.assert_allclose(out.reshape(6, 8), matmul(x.reshape(6, 64), w), rtol=0, atol=0)


@pytest.mark.parametrize(
    "wtype", [WeightType.Q4_0, WeightType.Q8_0, WeightType.F16, WeightType.BF16], ids=lambda t: t.name
)
def test_pack_round_trip(wtype):
    rng = np.random.default_rng(11)
    w = Weight.from_float(rand(rng, 48, 96), wtype)
    p = w.packed()
    assert p.type.packed and p.nbytes == w.nbytes and p.data.tobytes() != w.data.tobytes()
    assert p.unpacked().data.tobytes() == w.data.tobytes()
    np.testing.assert_array_equal(p.to_float(), w.to_float())
    odd = Weight.from_float(rand(rng, 40, 96), wtype)  # 2 groups + 8 rows left in GGUF layout
    assert odd.packed().type.packed and odd.packed().unpacked().data.tobytes() == odd.data.tobytes()
    np.testing.assert_array_equal(odd.packed().to_float(), odd.to_float())
    assert Weight.from_float(rand(rng, 8, 96), wtype).packed().type == wtype  # no whole group: unchanged


def test_pack_into_out():
    """models._into_arenas packs each matrix straight into its slot of an array."""
    rng = np.random.default_rng(12)
    w = Weight.from_float(rand(rng, 48, 96), WeightType.Q8_0)
    slot = np.empty((48, w.nbytes // 48), np.uint8)
    p = w.packed(out=slot)
    assert np.shares_memory(p.data, slot) and p.data.tobytes() == w.packed().data.tobytes()
    short = Weight.from_float(rand(rng, 8, 96), WeightType.Q8_0)  # nothing to interleave: copied
    copy = short.packed(out=np.empty((8, short.nbytes // 8), np.uint8))
    assert copy.type == WeightType.Q8_0 and copy.data.tobytes() == short.data.tobytes()
    with pytest.raises(ValueError, match="out has shape"):
        w.packed(out=np.empty((47, w.nbytes // 48), np.uint8))
    with pytest.raises(TypeError, match="out must have dtype uint8"):
        w.packed(out=np.empty((48, w.nbytes // 48), np.int8))
    with pytest.raises(ValueError, match="out must not overlap w"):
        _C.pack(w.data, int(w.type), w.n, w.k, w.data)


def test_copy():
    """_C.copy: bytes into a uint8 array of the same size on the thread pool (Weight.packed of a matrix
    already in its layout); pieces of 1 MB, so 3 MB and a bit cover whole pieces and a partial one."""
    src = np.random.default_rng(13).integers(0, 256, (3 << 20) + 77, np.uint8)
    for threads in (1, 2):
        old = _C.num_threads()
        _C.set_num_threads(threads)
        try:
            out = np.zeros_like(src)
            _C.copy(src, out)
            assert np.array_equal(out, src)
        finally:
            _C.set_num_threads(old)
    floats = np.arange(12, dtype=np.float32).reshape(3, 4)
    raw = np.empty(48, np.uint8)
    _C.copy(floats, raw)
    assert raw.tobytes() == floats.tobytes()
    with pytest.raises(ValueError, match="out has 47 bytes, src 48"):
        _C.copy(floats, np.empty(47, np.uint8))
    with pytest.raises(TypeError, match="out must have dtype uint8"):
        _C.copy(floats, np.empty(12, np.float32))
    with pytest.raises(ValueError, match="out must not overlap src"):
        _C.copy(raw[:24], raw[12:36])
    with pytest.raises(ValueError, match="writeable"):
        ro = np.empty(48, np.uint8)
        ro.flags.writeable = False
        _C.copy(floats, ro)
    with pytest.raises(ValueError, match="contiguous"):
        _C.copy(floats[:, ::2], np.empty(24, np.uint8))


# ---- k-quants (random bytes with sane scales are valid blocks; their quantizer is checked against
# llama.cpp's bytes in test_quantize_k.py) ----


def random_kquant(rng, wtype: WeightType, n: int, k: int) -> Weight:
    block_bytes = {WeightType.Q4_K: 144, WeightType.Q5_K: 176, WeightType.Q6_K: 210}[wtype]
    raw = rng.integers(0, 256, size=(n, k // 256, block_bytes), dtype=np.uint8)
    scales = (rng.random((n, k // 256, 2)) * 0.02 + 0.001).astype(np.float16).view(np.uint8)
    if wtype == WeightType.Q6_K:
        raw[..., 208:210] = scales[..., :2]  # d is the last field
    else:
        raw[..., 0:4] = scales.reshape(n, k // 256, 4)  # d, dmin
    return Weight(np.ascontiguousarray(raw.reshape(n, -1)), wtype, n, k)


@pytest.mark.parametrize("wtype", KQUANTS, ids=lambda t: t.name)
def test_kquant_dequantize_equals_gguf(wtype):
    rng = np.random.default_rng(12)
    w = random_kquant(rng, wtype, 5, 512)
    theirs = gguf.dequantize(w.data, gguf.GGMLQuantizationType(int(wtype))).reshape(5, 512)
    np.testing.assert_allclose(w.to_float(), theirs, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(embedding(w, np.array([4, 0], np.int32)), w.to_float()[[4, 0]])


@pytest.mark.parametrize("wtype", KQUANTS, ids=lambda t: t.name)
@given(
    m=st.sampled_from([1, 2, 5]),
    n=st.sampled_from([1, 7, 32, 37]),
    k=st.sampled_from([256, 512, 2048]),
    seed=st.integers(0, 2**31 - 1),
)
@SETTINGS
def test_kquant_matmul_matches_numpy(isa, wtype, m, n, k, seed):
    rng = np.random.default_rng(seed)
    x, w = rand(rng, m, k), random_kquant(rng, wtype, n, k)
    if n >= 16:  # and in the interleaved layout, where the type has one (the tail rows stay as they are)
        p = w.packed()
        err = np.abs(matmul(x, p) - matmul_np(x, w)) / magnitude(x, w)
        assert err.max() < 1e-5, f"{isa} {p.type.name} rel err {err.max()}"
    err = np.abs(matmul(x, w) - matmul_np(x, w)) / magnitude(x, w)
    assert err.max() < 1e-5, f"{isa} {wtype.name} rel err {err.max()}"


def test_kquant_k_must_fit_super_blocks():
    rng = np.random.default_rng(13)
    w = random_kquant(rng, WeightType.Q4_K, 4, 256)
    with pytest.raises(ValueError, match="block size 256"):
        _C.matmul(rand(rng, 1, 128), w.data, int(WeightType.Q4_K), 4)
    with pytest.raises(ValueError, match="not a multiple of Q6_K's block size 256"):
        Weight.from_float(rand(rng, 4, 288), WeightType.Q6_K)


# ---- embedding ----


@pytest.mark.parametrize("wtype", TYPES, ids=lambda t: t.name)
def test_embedding_rows(wtype):
    rng = np.random.default_rng(8)
    w = make_weight(rand(rng, rows_for(wtype, 50), max(64, wtype.block_size)), wtype)
    ids = np.array([0, 49, 47, 17, 7, 7], np.int32)
    np.testing.assert_array_equal(embedding(w, ids), w.to_float()[ids])


# ---- attention ----


def attention_np(q, k, v, n_past, scale, causal=True):
    """k, v: [hkv, keys, d]."""
    m, hq, d = q.shape
    hkv = k.shape[0]
    out = np.zeros((m, hq, d))
    kf, vf = k.astype(np.float64), v.astype(np.float64)
    for i in range(m):
        n_keys = n_past + i + 1 if causal else n_past + m
        for h in range(hq):
            g = h // (hq // hkv)
            s = kf[g, :n_keys] @ q[i, h].astype(np.float64) * scale
            p = np.exp(s - s.max())
            out[i, h] = (p / p.sum()) @ vf[g, :n_keys]
    return out


@pytest.mark.parametrize("d", [64, 80, 96, 128])
@pytest.mark.parametrize("cache", ["float32", "float16"])
@given(
    m=st.sampled_from([1, 2, 5, 70]),
    n_past=st.sampled_from([0, 1, 63, 130]),
    heads=st.sampled_from([(1, 1), (4, 4), (8, 2), (6, 1)]),
    seed=st.integers(0, 2**31 - 1),
)
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_attention_matches_numpy(isa, d, cache, m, n_past, heads, seed):
    rng = np.random.default_rng(seed)
    hq, hkv = heads
    cap = n_past + m + 3
    q = rand(rng, m, hq, d)
    k = rand(rng, hkv, cap, d).astype(cache)
    v = rand(rng, hkv, cap, d).astype(cache)
    scale = 1.0 / np.sqrt(d)
    y = _C.attention(q, k, v, n_past, scale)
    np.testing.assert_allclose(y, attention_np(q, k, v, n_past, scale), rtol=0, atol=2e-5)


@pytest.mark.parametrize("d", [32, 64, 80])
@pytest.mark.parametrize("kv", ["float32", "float16"])
@pytest.mark.parametrize("causal", [False, True])
@given(
    m=st.sampled_from([1, 3, 64, 65, 150, 300]),
    heads=st.sampled_from([(1, 1), (12, 12), (8, 2)]),
    seed=st.integers(0, 2**31 - 1),
)
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_self_attention_matches_numpy(isa, d, kv, causal, m, heads, seed):
    """A step's own rows [m, hkv, d] as keys: every row sees all of them (encoders) or its past."""
    rng = np.random.default_rng(seed)
    hq, hkv = heads
    q = rand(rng, m, hq, d)
    k = rand(rng, m, hkv, d).astype(kv)
    v = rand(rng, m, hkv, d).astype(kv)
    y = _C.self_attention(q, k, v, 0.125, causal=causal)
    expected = attention_np(q, k.transpose(1, 0, 2), v.transpose(1, 0, 2), 0, 0.125, causal=causal)
    np.testing.assert_allclose(y, expected, rtol=0, atol=2e-5)
    # the same rows as a batch of sequences: each attends only to its own rows
    cuts = sorted(set(rng.integers(1, m, 3).tolist())) if m > 1 else []
    bounds = [0, *cuts, m]
    y = _C.self_attention(q, k, v, 0.125, causal=causal, seq_lengths=np.diff(bounds))
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        kt, vt = k[a:b].transpose(1, 0, 2), v[a:b].transpose(1, 0, 2)
        np.testing.assert_allclose(y[a:b], attention_np(q[a:b], kt, vt, 0, 0.125, causal=causal), rtol=0, atol=2e-5)


@pytest.mark.parametrize("heads", [(1, 1), (8, 2)])
@pytest.mark.parametrize("causal", [False, True])
def test_self_attention_long_sequence_in_a_batch(isa, heads, causal):
    """A batch's sequence longer than the short-sequence path (256 rows) takes the lanes path."""
    rng = np.random.default_rng(3)
    (hq, hkv), m, d = heads, 300, 64
    q = rand(rng, m, hq, d)
    k, v = rand(rng, m, hkv, d).astype("float16"), rand(rng, m, hkv, d).astype("float16")
    y = _C.self_attention(q, k, v, 0.125, causal=causal, seq_lengths=np.array([290, 10]))
    for a, b in ((0, 290), (290, 300)):
        kt, vt = k[a:b].transpose(1, 0, 2), v[a:b].transpose(1, 0, 2)
        np.testing.assert_allclose(y[a:b], attention_np(q[a:b], kt, vt, 0, 0.125, causal=causal), rtol=0, atol=2e-5)


# ---- norms, rope, activations ----


@given(rows=st.sampled_from(ROWS), d=st.sampled_from([8, 64, 100, 2048]), seed=st.integers(0, 2**31 - 1))
@SETTINGS
def test_norms(isa, rows, d, seed):
    rng = np.random.default_rng(seed)
    x, w, b = rand(rng, rows, d, scale=3.0), rand(rng, d), rand(rng, d)
    x64 = x.astype(np.float64)
    rms = x64 / np.sqrt((x64**2).mean(-1, keepdims=True) + 1e-5) * w
    np.testing.assert_allclose(_C.rmsnorm(x, w, 1e-5), rms, rtol=1e-5, atol=1e-5)
    mu, var = x64.mean(-1, keepdims=True), x64.var(-1, keepdims=True)
    ln = (x64 - mu) / np.sqrt(var + 1e-5) * w + b
    np.testing.assert_allclose(_C.layernorm(x, w, b, 1e-5), ln, rtol=1e-5, atol=1e-5)
    e = np.exp(x64 - x64.max(-1, keepdims=True))
    # float32 sums of up to 2048 terms: a few ulps of relative error on the largest probabilities
    np.testing.assert_allclose(_C.softmax(x), e / e.sum(-1, keepdims=True), rtol=3e-5, atol=1e-7)


@pytest.mark.parametrize("neox", [False, True])
@given(
    rows=st.sampled_from([1, 3, 17]),
    heads=st.sampled_from([1, 4]),
    d=st.sampled_from([64, 80, 128]),
    partial=st.booleans(),
    pos0=st.integers(0, 5000),
    seed=st.integers(0, 2**31 - 1),
)
@SETTINGS
def test_rope(isa, neox, rows, heads, d, partial, pos0, seed):
    rng = np.random.default_rng(seed)
    n_rot = d // 2 if partial else d
    inv_freq = (1.0 / 10000.0 ** (np.arange(0, n_rot, 2) / n_rot)).astype(np.float32)
    x = rand(rng, rows, heads, d)
    pos = np.arange(pos0, pos0 + rows, dtype=np.int32)
    theta = pos[:, None, None].astype(np.float64) * inv_freq.astype(np.float64)  # [rows, 1, n_rot/2]
    c, s = np.cos(theta), np.sin(theta)
    ref = x.astype(np.float64).copy()
    if neox:
        a, b = ref[..., : n_rot // 2].copy(), ref[..., n_rot // 2 : n_rot].copy()
        ref[..., : n_rot // 2], ref[..., n_rot // 2 : n_rot] = a * c - b * s, a * s + b * c
    else:
        a, b = ref[..., 0:n_rot:2].copy(), ref[..., 1:n_rot:2].copy()
        ref[..., 0:n_rot:2], ref[..., 1:n_rot:2] = a * c - b * s, a * s + b * c
    _C.rope(x, pos, inv_freq, neox)
    # float32 angles carry rounding proportional to the position (~6e-8 rad per radian), as in
    # every runtime; |x| stays below ~5 here.
    np.testing.assert_allclose(x, ref, rtol=0, atol=2e-6 + 4e-7 * (pos0 + rows))


def test_activations(isa):
    from math import erf

    rng = np.random.default_rng(9)
    x, y = rand(rng, 3, 1000, scale=4.0), rand(rng, 3, 1000)
    x64 = x.astype(np.float64)
    silu = x64 / (1 + np.exp(-x64))
    np.testing.assert_allclose(_C.silu(x), silu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_C.swiglu(x, y), silu * y, rtol=1e-5, atol=1e-6)
    gt = 0.5 * x64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64**3)))
    np.testing.assert_allclose(_C.gelu_tanh(x), gt, rtol=1e-5, atol=1e-6)
    ge = 0.5 * x64 * (1 + np.vectorize(erf)(x64 / np.sqrt(2)))
    np.testing.assert_allclose(_C.gelu_erf(x), ge, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(_C.add(x, y), x + y)
    np.testing.assert_array_equal(_C.mul(x, y), x * y)
    np.testing.assert_array_equal(_C.add(x, y[0]), x + y[0])  # bias broadcast over rows


# ---- bad calls raise, never crash ----


def test_bad_calls_raise_clear_errors():
    rng = np.random.default_rng(10)
    w = Weight.from_float(rand(rng, 4, 64), WeightType.Q4_0)
    x = rand(rng, 2, 64)
    with pytest.raises(TypeError, match="float32"):
        matmul(x.astype(np.float64), w)
    with pytest.raises(ValueError, match="C-contiguous"):
        matmul(rand(rng, 64, 2).T, w)
    with pytest.raises(ValueError, match="bytes"):
        matmul(rand(rng, 2, 96), w)  # k disagrees with the weight's bytes
    with pytest.raises(ValueError, match="block size"):
        Weight.from_float(rand(rng, 4, 40), WeightType.Q8_0)
    with pytest.raises(ValueError, match="block size"):
        _C.matmul(rand(rng, 2, 40), w.data, int(WeightType.Q8_0), 4)
    with pytest.raises(ValueError, match="bytes"):
        Weight(w.data[:, :-1].copy(), WeightType.Q4_0, 4, 64)  # truncated
    with pytest.raises(ValueError, match="unsupported weight type"):
        _C.matmul(x, w.data, 99, 4)
    with pytest.raises(IndexError, match="out of range"):
        embedding(w, np.array([1, 4], np.int32))
    with pytest.raises(IndexError, match="out of range"):
        embedding(w, np.array([-1], np.int32))
    with pytest.raises(ValueError, match="shape"):
        matmul(x, w, out=np.empty((2, 5), np.float32))
    with pytest.raises(ValueError, match="elements"):
        _C.rmsnorm(x, rand(rng, 63), 1e-5)
    q = rand(rng, 1, 4, 64)
    cache = rand(rng, 2, 8, 64)
    with pytest.raises(ValueError, match="capacity"):
        _C.attention(q, cache, cache, 8, 0.1)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        _C.attention(rand(rng, 1, 3, 64), cache, cache, 0, 0.1)
    with pytest.raises(ValueError, match="head_dim"):
        _C.attention(rand(rng, 1, 4, 32), cache, cache, 0, 0.1)
    with pytest.raises(TypeError, match="same dtype"):
        _C.attention(q, cache, cache.astype(np.float16), 0, 0.1)
    rows = rand(rng, 3, 2, 64)
    with pytest.raises(ValueError, match=r"\[1, kv_heads, head_dim\]"):
        _C.self_attention(q, rows, rows, 0.1)
    with pytest.raises(ValueError, match="differ in shape"):
        _C.self_attention(rand(rng, 3, 4, 64), rows, rows[:, :1].copy(), 0.1)
    for lengths in ([1, 1], [2, 2], [3, 0], [4, -1]):
        with pytest.raises(ValueError, match="sum to the rows"):
            _C.self_attention(rand(rng, 3, 4, 64), rows, rows, 0.1, seq_lengths=lengths)
    with pytest.raises(ValueError, match="rotary dims"):
        _C.rope(rand(rng, 1, 1, 8), np.zeros(1, np.int32), np.ones(8, np.float32), False)
    with pytest.raises(ValueError, match="writeable"):
        ro = rand(rng, 1, 1, 8)
        ro.flags.writeable = False
        _C.rope(ro, np.zeros(1, np.int32), np.ones(2, np.float32), False)


def test_isa_fallback_warns():
    previous = _C.isa()
    try:
        assert "unknown" in _C.set_isa("sse9")
        assert _C.isa() in _C.supported_isas()
        assert "'amx'" in _C.set_isa("amx") or "amx" in _C.supported_isas()
    finally:
        _C.set_isa(previous)


def test_info_reports_every_kernel():
    info = _C.info()
    assert info["isa"] in info["supported_isas"]
    assert set(info["kernels"]) >= {"matmul_q4_0", "matmul_q8_0", "attention", "rmsnorm", "rope"}
    assert all(path in info["supported_isas"] for path in info["kernels"].values())
    assert info["threads"] >= 1


# ---- matmul epilogue: bias, activation and residual in the same call ----


@pytest.mark.parametrize("wtype", [WeightType.F32, WeightType.Q8_0_X16, WeightType.Q4_0_X16, WeightType.Q4_K],
                         ids=lambda t: t.name)  # fmt: skip
@pytest.mark.parametrize("m", [1, 3, 33, 70])
def test_matmul_bias_and_residual(isa, wtype, m):
    rng = np.random.default_rng(m)
    n, k = 40, 256  # 40 rows: packed layouts have two whole groups and a tail of 8
    x = rand(rng, m, k)
    base = wtype.base
    w = Weight.from_float(rand(rng, n, k), base)
    w = w.packed() if wtype.packed else w
    bias, res = rand(rng, n), rand(rng, m, n)
    plain = matmul(x, w)
    np.testing.assert_allclose(matmul(x, w, bias=bias), plain + bias, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(matmul(x, w, residual=res), plain + res, rtol=1e-6, atol=1e-5)
    out = res.copy()
    matmul(x, w, out=out, bias=bias, residual=out)  # out += x @ w.T + bias
    np.testing.assert_allclose(out, plain + bias + res, rtol=1e-6, atol=1e-5)
    acts = (("gelu_erf", _C.gelu_erf), ("gelu_tanh", _C.gelu_tanh), ("silu", _C.silu), ("relu", _relu))
    for name, act in acts:
        np.testing.assert_allclose(matmul(x, w, bias=bias, activation=name), act(plain + bias), rtol=1e-5, atol=1e-5)
        got = matmul(x, w, residual=res, activation=name)
        np.testing.assert_allclose(got, act(plain) + res, rtol=1e-5, atol=1e-5)


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def test_matmul_epilogue_bad_shapes():
    rng = np.random.default_rng(0)
    x, w = rand(rng, 2, 64), Weight.from_float(rand(rng, 8, 64), WeightType.Q8_0)
    with pytest.raises(ValueError, match="bias has 7 elements, expected n=8"):
        matmul(x, w, bias=rand(rng, 7))
    with pytest.raises(ValueError, match=r"residual has shape \(2, 7\), expected \(2, 8\)"):
        matmul(x, w, residual=rand(rng, 2, 7))
    with pytest.raises(TypeError, match="bias"):
        matmul(x, w, bias=np.zeros(8, np.float64))
    with pytest.raises(ValueError, match="unknown activation 'tanh'"):
        matmul(x, w, activation="tanh")


def test_weight_types_mirror_the_native_table():
    """WeightType's members are the native table's types (one source of facts), and every GGUF type has a
    16-row layout with the same bytes per row."""
    native = {t["name"]: t for t in _C.weight_types()}
    assert {t.name: int(t) for t in WeightType} == {name: t["id"] for name, t in native.items()}
    for t in WeightType:
        assert t.block_size == native[t.name]["block_size"]
        assert _C.row_bytes(int(t), 256) == 256 // t.block_size * native[t.name]["block_bytes"]
        assert t.layout.packed and t.layout.base == t.base
        if not t.sparse:  # the dense 16-row layouts keep their type's bytes
            assert _C.row_bytes(int(t.layout), 256) == _C.row_bytes(int(t.base), 256)
    from corelm.models import QUANT_NAMES
    from corelm.quantize.recipes import TYPE_NAMES

    assert set(QUANT_NAMES) == {t.name.lower() for t in WeightType if not t.packed}
    assert set(TYPE_NAMES) - {"q4_k_m", "q5_k_m"} <= set(QUANT_NAMES)
