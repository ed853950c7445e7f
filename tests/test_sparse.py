"""Sparse weight layouts (Q8_0_S16, Q8_0_24, Q8_0_B16; formats.h, docs/sparsity.md): encoding, every kernel path against
the reference, the bounds a corrupted group cannot cross, the GGUF storage, and models that run them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support import run_cli, stories260k

import corelm
from corelm import _C, kernels
from corelm.formats import ModelFileError
from corelm.formats.gguf import SPARSE_COLS, SPARSE_TENSORS, SPARSE_TYPES, load_gguf
from corelm.kernels import SPARSE_LAYOUTS, Weight, WeightType, matmul
from corelm.models import load_model
from corelm.quantize.sparsify import prune, sparsify_model

DEFAULT = "corelm/data/default.gguf"
IDS = [1, 400, 13, 441, 416, 331, 407, 261, 378, 383, 300, 12, 45, 99, 7, 280]


LAYOUTS = [WeightType.Q8_0_S16, WeightType.Q8_0_24, WeightType.Q8_0_B16]


def _q8_0(n: int, k: int, zeros: float, seed: int = 0, two_of_four: bool = False, tiles: bool = False) -> Weight:
    """Random Q8_0 [n, k], `zeros` of it zero: single weights, or with `tiles` whole tiles of 16 x 32 (and
    with `two_of_four` first pruned 2:4)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32)
    if two_of_four:
        w = prune(w, 0.5, (2, 4), None)
    if tiles:
        w[np.repeat(np.repeat(rng.random((n // 16, k // 32)) < zeros, 16, axis=0), 32, axis=1)] = 0
    else:
        w[rng.random((n, k)) < zeros] = 0
    return Weight.from_float(w, WeightType.Q8_0)


def _for(layout: WeightType) -> dict:
    """_q8_0's pattern arguments for a layout's kind of sparsity."""
    return {"two_of_four": layout == WeightType.Q8_0_24, "tiles": layout == WeightType.Q8_0_B16}


def test_the_type_table():
    for t in LAYOUTS:
        assert t.sparse and t.packed and t.base == WeightType.Q8_0
    assert WeightType.Q8_0_S16.own_stride and WeightType.Q8_0_B16.own_stride and not WeightType.Q8_0_24.own_stride
    assert SPARSE_LAYOUTS == {WeightType.Q8_0}
    assert not any(t.sparse for t in WeightType.gguf_types())
    info = {t["name"]: t for t in _C.weight_types()}
    assert info["Q8_0_S16"]["sparsity"] == "unstructured" and info["Q8_0_24"]["sparsity"] == "2:4"
    assert info["Q8_0_B16"]["sparsity"] == "block"
    assert info["Q8_0"]["sparsity"] == "" and _C.row_bytes(int(WeightType.Q8_0_24), 64) == 44


@pytest.mark.parametrize("zeros", [0.0, 0.3, 0.5, 0.7, 0.95, 1.0])
@pytest.mark.parametrize(("n", "k"), [(16, 32), (48, 96), (64, 2048)])
def test_lossless_and_smaller(zeros, n, k):
    q = _q8_0(n, k, zeros)
    s = q.sparse()
    assert s.type == WeightType.Q8_0_S16 and s.data.shape[0] == n
    assert np.array_equal(s.unpacked().data, q.data)  # the same Q8_0 bytes back
    assert np.array_equal(s.to_float(), q.to_float())
    assert np.array_equal(q.packed().sparse().data, s.data)  # from the 16-row layout too
    # Each group: 6 header bytes per row and block, its stored codes (zero weights are exactly the zero
    # codes here) and 64 bytes of padding; every group takes the fullest one's size, in whole 64-byte lines.
    codes = np.count_nonzero(q.to_float().reshape(n // 16, -1), axis=1)
    fullest = 16 * (k // 32) * 6 + int(codes.max()) + 64
    assert s.nbytes == n * (-(-fullest // 64) * 4)
    assert s.stored == codes.sum()
    if zeros >= 0.5 and k >= 1024:  # long rows: the padding is noise
        assert s.nbytes < q.nbytes * (6 + 32 * (1 - zeros)) / 34 * 1.05


@pytest.mark.parametrize("zeros", [0.0, 0.3, 1.0])
@pytest.mark.parametrize(("n", "k"), [(16, 32), (48, 96), (64, 2048)])
def test_two_of_four_lossless_and_fixed_size(zeros, n, k):
    q = _q8_0(n, k, zeros, two_of_four=True)
    s = q.sparse(WeightType.Q8_0_24)
    assert s.nbytes == n * k // 32 * 22 and s.stored == n * k // 2
    assert np.array_equal(s.unpacked().data, q.data)
    assert np.array_equal(s.sparse(WeightType.Q8_0_S16).unpacked().data, q.data)  # one layout to the other


@pytest.mark.parametrize("zeros", [0.0, 0.3, 0.5, 0.7, 1.0])
@pytest.mark.parametrize(("n", "k"), [(16, 32), (48, 96), (64, 2048), (32, 17408)])
def test_blocks_lossless_and_smaller(zeros, n, k):
    q = _q8_0(n, k, zeros, tiles=True)
    s = q.sparse(WeightType.Q8_0_B16)
    assert s.type == WeightType.Q8_0_B16 and np.array_equal(s.unpacked().data, q.data)
    assert np.array_equal(q.packed().sparse(WeightType.Q8_0_B16).data, s.data)
    assert np.array_equal(s.sparse(WeightType.Q8_0_S16).unpacked().data, q.data)  # one layout to the other
    # Each group: its block map (64 bytes per 512 blocks), 544 bytes per block kept; the fullest group's
    # size, in whole 64-byte lines, for every group.
    kept = (q.to_float().reshape(n // 16, 16, k // 32, 32) != 0).any(axis=(1, 3)).sum(axis=1)
    fullest = -(-(k // 32) // 512) * 64 + int(kept.max()) * 544
    assert s.nbytes == n * (-(-fullest // 64) * 4)
    assert s.stored == kept.sum() * 512


def test_rows_not_in_whole_groups_and_other_types_are_refused():
    with pytest.raises(ValueError, match="multiple of 16 rows"):
        _q8_0(24, 64, 0.5).sparse()
    with pytest.raises(ValueError, match="no sparse layout"):
        Weight.from_float(np.zeros((16, 64), np.float32), WeightType.Q4_0).sparse()
    with pytest.raises(ValueError, match="not 2:4 sparse"):
        _q8_0(16, 64, 0.0).sparse(WeightType.Q8_0_24)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 70])
@pytest.mark.parametrize(("n", "k"), [(16, 32), (48, 96), (64, 2048)])
def test_every_path_equals_the_reference(isa, layout, m, n, k):
    """The sparse product equals the dense Q8_0 layout's reference; where the path has its own sparse
    kernel (AVX-512 VBMI / VBMI2, AMX tiles), bit for bit the dense layout's result on that path."""
    q = _q8_0(n, k, 0.3, seed=m, **_for(layout))
    s, d = q.sparse(layout), q.packed()
    x = np.random.default_rng(m).standard_normal((m, k)).astype(np.float32)
    got, same_path_dense = matmul(x, s), matmul(x, d)
    _C.set_isa("ref")
    want = matmul(x, d)
    _C.set_isa(isa)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    if _C.info()["kernels"][layout.kernel] != "ref":
        assert np.array_equal(got, same_path_dense)


def test_prompt_picks_are_never_another_matrix(isa):
    """A prompt's 2:4 tiles reuse each row group's picks within one product (kernels/x86/matmul_sparse.cpp);
    products of other matrices of the same shape, one after another, each get their own."""
    x = np.random.default_rng(1).standard_normal((8, 256)).astype(np.float32)
    for seed in range(4):
        q = _q8_0(32, 256, 0.0, seed=seed, two_of_four=True)
        got, want = matmul(x, q.sparse(WeightType.Q8_0_24)), matmul(x, q.packed())
        if _C.info()["kernels"]["matmul_q8_0_24"] != "ref":
            assert np.array_equal(got, want)
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("tuning", [(2048, 4, True), (0, 1, True), (8192, 1, False)])
def test_decode_streams_of_row_groups(isa, threads, tuning):
    """One activation row streams 4 row groups at a time (Intel's tuning; AMD takes 1), then the rest one
    by one, prefetching or not (dense Q8_0 too, or not: Zen 5's): every count of leftover groups, split over
    the threads, gives the dense layout's result."""
    x = np.random.default_rng(0).standard_normal((1, 256)).astype(np.float32)
    old, old_tuning = _C.num_threads(), _C._decode_tuning()
    _C.set_num_threads(threads)
    _C._decode_tuning(*tuning)
    try:
        for groups in (4, 5, 6, 7, 9, 25):
            q = _q8_0(16 * groups, 256, 0.6, seed=groups)
            got, want = matmul(x, q.sparse()), matmul(x, q.packed())
            if _C.info()["kernels"]["matmul_q8_0s16"] != "ref":
                assert np.array_equal(got, want)
            else:
                assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    finally:
        _C.set_num_threads(old)
        _C._decode_tuning(**old_tuning)


def _cpu_family() -> tuple[str, int]:
    """The vendor and x86 family (base + extended) as Linux reports them."""
    lines = Path("/proc/cpuinfo").read_text().splitlines()[:30]
    fields = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in lines)}
    return fields["vendor_id"], int(fields["cpu family"])


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="Linux reports the CPU in /proc/cpuinfo")
def test_decode_tuning_follows_the_cpu_and_checks_its_input():
    tuning = _C._decode_tuning()
    vendor, family = _cpu_family()
    if vendor != "AuthenticAMD":
        assert tuning == {"prefetch_bytes": 2048, "prefetch_q8_0": True, "sparse_groups": 4}
    elif family >= 0x1A:  # Zen 5 prefetches further on, but not Q8_0_X16
        assert tuning == {"prefetch_bytes": 8192, "prefetch_q8_0": False, "sparse_groups": 1}
    else:  # Zen 3/4 leaves it to the CPU
        assert tuning == {"prefetch_bytes": 0, "prefetch_q8_0": True, "sparse_groups": 1}
    with pytest.raises(ValueError, match="sparse_groups must be 1 or 4"):
        _C._decode_tuning(sparse_groups=2)
    for bad in (-64, 100, True):
        with pytest.raises(ValueError, match="prefetch_bytes must be 0 or a multiple of 64"):
            _C._decode_tuning(prefetch_bytes=bad)
    assert _C._decode_tuning() == tuning


@pytest.mark.parametrize("layout", LAYOUTS)
def test_epilogue_and_lookup(isa, layout):
    q = _q8_0(48, 128, 0.5, **_for(layout))
    s, d = q.sparse(layout), q.packed()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((11, 128)).astype(np.float32)
    bias, res = rng.standard_normal(48).astype(np.float32), rng.standard_normal((11, 48)).astype(np.float32)
    for act in ("", "silu", "gelu_erf"):
        a = matmul(x, s, bias=bias, residual=res, activation=act)
        b = matmul(x, d, bias=bias, residual=res, activation=act)
        assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()
    ids = np.array([0, 47, 16, 3], dtype=np.int32)
    assert np.array_equal(corelm.kernels.embedding(s, ids), corelm.kernels.embedding(d, ids))


def _corrupt(s: Weight) -> np.ndarray:
    bad = s.data.copy()
    bad[:16].reshape(-1)[32:96] = 0xFF  # group 0, block 0: every mask bit set (512 codes announced)
    bad[:16].reshape(-1)[96 + 512 : 96 + 512 + 8] = 0
    return bad


def test_a_corrupted_group_is_named_and_never_read_past(isa):
    s = _q8_0(80, 64, 0.9).sparse()  # 64 columns: each group holds far fewer than 512 codes
    bad = _corrupt(s)
    with pytest.raises(ValueError, match="rows 0..15 announce more stored codes"):
        Weight(bad, WeightType.Q8_0_S16, 80, 64)
    # The raw kernels still run on it (clamped reads inside the group: wrong numbers, no crash), one
    # row group at a time and in decode's streams of 4.
    x = np.ones((9, 64), np.float32)
    old = _C.num_threads()
    for threads in (1, 2):
        _C.set_num_threads(threads)
        for m in (1, 9):
            assert _C.matmul(x[:m], bad, int(WeightType.Q8_0_S16), 80).shape == (m, 80)
    _C.set_num_threads(old)
    assert _C.dequantize(bad, int(WeightType.Q8_0_S16), 80, 64).shape == (80, 64)
    with pytest.raises(ValueError, match="bytes per row cannot hold its headers"):
        _C.matmul(x, np.zeros((32, 8), np.uint8), int(WeightType.Q8_0_S16), 32)


@pytest.mark.parametrize("corruption", ["a block past k", "more blocks than the group holds"])
def test_a_corrupted_block_map_is_named_and_never_read_past(isa, corruption):
    w = np.zeros((64, 96), np.float32)
    w[:, 32:64] = np.random.default_rng(3).standard_normal((64, 32))  # each row group keeps block 1 of 3
    s = Weight.from_float(w, WeightType.Q8_0).sparse(WeightType.Q8_0_B16)
    bad = s.data.copy()
    bad[:16].reshape(-1)[0] |= 0b1000 if corruption == "a block past k" else 0b111  # block 3 of 3, or all 3
    with pytest.raises(ValueError, match="rows 0..15 announce more stored codes"):
        Weight(bad, WeightType.Q8_0_B16, 64, 96)
    x = np.ones((9, 96), np.float32)
    for m in (1, 9):  # wrong numbers at most, read inside the group
        assert _C.matmul(x[:m], bad, int(WeightType.Q8_0_B16), 64).shape == (m, 64)
    assert _C.dequantize(bad, int(WeightType.Q8_0_B16), 64, 96).shape == (64, 96)
    with pytest.raises(ValueError, match="bytes per row cannot hold its headers"):
        _C.matmul(x, np.zeros((32, 2), np.uint8), int(WeightType.Q8_0_B16), 32)


# ---- files and models ----


@pytest.fixture(scope="module")
def default_sparse(tmp_path_factory):
    d = tmp_path_factory.mktemp("sparse")
    sparse, dense = d / "s.gguf", d / "d.gguf"
    sparsify_model(DEFAULT, sparse, 0.5, type="q8_0", progress=False)
    sparsify_model(DEFAULT, dense, 0.5, type="q8_0", progress=False, dense=True)
    return sparse, dense


@pytest.fixture(scope="module")
def default_blocks(tmp_path_factory):
    d = tmp_path_factory.mktemp("blocks")
    sparse, dense = d / "s.gguf", d / "d.gguf"
    sparsify_model(DEFAULT, sparse, 0.5, pattern="block", type="q8_0", progress=False)
    sparsify_model(DEFAULT, dense, 0.5, pattern="block", type="q8_0", progress=False, dense=True)
    return sparse, dense


@pytest.fixture(scope="module")
def default_two_of_four(tmp_path_factory):
    d = tmp_path_factory.mktemp("two_of_four")
    sparse, dense = d / "s.gguf", d / "d.gguf"
    sparsify_model(DEFAULT, sparse, pattern="2:4", type="q8_0", progress=False)
    sparsify_model(DEFAULT, dense, pattern="2:4", type="q8_0", progress=False, dense=True)
    return sparse, dense


def test_the_file_stores_the_sparse_matrices(default_sparse):
    sparse, dense = default_sparse
    f, g = load_gguf(sparse), load_gguf(dense)
    names = f.metadata[SPARSE_TENSORS]
    assert len(names) == 42 and "token_embd.weight" not in names
    assert set(f.metadata[SPARSE_TYPES]) == {"Q8_0_S16"} and SPARSE_TENSORS not in g.metadata
    for name in names:
        t, u = f.tensors[name], g.tensors[name]
        assert t.type == int(WeightType.Q8_0_S16) and t.shape == u.shape and u.type == int(WeightType.Q8_0)
        w = Weight(np.ascontiguousarray(t.data), WeightType.Q8_0_S16, *t.shape)
        assert np.array_equal(w.unpacked().data, u.data)  # --dense holds the same values
    assert sparse.stat().st_size < 0.75 * dense.stat().st_size


@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "block"])
def test_sparse_and_dense_files_give_the_same_logits(default_sparse, default_two_of_four, default_blocks, isa, pattern):
    sparse, dense = {"unstructured": default_sparse, "2:4": default_two_of_four, "block": default_blocks}[pattern]
    layout = {"unstructured": WeightType.Q8_0_S16, "2:4": WeightType.Q8_0_24, "block": WeightType.Q8_0_B16}[pattern]
    assert load_gguf(sparse).metadata[SPARSE_TYPES][0] == layout.name
    a, b = corelm.load(sparse), corelm.load(dense)
    kind = a.model.w["blk.0.ffn_up.weight"].type
    if _C.info()["kernels"][layout.kernel] != "ref":
        assert kind == layout
    else:  # decoded to dense at load: the reference would decode every group on each product
        assert kind in (WeightType.Q8_0, WeightType.Q8_0_X16)
    la, lb = a.logits(IDS), b.logits(IDS)
    assert np.abs(la - lb).max() <= 1e-5 * np.abs(lb).max()
    assert a.generate("Once upon a time", max_tokens=12, temperature=0) == b.generate(
        "Once upon a time", max_tokens=12, temperature=0
    )


def _root(a: np.ndarray) -> object:
    """What these bytes are a view of: an array of the process's own, or a file's mapping."""
    while getattr(a, "base", None) is not None:
        a = a.base
    return a


@pytest.mark.parametrize("arena_bytes", [None, 1 << 20])
def test_the_kernels_stream_arenas_of_their_own(default_sparse, monkeypatch, arena_bytes):
    # A view of the file's mapping (4 KB pages) or a small array of its own would be streamed slower than views
    # of large arrays (models._into_arenas): the default's few, or many with a 1 MB arena, each matrix whole in one.
    if not kernels.packing_pays():
        pytest.skip("the kernels read the matrices as the file stores them on this path")
    for path in (default_sparse[0], DEFAULT):
        want = corelm.load(path).logits(IDS) if arena_bytes else None
        if arena_bytes:
            monkeypatch.setattr(corelm.models, "_ARENA_BYTES", arena_bytes)
        llm = corelm.load(path)
        model = llm.model
        streamed = [w for n, w in model.w.items() if isinstance(w, Weight) and n not in model.lookup_only_weights()]
        arenas: dict[int, list[Weight]] = {}
        for w in streamed:
            arenas.setdefault(id(_root(w.data)), []).append(w)
        assert len(streamed) > 20 and all(type(_root(ws[0].data)) is np.ndarray for ws in arenas.values())
        assert all(w.data.ctypes.data % 64 == 0 for w in streamed)
        if arena_bytes:  # full arenas: a matrix goes alone only when it does not fit with the next
            assert len(arenas) > 2
            assert all(sum(w.nbytes for w in ws) <= arena_bytes or len(ws) == 1 for ws in arenas.values())
        else:
            assert len(arenas) == 1  # these models are far under the default arena size
        if path != DEFAULT and kernels.sparse_pays(WeightType.Q8_0_S16):  # the file's layout, now in the arenas
            assert sum(w.type == WeightType.Q8_0_S16 for w in streamed) == 42
        if arena_bytes:
            assert np.array_equal(llm.logits(IDS), want)
            monkeypatch.undo()


def test_a_rank_share_of_a_sparse_model(default_sparse):
    sparse, dense = default_sparse
    a, _ = load_model(sparse, ranks=(1, 2))
    b, _ = load_model(dense, ranks=(1, 2))
    for name, w in b.w.items():
        if isinstance(w, Weight):
            assert np.array_equal(a.w[name].unpacked().data, w.unpacked().data), name


def test_stories_keeps_what_has_no_sparse_form_dense(tmp_path):
    """stories260K's FFN has 172 rows or columns: no 16-row groups / no Q8_0 blocks, so those stay dense."""
    out = tmp_path / "s.gguf"
    report = sparsify_model(stories260k(), out, 0.5, type="q8_0", progress=False)
    f = load_gguf(out)
    stored = set(f.metadata[SPARSE_TENSORS])
    assert report.stored_sparse == len(stored) > 0
    assert all("attn" in name for name in stored)
    assert corelm.load(out).logits(IDS).shape == (len(IDS), 512)


def _rewrite_metadata(src, dst, **changes) -> None:
    import gguf

    r = load_gguf(src)
    w = gguf.GGUFWriter(dst, r.architecture)
    meta = {**r.metadata, **changes}
    for key, value in meta.items():
        if key in ("general.architecture",) or value is None:
            continue
        if isinstance(value, list):
            w.add_array(key, value)
        elif isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        elif isinstance(value, bool):
            w.add_bool(key, value)
        else:
            w.add_uint32(key, value)
    for name, t in r.tensors.items():
        if t.type == int(WeightType.Q8_0_S16):
            w.add_tensor(name, np.ascontiguousarray(t.data).view(np.int8), raw_dtype=gguf.GGMLQuantizationType.I8)
        elif t.type == int(WeightType.F32):
            w.add_tensor(name, np.ascontiguousarray(t.data).view(np.float32).reshape(t.shape))
        else:
            w.add_tensor(name, np.ascontiguousarray(t.data), raw_dtype=gguf.GGMLQuantizationType(t.type))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: {SPARSE_TYPES: ["Q4_0_X16"] * len(m[SPARSE_TENSORS])}, "unknown type 'Q4_0_X16'"),
        (lambda m: {SPARSE_TENSORS: ["nope.weight"] + m[SPARSE_TENSORS][1:]}, "does not hold"),
        (lambda m: {SPARSE_COLS: m[SPARSE_COLS][1:]}, "differ in length"),
        (lambda m: {SPARSE_COLS: [33] * len(m[SPARSE_COLS])}, "malformed"),
    ],
)
def test_bad_sparse_keys_name_the_problem(default_sparse, tmp_path, change, message):
    sparse, _ = default_sparse
    out = tmp_path / "bad.gguf"
    _rewrite_metadata(sparse, out, **change(load_gguf(sparse).metadata))
    with pytest.raises(ModelFileError, match=message):
        load_gguf(out)


def test_cli_info_names_the_sparse_matrices(default_sparse, capsys):
    sparse, dense = default_sparse
    assert run_cli("info", str(sparse)) == 0
    out = capsys.readouterr().out
    assert "42 Q8_0_S16, 1 Q8_0" in out and "42 sparse matrices, 50.0% zeros" in out
    assert "blk.0.ffn_up.weight" in out
    assert run_cli("info", str(dense)) == 0
    assert "sparse:   none" in capsys.readouterr().out
    assert run_cli("info", str(sparse), "--json") == 0
    tensors = json.loads(capsys.readouterr().out)["model"]["tensors"]
    assert tensors["blk.0.ffn_up.weight"]["type"] == "Q8_0_S16"
    assert 0.45 < tensors["blk.0.ffn_up.weight"]["zeros"] < 0.55
    assert "zeros" not in tensors["token_embd.weight"]


def test_cli_sparsify_dense_flag(tmp_path, capsys):
    out = tmp_path / "d.gguf"
    assert run_cli("sparsify", DEFAULT, str(out), "--sparsity", "0.5", "--type", "q8_0", "--dense", "-q") == 0
    assert "with their zeros" in capsys.readouterr().out
    assert SPARSE_TENSORS not in load_gguf(out).metadata
