"""Make corelm's default model: train it with `corelm train`, ship its GGUF, write its card.

    python scripts/make_default_model.py [--out /tmp/corelm-default]

Runs (about 15-25 minutes on 2 cores):
    corelm train --corpus ../shared/data/corpora/tinyshakespeare.txt --out OUT --config small \
        --vocab-size 2048 --steps 800 --eval-every 100 --threads 2 --seed 1337
then writes the trained Hugging Face folder as an F16 GGUF to corelm/data/default.gguf
(corelm quantize OUT corelm/data/default.gguf --type f16: ~10 MB; at F16 corelm's greedy tokens
equal transformers' on the fp32 folder, while Q8_0's rounding flips a near-tie within a few
tokens), and writes corelm/data/MODEL_CARD.md from OUT/train_summary.json with a sample and the
greedy agreement with transformers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "corpora" / "tinyshakespeare.txt"
TRAIN_ARGS = ["--config", "small", "--vocab-size", "2048", "--steps", "800", "--eval-every", "100",
              "--threads", "2", "--seed", "1337"]  # fmt: skip


def greedy_agreement(out: Path, source: Path, prompt: str, n: int = 48) -> tuple[int, int, list[int]]:
    """How many of corelm's first n greedy tokens (on `source`) equal transformers' (HF folder `out`)."""
    import torch
    import transformers

    import corelm

    llm = corelm.load(source)
    ids = llm.tokenize(prompt)
    from corelm.engine.sampling import SamplingParams
    from corelm.engine.scheduler import Engine, Request

    engine = Engine(llm.model, None, 1, len(ids) + n + 1)
    seq = engine.add(Request(ids, n, SamplingParams(temperature=0), ignore_eos=True))
    for _ in engine.run(seq):
        pass
    ours = seq.tokens
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False)[0][len(ids) :]
    same = 0
    for a, b in zip(ours, theirs.tolist(), strict=False):
        if a != b:
            break
        same += 1
    return same, n, theirs.tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/corelm-default"))
    ap.add_argument("--skip-train", action="store_true", help="reuse a finished run in --out")
    args = ap.parse_args()
    command = [
        "corelm",
        "train",
        "--corpus",
        "../shared/data/corpora/tinyshakespeare.txt",
        "--out",
        str(args.out),
        *TRAIN_ARGS,
    ]
    if not args.skip_train:
        subprocess.run(
            [sys.executable, "-m", "corelm.cli", "train", "--corpus", str(CORPUS), "--out", str(args.out), *TRAIN_ARGS],
            check=True,
        )
    summary = json.loads((args.out / "train_summary.json").read_text())
    data = ROOT / "corelm" / "data"
    data.mkdir(exist_ok=True)
    quantize = ["corelm", "quantize", str(args.out), "corelm/data/default.gguf", "--type", "f16"]
    subprocess.run([sys.executable, "-m", "corelm.cli", *quantize[1:]], check=True, cwd=ROOT)

    import corelm

    llm = corelm.load(data / "default.gguf")
    sample = llm.generate("ROMEO:", max_tokens=120, temperature=0.8, seed=1)
    same_hf, n, reference = greedy_agreement(args.out, args.out, "ROMEO:")
    same, n, _ = greedy_agreement(args.out, data / "default.gguf", "ROMEO:")
    golden = {"prompt": "ROMEO:", "transformers_greedy": reference, "gguf_agrees_for": same}
    (ROOT / "tests" / "golden" / "default_model_transformers.json").write_text(json.dumps(golden) + "\n")
    c = summary["config"]
    size_mb = (data / "default.gguf").stat().st_size / 1e6
    card = f"""# corelm default model

A small Llama-architecture language model trained by corelm's own training code
(`corelm train`), on the CPU, from scratch. It ships inside the package so that corelm can
generate text with no download: `corelm run -p "ROMEO:"`, `corelm chat`, `corelm.load()`.

- **Data**: tinyshakespeare.txt (about 1.1 MB of Shakespeare's plays; public domain), 90/10
  train/validation split of its {summary["corpus_tokens"]["train"] + summary["corpus_tokens"]["validation"]:,} tokens.
- **Licence**: MIT, like corelm; the training text is public domain.
- **Architecture**: Llama (RMSNorm, SwiGLU, RoPE, grouped-query attention): hidden {c["hidden_size"]},
  {c["num_hidden_layers"]} layers, {c["num_attention_heads"]} heads ({c["num_key_value_heads"]} key/value heads),
  feed-forward {c["intermediate_size"]}, context {c["max_position_embeddings"]}, tied embeddings,
  byte-level BPE vocabulary of {c["vocab_size"]}. {summary["parameters"]:,} parameters.
- **File**: `default.gguf`, F16, {size_mb:.1f} MB (loads in corelm and llama.cpp).
- **Training**: {summary["steps"]} steps of {summary["settings"]["batch"]} x {summary["settings"]["seq_len"]}
  tokens ({summary["tokens_seen"]:,} tokens), AdamW, warmup + cosine, {summary["dtype"]} autocast,
  {summary["threads"]} threads, {summary["seconds"] / 60:.0f} minutes.
- **Result**: validation loss {summary["final_val_loss"]:.3f} nats/token (perplexity {summary["val_perplexity"]:.1f});
  final training loss {summary["final_train_loss"]:.3f}.
- **Exactness**: greedy tokens after "ROMEO:", against transformers on the Hugging Face folder the
  training wrote (fp32): corelm on that folder agrees for {same_hf} of {n} tokens; corelm on this F16
  GGUF for {same} of {n}.

Made with (from the repository root; `python scripts/make_default_model.py` runs it and writes this card):

```
{" ".join(command)}
{" ".join(quantize)}
```

Sample (`corelm run -p "ROMEO:" -n 120 --temp 0.8 --seed 1`):

```
ROMEO:{sample}
```
"""
    (data / "MODEL_CARD.md").write_text(card)
    print(card)


if __name__ == "__main__":
    main()
