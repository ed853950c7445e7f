"""Tensor-parallel inference over MPI: real `mpirun` jobs against the same model in one process.

Each job runs tests/mpi_worker.py on N ranks (one thread each): every rank loads its share of the
model, rank 0 computes and writes its results, which must equal this process's unsplit run.
Skipped with a reason where mpirun or mpi4py is missing (pip install 'corelm[mpi]').
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from support import data_file, subprocess_kwargs

import corelm
from corelm import _C
from corelm.formats.gguf_write import write_gguf

pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install 'corelm[mpi]')")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import mpi_worker  # noqa: E402  (tests/ is on the path, as for hf_models)
from hf_models import CTX, VOCAB, build_hf_model, save_perturbed  # noqa: E402

HERE = Path(__file__).resolve().parent
MPIRUN = shutil.which("mpirun") or shutil.which("mpirun", path=str(Path(sys.executable).parent))
pytestmark = pytest.mark.skipif(MPIRUN is None, reason="no mpirun on PATH (pip install 'corelm[mpi]' brings one)")
TOL = 1e-5  # relative to the logit scale


def mpirun(n: int, spec: dict, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """`mpirun -n n python mpi_worker.py SPEC`; the job's output is returned (check=False)."""
    cmd, kwargs = job_command(n, spec, env)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def job_command(n: int, spec: dict, env: dict | None) -> tuple[list[str], dict]:
    """The mpirun command line and its cwd / env (the same corelm as this process; root allowed)."""
    kwargs = subprocess_kwargs()
    kwargs["env"] |= env or {}
    kwargs["env"] |= {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}  # CI runs as root
    cmd = [str(MPIRUN), "-n", str(n), "--oversubscribe", "--bind-to", "none"]
    for key in [*(env or {}), "PYTHONPATH"]:
        cmd += ["-x", key]
    return [*cmd, sys.executable, str(HERE / "mpi_worker.py"), json.dumps(spec)], kwargs


def run_split(n: int, model: Path, tmp_path: Path, mode: str = "logits", **spec) -> dict:
    out = tmp_path / f"{mode}-{n}.npz"
    job = mpirun(n, {"model": str(model), "out": str(out), "mode": mode, **spec}, env=spec.pop("env", None))
    assert job.returncode == 0, job.stdout + job.stderr
    with np.load(out) as f:
        return {k: f[k] for k in f.files}


def assert_close(ours: np.ndarray, ref: np.ndarray, tol: float = TOL) -> None:
    assert ours.shape == ref.shape
    err = float(np.abs(ours - ref).max() / np.abs(ref).max())
    assert err <= tol, f"max |diff| {err:.3g} of the logit scale > {tol}"


def assert_same_as_single(split: dict, llm: corelm.LLM) -> None:
    ref = mpi_worker.logits(llm)
    assert_close(split["full"], ref["full"])
    assert_close(split["decode"], ref["decode"])
    assert str(split["text"]) == str(ref["text"])


# ---- models: random configs as tests/hf_models.py builds them ----


def shape(hidden: int, heads: int, kv_heads: int, ff: int) -> dict:
    return dict(hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv_heads, intermediate_size=ff) | {
        "num_hidden_layers": 2
    }


QWEN2_GQA = shape(128, 4, 2, 256)
LLAMA_6_HEADS = shape(192, 6, 3, 384)
LLAMA_KQUANT = shape(512, 4, 2, 1024)  # each rank's columns of attn_output are whole k-quant blocks of 256


def build(kind: str, overrides: dict, folder: Path) -> None:
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(
        kind, vocab_size=VOCAB, max_position_embeddings=CTX, rms_norm_eps=1e-5, initializer_range=0.1, **overrides
    )
    save_perturbed(transformers.AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32).eval(), folder)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """HF folders and GGUF files (F32) of: llama with GQA 4/2, gpt2 (2 heads), qwen2 with GQA 4/2,
    qwen3 (q/k norms) and phi3 (fused qkv and gate-up) with GQA 4/2,
    llama 6/3 heads (3 ranks), a wider llama (k-quant blocks of 256 on each rank) and the stock
    qwen2 config (1 key/value head: does not divide)."""
    root = tmp_path_factory.mktemp("tp-models")
    paths = {}
    for name in ("llama-gqa-hd64", "gpt2", "qwen2", "qwen3", "phi3-partial-rope"):
        build_hf_model(name, root / name)
        paths[name] = root / name
    for name, kind, overrides in (
        ("qwen2-gqa", "qwen2", QWEN2_GQA),
        ("llama-6-heads", "llama", LLAMA_6_HEADS),
        ("llama-wide", "llama", LLAMA_KQUANT),
    ):
        build(kind, overrides, root / name)
        paths[name] = root / name
    for name in list(paths):
        paths[name + ".gguf"] = write_gguf(corelm.load(paths[name]).model, root / f"{name}.gguf")
    return paths


# ---- equal to one process ----


SLOW_ARCHS = ("qwen3", "phi3-partial-rope")


@pytest.mark.parametrize(
    "name", ["llama-gqa-hd64", "gpt2", "qwen2-gqa", *(pytest.param(n, marks=pytest.mark.slow) for n in SLOW_ARCHS)]
)
def test_two_ranks_equal_one_process(models, name, tmp_path):
    path = models[name + ".gguf"]
    split = run_split(2, path, tmp_path)
    assert_same_as_single(split, corelm.load(path))
    ranks = json.loads(str(split["ranks"]))
    assert [r["rank"] for r in ranks] == [0, 1]
    whole = sum(getattr(w, "nbytes", 0) for w in corelm.load(path).model.w.values()) / 2**20
    for r in ranks:  # each holds about half the weights (norms and small biases are whole on both)
        assert 0.45 * whole < r["weights_mib"] < 0.56 * whole


def test_hf_folder_split_equals_one_process(models, tmp_path):
    """GPT-2 from its HF folder: Conv1D weights transposed, then sliced."""
    split = run_split(2, models["gpt2"], tmp_path)
    assert_same_as_single(split, corelm.load(models["gpt2"]))


def test_stories260k(tmp_path):
    path = data_file("models/stories260K/stories260K.gguf")
    split = run_split(2, path, tmp_path)
    assert_same_as_single(split, corelm.load(path))


@pytest.mark.slow
@pytest.mark.parametrize("n, name", [(3, "llama-6-heads"), (4, "stories260K")])
def test_more_ranks_than_cores(models, n, name, tmp_path):
    path = data_file("models/stories260K/stories260K.gguf") if name == "stories260K" else models[name + ".gguf"]
    assert_same_as_single(run_split(n, path, tmp_path), corelm.load(path))


@pytest.mark.parametrize(
    "isa",
    [pytest.param(i, marks=[] if i in ("ref", _C.isa()) else [pytest.mark.slow]) for i in _C.supported_isas()],
)
def test_every_kernel_path(models, isa, tmp_path):
    path = models["llama-gqa-hd64.gguf"]
    split = run_split(2, path, tmp_path, env={"CORELM_ISA": isa})
    previous = _C.isa()
    _C.set_isa(isa)
    try:
        assert_same_as_single(split, corelm.load(path))
    finally:
        _C.set_isa(previous)


SLOW_TYPES = ("f16", "bf16", "q4_0", "q5_k", "q6_k")


@pytest.mark.parametrize("quant", ["q8_0", "q4_k", *(pytest.param(q, marks=pytest.mark.slow) for q in SLOW_TYPES)])
def test_quantized_types(models, quant, tmp_path):
    """Each rank quantizes its slices; they hold the same blocks as the whole model's. Integer
    paths quantize activations to int8, so a float rounding difference from the all-reduce's order
    can flip one activation code (and, through the keys and values, the positions after it): the
    logits then differ by a small fraction of what quantizing the weights changes; float types
    stay within TOL."""
    path = models["llama-wide.gguf"]
    split = run_split(2, path, tmp_path, quant=quant)
    ref = mpi_worker.logits(corelm.load(path, quant=quant))
    exact = mpi_worker.logits(corelm.load(path))
    for key in ("full", "decode"):
        scale = np.abs(ref[key]).max()
        err = np.abs(split[key] - ref[key]).max() / scale
        quantization = np.abs(exact[key] - ref[key]).max() / scale
        assert err <= (TOL if quant in ("f16", "bf16") else 0.1 * quantization), (err, quantization)


def test_engine_batches_across_ranks(models, tmp_path):
    """The engine's continuous batching (4 requests, 3 slots, chunked prefill, sampling with a
    seed) and its prefix cache (a running sequence's keys and values copied on every rank)."""
    path = models["llama-gqa-hd64.gguf"]
    split = run_split(2, path, tmp_path, mode="engine")
    ref = mpi_worker.engine(corelm.load(path))
    assert split["cached"].tolist() == ref["cached"].tolist()
    assert split["cached"][3] == 20
    assert split["tokens"].tolist() == ref["tokens"].tolist()


def test_heads_that_do_not_divide(models, tmp_path):
    job = mpirun(2, {"model": str(models["qwen2.gguf"]), "out": str(tmp_path / "x.npz"), "mode": "logits"})
    assert job.returncode != 0
    assert "over 2 ranks" in job.stderr and "1 key/value heads (2 query heads)" in job.stderr


# ---- a rank that dies or hangs ends the job ----


def start_loop(model: Path, tmp_path: Path, env: dict | None = None) -> subprocess.Popen:
    cmd, kwargs = job_command(2, {"model": str(model), "out": str(tmp_path / "loop.npz"), "mode": "loop"}, env)
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
    assert job.stdout is not None
    assert job.stdout.readline().strip() == "generating"  # rank 0 is in its loop, the others follow it
    time.sleep(0.5)
    return job


def follower_pid(job: subprocess.Popen) -> int:
    """The process of rank 1: the worker whose environment says so."""
    for pid in Path("/proc").iterdir():
        if not pid.name.isdigit():
            continue
        try:
            environ = (pid / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"OMPI_COMM_WORLD_RANK=1" in environ and job.args[-1].encode() in (pid / "cmdline").read_bytes():
            return int(pid.name)
    raise AssertionError("rank 1's process not found")


@pytest.mark.parametrize("how", ["killed", "stopped"])
def test_a_lost_rank_ends_the_job(models, how, tmp_path):
    """SIGKILL: mpirun ends the job at once. SIGSTOP (a hung rank): rank 0's all-reduce waits past
    CORELM_MPI_TIMEOUT and aborts the job, saying so."""
    job = start_loop(models["llama-gqa-hd64.gguf"], tmp_path, env={"CORELM_MPI_TIMEOUT": "2"})
    try:
        t0 = time.monotonic()
        os.kill(follower_pid(job), signal.SIGKILL if how == "killed" else signal.SIGSTOP)
        _, err = job.communicate(timeout=30)
        elapsed = time.monotonic() - t0
    except subprocess.TimeoutExpired:
        job.kill()
        _, err = job.communicate()
        raise AssertionError(f"the job did not end in 30 s; it said: {err[-2000:]}") from None
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0
    assert elapsed < 10, f"the job took {elapsed:.1f} s to end"
    if how == "stopped":
        assert "waited 2 s in " in err and "for the other ranks" in err  # in a collective or a broadcast
