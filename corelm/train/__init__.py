"""`corelm train`: pretrain a small Llama-architecture model on a text file, on the CPU.

The only part of corelm that uses torch (and transformers), and only once the command runs:
importing this package, or `corelm train --help`, does not import torch.

    corelm train --corpus shakespeare.txt --out runs/small --steps 2000
    corelm train --corpus shakespeare.txt --out runs/small --steps 2000 --resume   # after an interruption

DIR then holds a Hugging Face folder (config.json, model.safetensors, generation_config.json,
tokenizer.json, tokenizer_config.json), model.gguf, train_summary.json, losses.jsonl (one line
per step), checkpoint.pt (to resume or extend) and tb/ (TensorBoard logs).
"""

from __future__ import annotations

import argparse
import sys

from corelm.argtypes import count, positive_float, positive_int
from corelm.train.config import DEFAULT_CONFIG, DEFAULT_VOCAB, PRESETS, Settings

__all__ = ["add_parser", "cmd_train"]

_DEFAULTS = Settings()
_PRESETS = ", ".join(
    f"{k} (hidden {v['hidden_size']}, {v['num_hidden_layers']} layers, ctx {v['max_position_embeddings']})"
    for k, v in PRESETS.items()
)
_EPILOG = f"""\
steps:
  1. check the arguments, the output folder (a probe file), the corpus (UTF-8 text, not empty)
  2. train a byte-level BPE tokenizer on the corpus (GPT-2 pre-tokenizer, <|endoftext|> as BOS
     and EOS) unless --tokenizer gives one; the corpus must fill the asked vocabulary
  3. tokenize: the first 90% of the tokens train, the last 10% validate
  4. pretrain with AdamW (betas 0.9/0.95, weight decay 0.1 on matrices), linear warmup then
     cosine decay to 10% of --lr, gradient clipping at 1.0, bf16 autocast where the CPU has
     bf16 dot products; validate and checkpoint every --eval-every steps
  5. write DIR as a Hugging Face folder, DIR/model.gguf and DIR/train_summary.json

model presets (--config): {_PRESETS}

--resume continues DIR/checkpoint.pt exactly: the losses of an interrupted and resumed run
equal those of an uninterrupted one. Settings not given take the checkpoint's values; a larger
--steps extends a finished run (the schedule then follows the new --steps).

examples:
  corelm train --corpus tinyshakespeare.txt --out runs/shakespeare
  corelm train --corpus tinyshakespeare.txt --out runs/shakespeare --resume
  tensorboard --logdir runs/shakespeare/tb
  corelm run runs/shakespeare/model.gguf -p "ROMEO:"
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `train` on the `corelm` command's subparsers; returns its parser."""
    d = _DEFAULTS
    p = subparsers.add_parser(
        "train",
        help="pretrain a small Llama model on a text file (needs torch + transformers)",
        description="Train a byte-level BPE tokenizer and a Llama-architecture model from scratch on "
        "TEXT_FILE, on the CPU; write DIR as a Hugging Face folder and a GGUF file that corelm runs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_EPILOG,
    )
    p.add_argument("--corpus", required=True, metavar="TEXT_FILE", help="UTF-8 training text")
    p.add_argument(
        "--out", required=True, metavar="DIR", help="output folder (created; holds checkpoints and the model)"
    )
    p.add_argument(
        "--config",
        default=None,
        metavar="tiny|small|PATH.json",
        help=f"model preset, or a JSON file of LlamaConfig fields (default: {DEFAULT_CONFIG})",
    )
    vocab = p.add_mutually_exclusive_group()
    vocab.add_argument(
        "--vocab-size",
        type=positive_int,
        default=None,
        metavar="N",
        help=f"tokenizer vocabulary to train, >= 257 (default: {DEFAULT_VOCAB}, or the JSON config's vocab_size)",
    )
    vocab.add_argument(
        "--tokenizer", default=None, metavar="PATH", help="use this tokenizer.json instead of training one"
    )
    p.add_argument("--steps", type=positive_int, default=None, metavar="N", help=f"optimizer steps ({d.steps})")
    p.add_argument("--batch", type=positive_int, default=None, metavar="B", help=f"windows per step ({d.batch})")
    p.add_argument(
        "--seq-len", type=positive_int, default=None, metavar="T", help="tokens per window (default: the model's ctx)"
    )
    p.add_argument("--lr", type=positive_float, default=None, help=f"peak learning rate ({d.lr:g})")
    p.add_argument("--warmup", type=count, default=None, metavar="N", help=f"linear warmup steps ({d.warmup})")
    p.add_argument(
        "--eval-every",
        type=positive_int,
        default=None,
        metavar="N",
        help=f"validate and checkpoint every N steps ({d.eval_every}), and at the end",
    )
    p.add_argument(
        "--eval-windows",
        type=positive_int,
        default=None,
        metavar="N",
        help=f"validation windows, fixed and evenly spaced ({d.eval_windows})",
    )
    p.add_argument("--threads", type=positive_int, default=None, metavar="N", help="torch threads (physical cores)")
    p.add_argument("--seed", type=int, default=None, metavar="S", help=f"init and sampling seed ({d.seed})")
    p.add_argument(
        "--dtype",
        choices=["auto", "bf16", "fp32"],
        default=None,
        help="compute type: bf16 autocast, fp32, or auto = bf16 where the CPU has avx512_bf16/amx_bf16 (auto)",
    )
    p.add_argument("--resume", action="store_true", help="continue DIR/checkpoint.pt exactly")
    p.add_argument(
        "--stop-after",
        type=positive_int,
        default=None,
        metavar="K",
        help="end this session after step K with a checkpoint (the schedule still spans --steps); "
        "continue later with --resume",
    )
    p.add_argument(
        "--gguf-type", choices=["q8_0", "f16", "f32"], default="q8_0", help="weight type of DIR/model.gguf (q8_0)"
    )
    p.set_defaults(func=cmd_train)
    return p


def cmd_train(args: argparse.Namespace) -> int:
    try:
        from corelm.train.trainer import train
    except ImportError as e:
        print(
            f"corelm train needs torch and transformers ({e}): pip install torch transformers tensorboard",
            file=sys.stderr,
        )
        return 1
    train(args)
    return 0
