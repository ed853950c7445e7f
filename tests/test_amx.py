"""The AMX path, proven without an AMX CPU: the SDM emulator against hand-computed tiles and its edge
cases, every tile kernel run on the emulator ("amx-emu") against the reference path, and - where
the CPU has AMX - the instructions against the emulator."""

import numpy as np
import pytest

import corelm
from corelm import _C
from corelm.kernels import Weight, WeightType, matmul

EMU = "amx-emu"
pytestmark = pytest.mark.skipif(EMU not in _C.supported_isas(), reason="the tile emulator needs an AVX-512 CPU")
HAS_AMX = "amx" in _C.supported_isas()
PACKED = [t for t in WeightType if t.packed]


def tile_op(insn, c, a, b, hardware=False):
    return _C._tile_op(insn, np.ascontiguousarray(c) if c.base is None else c, a, b, hardware)


def dot_np(insn, c, a, b):
    """tdpb*d as numpy: C[m][n] += sum over k, i of A[m][4k+i] * B[k][4n+i], int32 wrap-around."""
    sa, sb = insn[4] == "s", insn[5] == "s"
    av = a.view(np.int8 if sa else np.uint8).astype(np.int64)
    bv = b.view(np.int8 if sb else np.uint8).astype(np.int64)
    k = a.shape[1] // 4
    bt = bv.reshape(k, -1, 4).transpose(0, 2, 1).reshape(4 * k, -1)  # [4k+i, n]
    total = c.view(np.int32).astype(np.int64) + av @ bt
    return ((total + 2**31) % 2**32 - 2**31).astype(np.int32)


def bf16(x):
    """float32 -> bfloat16 bits, round to nearest even."""
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16(h):
    return (h.astype(np.uint32) << 16).view(np.float32)


def dpbf16ps_np(c, a, b):
    """tdpbf16ps in the SDM's order: even and odd products in separate fp32 sums over the row,
    then their sum added to C; every step one float32 rounding, denormals flushed."""
    tiny = np.float32(np.finfo(np.float32).tiny)

    def ftz(v):
        return np.where(np.abs(v) < tiny, np.float32(0) * np.sign(v), v).astype(np.float32)

    af, bf = ftz(from_bf16(a)), ftz(from_bf16(b))  # [rows, 2k], [k, 2n]
    out = c.copy()
    for m in range(c.shape[0]):
        temp = np.zeros(2 * c.shape[1], np.float32)
        for k in range(b.shape[0]):
            for i in range(2):
                # a bfloat16 product is exact in float32, so product-then-add rounds once, as an FMA
                temp[i::2] = ftz(temp[i::2] + af[m, 2 * k + i] * bf[k, i::2])
        out[m] = ftz(ftz(c[m]) + ftz(temp[0::2] + temp[1::2]))
    return out


# ---- the emulator itself ----


def test_tdpbssd_hand_computed():
    # A: 2 rows x 8 bytes (K = 2 dwords), B: 2 rows x 8 bytes (N = 2), C: 2 x 2 int32.
    a = np.array([[1, 2, 3, 4, -1, -2, -3, -4], [-128, 0, 0, 0, 127, 0, 0, 0]], np.int8)
    b = np.array([[1, 1, 1, 1, 2, 0, 0, 0], [1, 0, 0, 1, -128, 0, 0, 0]], np.int8)
    c = np.array([[10, 20], [30, 40]], np.int32)
    # row 0: n=0: (1+2+3+4) + (-1-4) = 5, n=1: 2 + 128 = 130; row 1: n=0: -128 + 127 = -1, n=1: -256 - 16256
    expected = np.array([[15, 150], [29, 40 - 256 - 16256]], np.int32)
    np.testing.assert_array_equal(tile_op("tdpbssd", c, a.view(np.uint8), b.view(np.uint8)), expected)


@pytest.mark.parametrize("insn", ["tdpbssd", "tdpbsud", "tdpbusd", "tdpbuud"])
@pytest.mark.parametrize("m,k,n", [(16, 16, 16), (1, 1, 1), (5, 3, 7), (16, 8, 16), (13, 16, 2)])
def test_tdpb_matches_the_sdm_formula(insn, m, k, n):
    rng = np.random.default_rng(m * 100 + k * 10 + n)
    a = rng.integers(0, 256, (m, 4 * k)).astype(np.uint8)
    b = rng.integers(0, 256, (k, 4 * n)).astype(np.uint8)
    a[0, :4] = 0x80  # -128 / 128 codes at the extremes
    b[0, :4] = 0xFF
    c = rng.integers(-(2**31), 2**31, (m, n)).astype(np.int32)  # large enough to wrap around
    np.testing.assert_array_equal(tile_op(insn, c, a, b), dot_np(insn, c, a, b))


def test_tile_loads_follow_the_stride():
    rng = np.random.default_rng(1)
    wide_a = rng.integers(0, 256, (16, 100)).astype(np.uint8)
    wide_b = rng.integers(0, 256, (8, 96)).astype(np.uint8)
    a, b = wide_a[:, 10:42], wide_b[:, :64]  # rows 100 and 96 bytes apart
    c = np.zeros((16, 16), np.int32)
    np.testing.assert_array_equal(tile_op("tdpbusd", c, a, b), dot_np("tdpbusd", c, a, b))


@pytest.mark.parametrize("m,k,n", [(16, 16, 16), (3, 5, 9), (16, 1, 16)])
def test_tdpbf16ps_matches_the_sdm_order(m, k, n):
    rng = np.random.default_rng(m + k + n)
    a = bf16(rng.standard_normal((m, 2 * k)))
    b = bf16(rng.standard_normal((k, 2 * n)) * 3)
    c = rng.standard_normal((m, n)).astype(np.float32)
    np.testing.assert_array_equal(tile_op("tdpbf16ps", c, a, b), dpbf16ps_np(c, a, b))


def test_tdpbf16ps_flushes_denormals():
    a = np.zeros((1, 2), np.uint16)
    b = np.zeros((1, 2), np.uint16)
    a[0] = [0x0001, bf16(2.0**-70)]  # a bfloat16 denormal (treated as 0) and a tiny normal
    b[0] = [bf16(2.0**100), bf16(2.0**-70)]  # 2^-140: a float32 denormal, flushed to 0
    c = np.array([[np.float32(1e-39)]], np.float32)  # a denormal accumulator reads as 0
    out = tile_op("tdpbf16ps", c, a, b)
    assert out[0, 0] == 0.0
    b[0] = [bf16(2.0**100), bf16(1.0)]
    assert tile_op("tdpbf16ps", c, a, b)[0, 0] == np.float32(2.0**-70)


def test_bad_shapes_fault_like_the_cpu():
    a = np.zeros((4, 8), np.uint8)
    with pytest.raises(RuntimeError, match="src1 colsb / 4 != src2 rows"):
        tile_op("tdpbssd", np.zeros((4, 4), np.int32), a, np.zeros((3, 16), np.uint8))
    with pytest.raises(RuntimeError, match="dest rows != src1 rows"):
        tile_op("tdpbssd", np.zeros((5, 4), np.int32), a, np.zeros((2, 16), np.uint8))
    with pytest.raises(RuntimeError, match="beyond palette 1"):
        tile_op("tdpbssd", np.zeros((17, 4), np.int32), np.zeros((17, 8), np.uint8), np.zeros((2, 16), np.uint8))
    with pytest.raises(ValueError, match="unknown tile instruction"):
        tile_op("tdpfp16ps", np.zeros((1, 1), np.float32), a, a)


@pytest.mark.skipif(not HAS_AMX, reason="this CPU has no AMX (or Linux refused it): the emulator stands in")
@pytest.mark.parametrize("insn", ["tdpbssd", "tdpbsud", "tdpbusd", "tdpbuud", "tdpbf16ps"])
def test_hardware_equals_the_emulator(insn):
    rng = np.random.default_rng(5)
    for m, k, n in [(16, 16, 16), (7, 3, 5)]:
        if insn == "tdpbf16ps":
            a, b = bf16(rng.standard_normal((m, 2 * k))), bf16(rng.standard_normal((k, 2 * n)))
            c = rng.standard_normal((m, n)).astype(np.float32)
        else:
            a, b = rng.integers(0, 256, (m, 4 * k)).astype(np.uint8), rng.integers(0, 256, (k, 4 * n)).astype(np.uint8)
            c = rng.integers(-(2**31), 2**31, (m, n)).astype(np.int32)
        np.testing.assert_array_equal(tile_op(insn, c, a, b, hardware=True), tile_op(insn, c, a, b))


# ---- the tile kernels, on the emulator ----


@pytest.fixture
def emulated():
    previous = _C.isa()
    assert _C.set_isa(EMU) == ""
    yield
    _C.set_isa(previous)


def test_the_emulated_path_runs_the_tile_kernels(emulated):
    kernels = _C.info()["kernels"]
    assert {kernels[t.kernel] for t in PACKED} == {EMU}
    assert kernels["matmul_q8_0"] == "avx512"  # rows outside whole groups of 16, and everything else


@pytest.mark.parametrize("wtype", PACKED, ids=lambda t: t.name)
@pytest.mark.parametrize("m", [7, 8, 16, 17, 40])  # below the tile threshold, one tile, partial tiles
def test_tile_kernels_equal_the_reference(wtype, m):
    rng = np.random.default_rng(m)
    k = 512 if wtype.base in (WeightType.Q4_K, WeightType.Q5_K, WeightType.Q6_K) else 96  # a K tail of 3 blocks
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = Weight.from_float(rng.standard_normal((37, k)).astype(np.float32), wtype.base).packed()
    previous = _C.isa()
    try:
        _C.set_isa("ref")
        y_ref = matmul(x, w)
        _C.set_isa(EMU)
        y = matmul(x, w)
    finally:
        _C.set_isa(previous)
    magnitude = np.abs(x.astype(np.float64)) @ np.abs(w.to_float().astype(np.float64)).T
    assert (np.abs(y - y_ref) / magnitude).max() < 1e-5


@pytest.mark.parametrize("wtype", [WeightType.F32, WeightType.F16, WeightType.BF16], ids=lambda t: t.name)
def test_float_tile_kernels_pad_k(wtype, emulated):
    rng = np.random.default_rng(2)
    for k in [1, 31, 33, 100]:
        x = rng.standard_normal((20, k)).astype(np.float32)
        w = Weight.from_float(rng.standard_normal((16, k)).astype(np.float32), wtype).packed()
        expected = x.astype(np.float64) @ w.to_float().astype(np.float64).T
        magnitude = np.abs(x.astype(np.float64)) @ np.abs(w.to_float().astype(np.float64)).T
        assert (np.abs(matmul(x, w) - expected) / magnitude).max() < 1e-5, k


@pytest.mark.parametrize("wtype", [WeightType.Q8_0_X16, WeightType.Q4_0_X16], ids=lambda t: t.name)
def test_tile_integer_dot_is_bit_exact(wtype, emulated):
    """Scales of 1: every output an integer dot product, all codes including -128 (37 rows: 3 tiles)."""
    from test_kernels import unit_scale_problem

    x, w, expected = unit_scale_problem(wtype, 37, 32, 1024, seed=11)
    np.testing.assert_array_equal(matmul(x, w), expected)


def test_default_model_prefill_on_tiles():
    llm = corelm.load(threads=2)
    ids = llm.tokenize("Once upon a time there was a little girl who lived in a village near the forest.")
    assert len(ids) >= 16
    previous = _C.isa()
    try:
        _C.set_isa("avx512" if "avx512" in _C.supported_isas() else "ref")
        expected = llm.logits(ids)
        _C.set_isa(EMU)
        got = llm.logits(ids)
    finally:
        _C.set_isa(previous)
    assert np.abs(got - expected).max() < 1e-3 * np.abs(expected).max()
    assert (got.argmax(-1) == expected.argmax(-1)).mean() > 0.95


def test_tile_kernels_with_an_epilogue_over_several_calls(emulated):
    """Bias, activation and residual over 300 rows: the tile path's rows per call (256) split it."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((300, 128)).astype(np.float32)
    w = Weight.from_float(rng.standard_normal((48, 128)).astype(np.float32), WeightType.Q8_0).packed()
    bias, res = rng.standard_normal(48).astype(np.float32), rng.standard_normal((300, 48)).astype(np.float32)
    plain = matmul(x, w)
    np.testing.assert_allclose(matmul(x, w, bias=bias, residual=res), plain + bias + res, rtol=1e-6, atol=1e-5)
    _C.set_isa("ref")
    np.testing.assert_allclose(plain, matmul(x, w), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", ["mistral-swa8", "llama-gqa-hd64", "llama-hd128-linear"])
def test_prompt_attention_on_tiles_matches_transformers(name, tmp_path):
    """A prompt of 40 tokens: every layer's products and attention (Mistral's 8-key sliding window,
    Llama's grouped-query heads) run on tiles, and the logits still equal transformers'."""
    pytest.importorskip("torch")
    from hf_models import build_hf_model, hf_logits
    from test_models import IDS, assert_logits_close

    torch_model = build_hf_model(name, tmp_path)
    ids = [int(i) for i in IDS]
    llm = corelm.load(tmp_path)
    previous = _C.isa()
    try:
        _C.set_isa(EMU)
        got = llm.logits(ids)
    finally:
        _C.set_isa(previous)
    assert_logits_close(got, hf_logits(torch_model, ids))
