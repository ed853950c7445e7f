"""`corelm compare`: corelm's named intermediates against transformers', op by op.

The graph hook (models/graph.py) sees every op's output as it runs; transformers gives its
residual stream after the embeddings and after every block (output_hidden_states), and torch
forward hooks give each linear layer's output. Each checkpoint pairs a corelm op with its
transformers counterpart:

- a matrix product (`blk.3.attn_q`) with the module whose weight it holds (the architecture's
  HF name table, read backwards), when the op adds nothing of its own (no residual, no
  activation in its epilogue);
- the end of block i (the block's last op writing the residual stream "x") with
  hidden_states[i + 1], the embeddings with hidden_states[0];
- the final hidden state ("hidden") with the last hidden state, the logits with the logits.

The first checkpoint past the tolerance is where an architecture file or a kernel goes wrong:
the way llama.cpp's per-tensor callback is used against a reference. Needs torch and
transformers (the test extra).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from corelm.models.base import Model, Segment


@dataclass
class Checkpoint:
    op: str  # corelm's op
    reference: str  # what it is compared with in transformers
    max_abs: float  # largest |corelm - transformers|
    scale: float  # largest |transformers|

    @property
    def relative(self) -> float:
        return self.max_abs / self.scale if self.scale else self.max_abs


def _pairs(model: Model, hf_modules: set[str]) -> dict[int, str]:
    """Op index -> transformers' name for what that op's output should equal."""
    from corelm.models import _hf_name_table

    g, n_layer = model.graph, model.config.n_layer
    candidates: dict[str, list[str]] = {}  # GGUF name -> HF spellings (BERT-family files hold several)
    for hf, gg in _hf_name_table(type(model).hf_names, n_layer).items():
        if hf.endswith(".weight"):
            candidates.setdefault(gg.removesuffix(".weight"), []).append(hf.removesuffix(".weight"))
    pairs: dict[int, str] = {}
    for i, op in enumerate(g.ops):
        if op.kind == "matmul" and "residual" not in op.spec and not op.spec.get("activation"):
            spellings = candidates.get(op.name, [])
            pairs[i] = next((m for m in hf_modules for hf in spellings if _same_module(m, hf)), "")
    pairs = {i: m for i, m in pairs.items() if m}
    block_ends = {op.layer: i for i, op in enumerate(g.ops) if op.out == "x" and op.layer >= 0}
    first_block = min((i for i, op in enumerate(g.ops) if op.layer >= 0), default=0)
    embeddings = max((i for i, op in enumerate(g.ops[:first_block]) if op.out == "x"), default=None)
    if embeddings is not None:
        pairs[embeddings] = "hidden_states[0]"
    for layer in range(n_layer - 1):  # the last block's output reaches transformers only after its final norm
        pairs[block_ends[layer]] = f"hidden_states[{layer + 1}]"
    pairs[g.writers["hidden"]] = f"hidden_states[{n_layer}]"
    if "logits" in g.writers:
        pairs[g.writers["logits"]] = "logits"
    return pairs


def _same_module(module: str, hf_name: str) -> bool:
    """Whether a module of the loaded model is the one a name table means (prefixes aside)."""
    return module == hf_name or module.endswith("." + hf_name) or hf_name.endswith("." + module)


def compare(model: Model, reference: str | Path, ids: list[int]) -> list[Checkpoint]:
    """Run `ids` through corelm's model and the transformers model in folder `reference`; one
    Checkpoint per paired intermediate, in the order corelm computes them."""
    import torch
    import transformers

    causal = "logits" in model.graph.widths
    auto = transformers.AutoModelForCausalLM if causal else transformers.AutoModel
    ref = auto.from_pretrained(reference, dtype=torch.float32).eval()
    names = {name for name, _ in ref.named_modules() if name}
    pairs = _pairs(model, names)
    wanted = set(pairs.values())
    outputs: dict[str, np.ndarray] = {}
    handles = [
        module.register_forward_hook(lambda m, a, out, name=name: outputs.__setitem__(name, out.detach().numpy()[0]))
        for name, module in ref.named_modules()
        if name in wanted
    ]
    try:
        with torch.no_grad():
            out = ref(torch.tensor([ids]), output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    for i, h in enumerate(out.hidden_states):
        outputs[f"hidden_states[{i}]"] = h[0].numpy()
    if causal:
        outputs["logits"] = out.logits[0].numpy()

    ours: dict[int, np.ndarray] = {}

    def hook(op: Any, x: np.ndarray | None, y: np.ndarray, seconds: float) -> None:
        index = model.graph.ops.index(op)
        if index in pairs:
            ours[index] = y.copy()

    cache = model.new_cache(len(ids)) if model.config.causal else None
    model.run(np.asarray(ids, np.int32), [Segment(cache, 0, len(ids))], "logits" if causal else "hidden", False, hook)
    result = []
    for index in sorted(ours):
        theirs = outputs[pairs[index]].reshape(ours[index].shape)
        diff = float(np.abs(ours[index] - theirs).max())
        result.append(Checkpoint(model.graph.ops[index].name, pairs[index], diff, float(np.abs(theirs).max())))
    return result


def format_table(points: list[Checkpoint], tol: float) -> str:
    lines = [f"{'corelm op':24} {'transformers':36} {'max |diff|':>11} {'relative':>9}"]
    for p in points:
        flag = "  <-- past tolerance" if p.relative > tol else ""
        lines.append(f"{p.op:24} {p.reference:36} {p.max_abs:11.3g} {p.relative:9.2g}{flag}")
    return "\n".join(lines)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "compare",
        help="compare every named intermediate with transformers' (debugging an architecture or a kernel)",
        description="Run a text through corelm and through transformers (fp32) and compare, op by op, what both "
        "compute: each linear layer's output, the residual stream after the embeddings and every block, the final "
        "hidden state and the logits. The first line past --tol is where the two diverge. Needs torch and "
        "transformers. Exits 1 when a checkpoint is past --tol.",
    )
    p.add_argument("model", help="what corelm runs: a GGUF file or a Hugging Face folder")
    p.add_argument("reference", help="the Hugging Face folder transformers runs (the same model)")
    p.add_argument("-p", "--prompt", default="The quick brown fox jumps over the lazy dog.", help="the text to run")
    p.add_argument("--ids", type=_token_ids, default=None, help="token ids to run instead of a text (comma-separated)")
    p.add_argument("--tol", type=float, default=1e-3, help="largest |diff| relative to the reference's scale")
    p.add_argument("--json", action="store_true", help="one JSON object per checkpoint")
    p.set_defaults(func=run_cli)


def _token_ids(text: str) -> list[int]:
    try:
        ids = [int(i) for i in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated token ids, got {text!r}") from None
    if any(i < 0 for i in ids):
        raise argparse.ArgumentTypeError("token ids must be >= 0")
    return ids


def run_cli(args: argparse.Namespace) -> int:
    import corelm

    if not Path(args.reference, "config.json").is_file():
        raise ValueError(f"{args.reference}: not a Hugging Face folder (no config.json)")
    llm = corelm.load(args.model)
    ids = args.ids or llm.tokenize(args.prompt)
    points = compare(llm.model, args.reference, ids)
    if args.json:
        print(json.dumps([asdict(p) | {"relative": p.relative} for p in points], indent=2))
    else:
        print(format_table(points, args.tol))
    past = [p for p in points if p.relative > args.tol]
    if past and not args.json:
        print(f"first divergence: {past[0].op} ({past[0].relative:.2g} of the reference's scale)")
    return 1 if past else 0
