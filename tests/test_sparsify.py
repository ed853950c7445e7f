"""corelm sparsify (corelm/quantize/sparsify.py): the masks, the recipe, the written file, bad flags."""

from __future__ import annotations

import numpy as np
import pytest
from support import data_file, run_cli, stories260k

import corelm
from corelm.formats.gguf import load_gguf
from corelm.kernels import Weight, WeightType
from corelm.quantize import quantize_model
from corelm.quantize.sparsify import check_args, prune, pruned, sparsegpt, sparsify_model

IDS = [1, 400, 13, 441, 416, 331, 407, 261, 378, 383, 300, 12, 45, 99, 7, 280]


@pytest.fixture(scope="module")
def stories():
    return stories260k()


def _matrices(path) -> dict[str, np.ndarray]:
    """Every matrix of a GGUF file as float32 [n, k]."""
    f = load_gguf(path)
    return {
        n: Weight(np.ascontiguousarray(t.data), WeightType(t.type), *t.shape).to_float()
        for n, t in f.tensors.items()
        if len(t.shape) == 2
    }


# ---- the masks ----


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.7, 0.99])
@pytest.mark.parametrize("k", [64, 172, 5])
def test_unstructured_sparsity_per_row(sparsity, k):
    w = np.random.default_rng(k).standard_normal((9, k)).astype(np.float32)
    p = prune(w, sparsity)
    drop = int(np.floor(sparsity * k + 1e-9))
    assert ((p == 0).sum(axis=1) == drop).all()
    kept = p != 0
    assert np.array_equal(p[kept], w[kept])  # survivors untouched
    # every dropped weight is no larger than every kept one in its row
    for row_w, row_keep in zip(np.abs(w), kept, strict=True):
        if drop and row_keep.any():
            assert row_w[~row_keep].max() <= row_w[row_keep].min()


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8), (1, 4), (3, 4)])
@pytest.mark.parametrize("k", [64, 172, 30])
def test_n_of_m(n, m, k):
    w = np.random.default_rng(n * m + k).standard_normal((7, k)).astype(np.float32)
    p = prune(w, 1 - n / m, (n, m))
    nz = p != 0
    for start in range(0, k, m):
        group = nz[:, start : start + m]
        assert (group.sum(axis=1) == min(n, group.shape[1])).all()  # exactly N (a short last group: at most N)
        a = np.abs(w[:, start : start + m])
        for row_a, row_keep in zip(a, group, strict=True):
            if (~row_keep).any():
                assert row_a[~row_keep].max() <= row_a[row_keep].min()
    assert np.array_equal(p[nz], w[nz])


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.7])
@pytest.mark.parametrize(("n", "k"), [(32, 128), (40, 100), (16, 2048)])
def test_block_tiles(sparsity, n, k):
    """Whole tiles of 16 rows x 32 columns go (the last ones partial): floor(sparsity x tiles) of each 16 rows,
    those of the lowest summed |w|."""
    w = np.random.default_rng(n + k).standard_normal((n, k)).astype(np.float32)
    p = prune(w, sparsity, "block")
    assert np.array_equal(p[p != 0], w[p != 0])
    tiles_per_row = -(-k // 32)
    for r0 in range(0, n, 16):
        zero = [not p[r0 : r0 + 16, c0 : c0 + 32].any() for c0 in range(0, k, 32)]
        assert sum(zero) == int(np.floor(sparsity * tiles_per_row + 1e-9))
        sums = [np.abs(w[r0 : r0 + 16, c0 : c0 + 32]).sum() for c0 in range(0, k, 32)]
        if any(zero) and not all(zero):
            assert max(s for s, z in zip(sums, zero, strict=True) if z) <= min(
                s for s, z in zip(sums, zero, strict=True) if not z
            )
    norms = np.ones(k)
    norms[:32] = 1e9  # Wanda: the first tile of every row group outweighs the rest
    if sparsity:
        assert (prune(w, sparsity, "block", norms)[:, :32] != 0).all()


def test_wanda_weighs_by_activation_norm():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 64)).astype(np.float32)
    for nm in (None, (2, 4)):
        magnitude = prune(w, 0.5, nm)
        assert np.array_equal(prune(w, 0.5, nm, np.full(64, 3.7)), magnitude)  # equal norms: the same mask
        norms = rng.uniform(0.01, 10, 64)
        wanda = prune(w, 0.5, nm, norms)
        assert not np.array_equal(wanda, magnitude)
        assert ((wanda == 0).sum(axis=1) == 32).all()
        # a column with a huge norm is never pruned, one with a tiny norm always is
        norms[5], norms[6] = 1e9, 1e-9
        wanda = prune(w, 0.5, nm, norms)
        assert (wanda[:, 5] == w[:, 5]).all() and (wanda[:, 6] == 0).all()


def test_recipe():
    assert pruned("blk.0.attn_q.weight") and pruned("blk.11.ffn_down.weight") and pruned("blk.3.attn_qkv.weight")
    for name in ("token_embd.weight", "output.weight", "position_embd.weight", "blk.0.adapter_down.weight"):
        assert not pruned(name), name


# ---- the written file ----


@pytest.mark.parametrize(("kw", "zeros"), [({"sparsity": 0.5}, 32), ({"pattern": "2:4"}, 32)])
def test_file_sparsity_and_kept_tensors(stories, tmp_path, kw, zeros):
    out = tmp_path / "s.gguf"
    report = sparsify_model(stories, out, progress=False, **kw)
    src, dst = _matrices(stories), _matrices(out)
    assert set(dst) == set(src)
    for name, w in dst.items():
        if pruned(name):
            k = w.shape[1]
            assert ((w == 0).sum(axis=1) == k // 2).all(), name  # 64 and 172 columns: exactly half
            assert np.array_equal(w[w != 0], src[name][w != 0]), name
            assert report.pruned[name] == pytest.approx(0.5, abs=1e-3)
        else:
            assert np.array_equal(w, src[name]), name  # embeddings and output untouched
    assert sorted(report.kept) == ["output.weight", "token_embd.weight"]
    assert corelm.load(out).logits(IDS).shape[-1] == 512  # it loads and runs


@pytest.mark.parametrize("qtype", ["f32", "q8_0"])
def test_sparsity_zero_equals_dense_conversion(stories, tmp_path, qtype):
    dense, sparse = tmp_path / "d.gguf", tmp_path / "s.gguf"
    quantize_model(stories, dense, qtype, progress=False)
    sparsify_model(stories, sparse, 0.0, type=qtype, progress=False)
    a, b = corelm.load(dense).logits(IDS), corelm.load(sparse).logits(IDS)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("qtype", ["f16", "q8_0", "q4_0"])
def test_quantized_files_keep_the_zeros(stories, tmp_path, qtype):
    out = tmp_path / "s.gguf"
    report = sparsify_model(stories, out, 0.5, type=qtype, progress=False)
    assert report.quantize.types_before == {"F32": 37}
    w = _matrices(out)["blk.0.attn_q.weight"]  # 64 x 64: Q8_0 / Q4_0 blocks fit
    assert ((w == 0).sum(axis=1) >= 32).all()


def test_wanda_file(stories, tmp_path):
    calib = data_file("models", "stories260K", "stories260K.md")
    out, mag = tmp_path / "w.gguf", tmp_path / "m.gguf"
    report = sparsify_model(stories, out, 0.5, method="wanda", calib=calib, calib_tokens=256, progress=False)
    sparsify_model(stories, mag, 0.5, progress=False)
    assert report.quantize.calibrated == len(report.pruned) and not report.no_stats
    w, m = _matrices(out), _matrices(mag)
    assert any(not np.array_equal(w[n] == 0, m[n] == 0) for n in report.pruned)
    assert ((w["blk.0.attn_q.weight"] == 0).sum(axis=1) == 32).all()


def _layer(seed: int = 0, n: int = 32, k: int = 128, samples: int = 512):
    """A layer and inputs whose columns are correlated and of unequal scale, as real activations are."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((k, k)) * 0.3 + np.eye(k)
    x = (rng.standard_normal((samples, k)) @ mix) * rng.uniform(0.2, 3.0, k)
    w = rng.standard_normal((n, k)).astype(np.float32)
    return w, x, x.T @ x / samples


@pytest.mark.parametrize(
    ("sparsity", "nm"), [(0.5, None), (0.7, None), (0.5, (2, 4)), (0.5, (4, 8)), (0.5, "block"), (0.25, "block")]
)
def test_sparsegpt_pattern_and_error(sparsity, nm):
    """SparseGPT keeps the pattern (per-row counts, N of every M, whole tiles) and its output error on the
    inputs it saw is below Wanda's and magnitude's."""
    w, x, gram = _layer()
    p = sparsegpt(w, gram, sparsity, nm, block=32)
    n, k = w.shape
    if nm is None:
        assert ((p == 0).sum(axis=1) == int(sparsity * k)).all()
    elif nm == "block":  # 32 x 128: 2 row groups of 4 tiles, floor(sparsity x 4) of them zero
        tiles = (p.reshape(n // 16, 16, k // 32, 32) != 0).any(axis=(1, 3))
        assert ((~tiles).sum(axis=1) == int(sparsity * k / 32)).all()
        assert ((p.reshape(n // 16, 16, k // 32, 32) == 0).all(axis=(1, 3)) == ~tiles).all()
    else:
        assert ((p.reshape(n, -1, nm[1]) != 0).sum(axis=2) <= nm[0]).all()

    def err(v: np.ndarray) -> float:
        return float(np.square(x @ (w - v).T).mean())

    wanda = prune(w, sparsity, nm, np.sqrt(np.diag(gram)))
    assert err(p) < 0.9 * err(wanda) and err(wanda) < err(prune(w, sparsity, nm))


def test_sparsegpt_without_zeros_to_make_is_the_identity():
    w, _, gram = _layer(1)
    np.testing.assert_allclose(sparsegpt(w, gram, 0.0, None), w, atol=1e-5)


def test_sparsegpt_file(stories, tmp_path):
    calib = data_file("models", "stories260K", "stories260K.md")
    out = tmp_path / "g.gguf"
    report = sparsify_model(stories, out, 0.5, method="sparsegpt", calib=calib, calib_tokens=256, progress=False)
    assert report.quantize.calibrated == len(report.pruned) and not report.no_stats
    w = _matrices(out)["blk.0.attn_q.weight"]
    assert ((w == 0).sum(axis=1) == 32).all()
    assert corelm.load(out).logits(IDS).shape == (len(IDS), 512)


# ---- bad flags: one line, before the model is loaded ----


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--sparsity", "1"], "corelm: error: --sparsity must be in [0, 1), got 1"),
        (["--sparsity", "-0.1"], "corelm: error: --sparsity must be in [0, 1), got -0.1"),
        (["--pattern", "4:2"], "corelm: error: --pattern 4:2: N:M needs 0 < N < M (keep N of every M weights)"),
        (["--pattern", "4:4"], "corelm: error: --pattern 4:4: N:M needs 0 < N < M (keep N of every M weights)"),
        (
            ["--sparsity", "0.5", "--pattern", "blocks"],
            "corelm: error: unknown --pattern 'blocks'; choose unstructured, block or N:M (e.g. 2:4, 4:8)",
        ),
        (
            ["--sparsity", "0.5", "--method", "obs"],
            "corelm: error: unknown --method 'obs'; choose one of magnitude, wanda, sparsegpt",
        ),
        (
            ["--sparsity", "0.5", "--method", "wanda"],
            "corelm: error: --method wanda needs --calib TEXT (the activations it weighs the weights by)",
        ),
        (
            ["--sparsity", "0.5", "--method", "sparsegpt"],
            "corelm: error: --method sparsegpt needs --calib TEXT (the activations it weighs the weights by)",
        ),
        (["--pattern", "2:4", "--sparsity", "0.7"], "corelm: error: --pattern 2:4 means sparsity 0.5"),
        ([], "corelm: error: --sparsity is required with --pattern unstructured"),
    ],
)
def test_bad_flags(tmp_path, capsys, flags, message):
    out = tmp_path / "x.gguf"
    # the input does not exist: the flag error must come first, before any file is opened
    assert run_cli("sparsify", str(tmp_path / "nope.gguf"), str(out), *flags) == 1
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert not out.exists()


def test_check_args_returns_the_pattern_sparsity():
    assert check_args(None, "2:4", "magnitude", None) == 0.5
    assert check_args(None, "1:4", "magnitude", None) == 0.75
    assert check_args(0.3, "unstructured", "magnitude", None) == 0.3


@pytest.mark.parametrize("qtype", ["f32", "q8_0"])
def test_llama_cpp_loads_the_pruned_file(stories, tmp_path, qtype):
    """The issue's --dense export: a plain GGUF llama.cpp runs, with corelm's logits."""
    try:
        import llama_cpp
    except ImportError as e:
        pytest.skip(f"llama.cpp check skipped: llama_cpp (llama-cpp-python) is not importable here ({e})")
    out = tmp_path / "s.gguf"
    sparsify_model(stories, out, pattern="2:4", type=qtype, progress=False, dense=True)
    llm = llama_cpp.Llama(str(out), n_ctx=64, n_threads=1, logits_all=True, verbose=False)
    llm.eval(IDS)
    theirs = np.array(llm.scores[: len(IDS)], dtype=np.float32)
    llm.close()
    ours = corelm.load(out).logits(IDS)  # [len(IDS), vocab]
    # f32: llama.cpp keeps its KV cache in F16 (1.2e-3 measured); q8_0: the two round activations differently
    tol = 3e-3 if qtype == "f32" else 5e-2
    assert np.abs(ours - theirs).max() <= tol * np.abs(theirs).max()


def test_ties_keep_the_earlier_column():
    w = np.ones((2, 8), dtype=np.float32)
    for nm in (None, (2, 4)):
        p = prune(w, 0.5, nm)
        expected = [1, 1, 1, 1, 0, 0, 0, 0] if nm is None else [1, 1, 0, 0, 1, 1, 0, 0]
        assert (p[0] == expected).all() and (p[1] == expected).all()
