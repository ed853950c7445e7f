"""`corelm finetune`: adapt a pretrained model to labelled data on the CPU, and hand it back to corelm.

Like `corelm train`, the only torch code sits behind the command: importing this package, or
`corelm finetune --help`, imports neither torch nor transformers.

    corelm finetune --task token-classification --model MiniLM/ --train train.txt --eval valid.txt \\
        --test test.txt --out runs/ner
    corelm finetune --task causal-lm --model SmolLM2.gguf --method lora --train chats.jsonl --out runs/chat

data.py reads and checks the files (no torch), model.py loads the model, wraps it with peft and
exports it, loop.py trains (AdamW, schedule, bucketed batches, checkpoints, data parallel) and
corelm/analysis/metrics.py scores it with seqeval / scikit-learn, as `corelm eval` does.
"""

from __future__ import annotations

import argparse
import sys

from corelm.argtypes import positive_float, positive_int

__all__ = ["TASKS", "METHODS", "add_parser", "cmd_finetune"]

TASKS = ("token-classification", "sequence-classification", "causal-lm")
METHODS = ("full", "lora", "adalora", "adapter")
GGUF_TYPES = ("q8_0", "q4_0", "q4_k_m", "q6_k", "f16", "f32")
ADAPTER_CONFIGS = ("pfeiffer", "houlsby")

_EPILOG = """\
models (--model): a Hugging Face folder of a gpt2 / llama / qwen2 decoder or a bert / roberta /
distilbert encoder, or a GGUF file of a gpt2 / llama / qwen2 decoder (dequantized to fp32 by
transformers, with the tokenizer and chat template the file holds).

data:
  token-classification     CoNLL-style: `word ... tag` per line (the tag is the last column, BIO),
                           a blank line between sentences, -DOCSTART- skipped. Each sentence's
                           words are joined by spaces and tokenized; a word's first sub-word token
                           carries its tag, the others are ignored (label -100).
  sequence-classification  CSV / TSV with text (or sentence) and label columns, JSONL
                           {"text": ..., "label": ...}, or `sentence@label` lines (PhraseBank).
  causal-lm                JSONL {"text": ...} (loss on every token) or {"messages": [{"role": ...,
                           "content": ...}, ...]} rendered with the model's chat template (loss on
                           the assistant turns only).
  The labels are the training file's; a label or tag of --eval / --test that training never saw is
  an error naming the file and line.

methods (--method), each for every model above (gpt2 / llama / qwen2, bert / roberta / distilbert):
  full      every weight trains. The most capable; the most optimizer memory (2 x the weights).
  lora      peft LoRA on every linear layer (rank --lora-r), the task head trained whole.
  adalora   peft AdaLoRA (LoRA whose ranks are re-allocated during training, from --lora-r * 1.5 down
            to --lora-r on average).
  adapter   AdapterHub bottleneck adapters, the base model frozen, the task head trained whole:
            --adapter-config pfeiffer (SeqBnConfig: one adapter after each block's feed-forward,
            relu) or houlsby (DoubleSeqBnConfig: after attention too, swish); bottleneck width
            n_embd / --reduction-factor. Needs AdapterHub's `adapters` 1.3.0, which requires
            transformers 4.57: install 'corelm[finetune-adapter]' in an environment of its own.
  LoRA and AdaLoRA are merged into the base weights on export. An adapter is a non-linear block
  and cannot be merged: corelm's runtime runs it (the folder holds it as `adapters` saves it; the
  GGUF as blk.N.adapter_* tensors, which corelm reads and llama.cpp does not).

pruned models (corelm sparsify ... --dense, or any model whose matrices are 20%+ exact zeros): the
zeros stay where they are - with full, put back after every step (sparse fine-tuning: it wins back
quality the pruning lost); with lora / adalora, the merged update is masked on export. DIR/model.gguf
then stores those matrices without their zeros (--gguf-type q8_0; docs/sparsity.md).

bidirectional decoders (--bidirectional; token- and sequence-classification, gpt2 / llama / qwen2):
the decoder's self-attention is unmasked, so a word's tag can depend on the words after it (padding
stays masked), through transformers' own switch (config "is_causal": false). The export keeps the
switch (config.json "is_causal": false; GGUF corelm.attention.bidirectional) and corelm runs it
both ways; such a model tags, classifies and embeds, and cannot generate text. llama.cpp would run
its GGUF causally.

training: AdamW (decoupled weight decay on matrices only), linear warmup over the --warmup fraction
of the steps then linear decay to 0, gradient clipping at 1.0, --grad-accum micro-batches a step,
bf16 autocast where the CPU has avx512_bf16 or amx_bf16 (else fp32), batches of sentences of
similar length (padding only to the longest of each batch). Evaluation on --eval after every epoch;
the best epoch (entity micro F1 / accuracy / perplexity) is the one exported. --resume continues
DIR/checkpoint.pt exactly (a checkpoint is written after every epoch and at --stop-after).
Data parallel: `torchrun --nproc-per-node N corelm finetune ...` (gloo): --batch is per process,
each process takes its share of every global batch, gradients are summed once a step.

DIR then holds a Hugging Face folder (merged weights, tokenizer, config with the labels) that
`corelm classify` / `corelm tag` / `corelm eval` load; for causal-lm also DIR/model.gguf
(--gguf-type) for `corelm run` / `corelm chat` / `corelm serve`; finetune_summary.json, report.txt,
checkpoint.pt, best.pt and tb/ (TensorBoard logs).

examples:
  corelm finetune --task token-classification --model all-MiniLM-L6-v2/ \\
      --train conll2003/train.txt --eval conll2003/valid.txt --test conll2003/test.txt --out runs/ner
  corelm finetune --task sequence-classification --model all-MiniLM-L6-v2/ --method lora \\
      --train phrasebank-train.csv --test phrasebank-test.csv --out runs/sentiment
  corelm finetune --task causal-lm --model SmolLM2-135M-Instruct.Q4_1.gguf --method lora \\
      --train answers.jsonl --eval held-out.jsonl --out runs/chat
  corelm tag runs/ner "Peter Blackburn flew to Brussels"
  corelm run runs/chat/model.gguf -p "..."
"""


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `finetune` on the `corelm` command's subparsers; returns its parser."""
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a model on labelled data (tagging, classification, chat); needs the finetune extra",
        description="Fine-tune MODEL for --task on --train (full, LoRA, AdaLoRA or a bottleneck adapter) on the CPU; "
        "report the field's "
        "metrics on --eval after every epoch and on --test at the end; write DIR as a Hugging Face folder "
        "(and a GGUF file for causal LMs) that corelm runs, and check corelm's predictions equal torch's.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_EPILOG,
    )
    p.add_argument("--task", required=True, choices=TASKS, help="what to train the model for")
    p.add_argument("--model", required=True, metavar="MODEL", help="a Hugging Face folder or a .gguf file")
    p.add_argument("--train", required=True, metavar="FILE", help="training data (see below)")
    p.add_argument("--eval", default=None, metavar="FILE", help="held-out data scored after every epoch")
    p.add_argument("--test", default=None, metavar="FILE", help="test data scored once at the end")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--method", choices=METHODS, default="full", help="what trains (default full; see below)")
    p.add_argument("--epochs", type=positive_int, default=3, metavar="N", help="passes over --train (3)")
    p.add_argument("--batch", type=positive_int, default=16, metavar="B", help="examples per micro-batch (16)")
    p.add_argument("--grad-accum", type=positive_int, default=1, metavar="K", help="micro-batches per step (1)")
    p.add_argument(
        "--lr",
        type=positive_float,
        default=None,
        help="peak learning rate (full 5e-5, lora 5e-4, adapter 1e-3)",
    )
    p.add_argument("--warmup", type=_fraction, default=0.06, metavar="F", help="warmup fraction of the steps (0.06)")
    p.add_argument("--weight-decay", type=_non_negative_float, default=0.01, metavar="W", help="AdamW decay (0.01)")
    p.add_argument(
        "--max-len", type=positive_int, default=None, metavar="T", help="tokens per example, longer ones cut (256)"
    )
    p.add_argument("--threads", type=positive_int, default=None, metavar="N", help="torch threads (physical cores)")
    p.add_argument("--seed", type=int, default=42, metavar="S", help="head init, shuffling and dropout seed (42)")
    dtype = p.add_mutually_exclusive_group()
    dtype.add_argument("--bf16", dest="dtype", action="store_const", const="bf16", help="bf16 autocast")
    dtype.add_argument("--fp32", dest="dtype", action="store_const", const="fp32", help="fp32 throughout")
    p.set_defaults(dtype="auto")
    p.add_argument("--lora-r", type=positive_int, default=8, metavar="R", help="LoRA rank (8)")
    p.add_argument("--lora-alpha", type=positive_float, default=None, metavar="A", help="LoRA scale (2 x rank)")
    p.add_argument("--lora-dropout", type=_fraction, default=0.05, metavar="P", help="LoRA dropout (0.05)")
    p.add_argument(
        "--adapter-config", choices=ADAPTER_CONFIGS, default="pfeiffer", help="adapter: which bottleneck (pfeiffer)"
    )
    p.add_argument(
        "--reduction-factor", type=positive_int, default=16, metavar="F", help="adapter: n_embd / bottleneck (16)"
    )
    p.add_argument(
        "--bidirectional",
        action="store_true",
        help="decoders, tagging / classification: every token attends to the whole text, not only to those before it",
    )
    p.add_argument(
        "--limit", type=positive_int, default=None, metavar="N", help="use the first N examples of each file"
    )
    p.add_argument(
        "--no-bucket", action="store_true", help="batches in plain shuffled order (for measuring what bucketing buys)"
    )
    p.add_argument("--gguf-type", choices=GGUF_TYPES, default="q8_0", help="causal-lm: DIR/model.gguf type (q8_0)")
    p.add_argument("--resume", action="store_true", help="continue DIR/checkpoint.pt exactly")
    p.add_argument(
        "--stop-after", type=positive_int, default=None, metavar="K", help="end this session after step K (resumable)"
    )
    p.add_argument("--no-export", action="store_true", help="train and score only (no folder, no runtime check)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_finetune)
    return p


def cmd_finetune(args: argparse.Namespace) -> int:
    if args.method == "adapter":
        try:
            import adapters  # noqa: F401
        except ImportError as e:  # absent, or beside a transformers it does not run on (5.x)
            print(
                f"corelm finetune: error: --method adapter needs AdapterHub's adapters 1.3.0 ({e}); it requires "
                "transformers 4.57 (corelm[finetune] has 5.23): pip install 'corelm[finetune-adapter]' in its own "
                "environment",
                file=sys.stderr,
            )
            return 2
    try:
        from corelm.finetune.run import finetune
    except ImportError as e:
        print(
            f"corelm finetune needs torch, transformers and peft ({e.name}): pip install 'corelm[finetune]'",
            file=sys.stderr,
        )
        return 1
    summary = finetune(args)
    if args.json and summary is not None:
        import json

        print(json.dumps(summary, indent=2))
    return 0
