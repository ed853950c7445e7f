"""Shared test helpers: where the real data files are."""

import os
import tempfile
from pathlib import Path

import pytest

DATA = Path(os.environ.get("CORELM_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def data_file(*parts: str) -> Path:
    """A file in ../shared/data, or skip the test with the reason."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"test data not found: {path} (set CORELM_DATA to the shared data folder)")
    return path


def subprocess_kwargs() -> dict:
    """cwd and env for a child Python that must import the same corelm as the tests: installed or
    built in place. The cwd is neutral so a source checkout there cannot shadow the installed one."""
    import corelm

    env = dict(os.environ)
    root = str(Path(corelm.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return {"cwd": tempfile.gettempdir(), "env": env}


def stories260k() -> Path:
    """The real tiny model (llama2.c's stories260K) in ../shared/data."""
    return data_file("models", "stories260K", "stories260K.gguf")


def greedy_ids(model, ids: list[int], n: int) -> list[int]:
    """The first n greedy token ids after `ids` (stop tokens ignored), as LLM.generate makes them."""
    from corelm.engine.sampling import SamplingParams
    from corelm.engine.scheduler import Engine, Request

    engine = Engine(model, None, 1, len(ids) + n + 1)
    seq = engine.add(Request(list(ids), n, SamplingParams(temperature=0), ignore_eos=True))
    for _ in engine.run(seq):
        pass
    return seq.tokens


def run_cli(*argv: str) -> int:
    """`corelm ARGV...` in this process (the real cli.main)."""
    from corelm import cli

    return cli.main(list(argv))


def random_llama_gguf(path: Path, n_layer: int = 8, seed: int = 0) -> Path:
    """A Llama GGUF (F32) with seeded random weights, widths that k-quants fit (256 / 512), 8 layers
    (so llama.cpp's mixes give some layers more bits) and stories260K's tokenizer, which llama.cpp
    needs to load it. The same bytes on every machine: scripts/make_golden_quantize.py quantizes it
    with llama.cpp and tests/test_quantize_k.py with corelm."""
    import numpy as np

    from corelm.formats.gguf_write import write_gguf
    from corelm.models.base import ModelConfig
    from corelm.models.llama import Llama
    from corelm.tokenizer import Tokenizer

    tok = Tokenizer.from_gguf(stories260k())
    c = ModelConfig("llama", vocab_size=512, n_layer=n_layer, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, ctx=256,
                    norm_eps=1e-5, rope_neox=False)  # fmt: skip
    rng = np.random.default_rng(seed)
    kv = c.n_head_kv * c.head_dim

    def matrix(n: int, k: int) -> np.ndarray:  # heavy-tailed rows, as trained weights have
        return (rng.standard_t(5, size=(n, k)) * 0.05).astype(np.float32)

    w = {"token_embd.weight": matrix(c.vocab_size, c.n_embd), "output.weight": matrix(c.vocab_size, c.n_embd),
         "output_norm.weight": np.ones(c.n_embd, np.float32)}  # fmt: skip
    shapes = {"attn_q": (c.n_embd, c.n_embd), "attn_k": (kv, c.n_embd), "attn_v": (kv, c.n_embd),
              "attn_output": (c.n_embd, c.n_embd), "ffn_gate": (c.n_ff, c.n_embd), "ffn_up": (c.n_ff, c.n_embd),
              "ffn_down": (c.n_embd, c.n_ff)}  # fmt: skip
    for i in range(n_layer):
        for name, (n, k) in shapes.items():
            w[f"blk.{i}.{name}.weight"] = matrix(n, k)
        w[f"blk.{i}.attn_norm.weight"] = np.ones(c.n_embd, np.float32)
        w[f"blk.{i}.ffn_norm.weight"] = np.ones(c.n_embd, np.float32)
    write_gguf(Llama(c, w), path, tokenizer_metadata=tok.gguf_metadata(vocab_size=c.vocab_size), name="kquant-test")
    return path


def random_gpt2_gguf(path: Path, n_layer: int = 8, seed: int = 0) -> Path:
    """A GPT-2 GGUF (F32) with seeded random weights, widths k-quants fit (256 / 1024), 8 layers and
    llama.cpp's gpt-2 vocabulary: its fused attn_qkv and tied embedding take their own rules in
    llama.cpp's mixes. Same bytes on every machine (see random_llama_gguf)."""
    import numpy as np

    from corelm.formats.gguf_write import write_gguf
    from corelm.models.base import ModelConfig
    from corelm.models.gpt2 import GPT2
    from corelm.tokenizer import Tokenizer

    tok = Tokenizer.from_gguf(data_file("tokenizers", "llama.cpp-vocab", "ggml-vocab-gpt-2.gguf"))
    vocab = len(tok.gguf_metadata()["tokenizer.ggml.tokens"])
    c = ModelConfig("gpt2", vocab_size=vocab, n_layer=n_layer, n_embd=256, n_head=4, n_head_kv=4, n_ff=1024,
                    ctx=256, norm_eps=1e-5, tied_embeddings=True)  # fmt: skip
    rng = np.random.default_rng(seed)

    def matrix(n: int, k: int) -> np.ndarray:
        return (rng.standard_t(5, size=(n, k)) * 0.05).astype(np.float32)

    def vector(n: int, one: bool = False) -> np.ndarray:
        return np.ones(n, np.float32) if one else (rng.standard_normal(n) * 0.01).astype(np.float32)

    w = {"token_embd.weight": matrix(vocab, c.n_embd), "position_embd.weight": matrix(c.ctx, c.n_embd),
         "output_norm.weight": vector(c.n_embd, True), "output_norm.bias": vector(c.n_embd)}  # fmt: skip
    shapes = {"attn_qkv": (3 * c.n_embd, c.n_embd), "attn_output": (c.n_embd, c.n_embd),
              "ffn_up": (c.n_ff, c.n_embd), "ffn_down": (c.n_embd, c.n_ff)}  # fmt: skip
    for i in range(n_layer):
        for name, (n, k) in shapes.items():
            w[f"blk.{i}.{name}.weight"] = matrix(n, k)
            w[f"blk.{i}.{name}.bias"] = vector(n)
        for norm in ("attn_norm", "ffn_norm"):
            w[f"blk.{i}.{norm}.weight"] = vector(c.n_embd, True)
            w[f"blk.{i}.{norm}.bias"] = vector(c.n_embd)
    write_gguf(GPT2(c, w), path, tokenizer_metadata=tok.gguf_metadata(vocab_size=vocab), name="kquant-test-gpt2")
    return path
