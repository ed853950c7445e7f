"""Pretraining on the CPU with torch: the loop, exact checkpoints, the export to HF + GGUF.

One step: B windows of T+1 tokens drawn at random from the training tokens, next-token
cross-entropy over the [B, T, V] logits, AdamW on clipped gradients. Randomness lives in two
places, a torch.Generator seeded by --seed (which windows) and torch's global RNG (weight
init); both are saved in the checkpoint with the model and the optimizer, and the learning
rate is a function of the step, so a resumed run replays the steps an uninterrupted one takes.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tokenizers
import torch
import torch.nn.functional as F
import transformers
from tqdm import tqdm

import corelm
from corelm.formats.gguf_write import write_gguf
from corelm.kernels import WeightType
from corelm.train import data
from corelm.train.config import DEFAULT_CONFIG, DEFAULT_VOCAB, Settings, model_fields

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "corelm-train-checkpoint"
CHECKPOINT_VERSION = 1
GGUF_TYPES = {"q8_0": WeightType.Q8_0, "f16": WeightType.F16, "f32": WeightType.F32}
# Settings whose change on --resume makes the run differ from an uninterrupted one.
_CURVE_SETTINGS = ("steps", "batch", "seq_len", "lr", "warmup", "seed", "dtype")
_FINAL_LOSS_STEPS = 10  # the summary's final train loss is the mean over this many last steps


def say(message: str) -> None:
    tqdm.write(f"corelm train: {message}", file=sys.stderr)


@dataclass
class Prepared:
    """A checked run: everything that can fail on bad input has been tried."""

    out: Path
    settings: Settings
    dtype: str  # "bf16" or "fp32", resolved
    config_name: str
    fields: dict[str, Any]  # LlamaConfig fields, without the vocabulary and token ids
    config: transformers.LlamaConfig
    tokenizer: tokenizers.Tokenizer
    bos: str
    eos: str
    train_ids: torch.Tensor  # int32 [N_train]
    val_ids: torch.Tensor  # int32 [N_val]
    digest: str
    checkpoint: dict[str, Any] | None


# ---- checking the input ----


def _llama_field_names() -> set[str]:
    names = set(inspect.signature(transformers.LlamaConfig.__init__).parameters) - {"self", "kwargs"}
    return names | {"rope_theta", "rope_scaling"}


def load_checkpoint(
    path: Path, fmt: str = CHECKPOINT_FORMAT, version: int = CHECKPOINT_VERSION, kind: str = "training"
) -> dict[str, Any]:
    """A checkpoint written as {"format": fmt, "version": version, ...} (corelm train's by default;
    corelm finetune passes its own), or a clear error."""
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from: {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a damaged file
        raise ValueError(f"{path}: cannot read the checkpoint: {type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != fmt:
        raise ValueError(f"{path}: not a corelm {kind} checkpoint")
    if ckpt.get("version") != version:
        raise ValueError(f"{path}: checkpoint version {ckpt.get('version')}; this corelm reads {version}")
    return ckpt


def resolve_settings(args: argparse.Namespace, saved: dict[str, Any] | None) -> Settings:
    """Command-line values, else the checkpoint's, else the defaults."""
    values = {}
    for f in dataclasses.fields(Settings):
        given = getattr(args, f.name, None)
        base = saved[f.name] if saved else f.default
        values[f.name] = base if given is None else given
        if saved and given is not None and given != base and f.name in _CURVE_SETTINGS:
            say(
                f"--{f.name.replace('_', '-')} {given} differs from the checkpoint's {base}: "
                "the resumed run will not match an uninterrupted one"
            )
    return Settings(**values)  # type: ignore[arg-type]  # every field filled above


def resolve_dtype(choice: str) -> tuple[str, str]:
    """("bf16" | "fp32", why)."""
    features = corelm.info()["features"]
    found = [name for name in ("amx_bf16", "avx512_bf16") if features.get(name)]
    if choice == "fp32":
        return "fp32", "--dtype fp32"
    if choice == "bf16":
        return "bf16", "--dtype bf16" + ("" if found else " (this CPU has no bf16 dot products: slow)")
    if found:
        return "bf16", f"the CPU has {found[0]}"
    return "fp32", "the CPU has no avx512_bf16 / amx_bf16"


def _model_fields(args: argparse.Namespace, ckpt: dict[str, Any] | None) -> tuple[str, dict[str, Any], int | None]:
    """(config name, LlamaConfig fields, vocabulary to train or None) of a new or resumed run."""
    if ckpt is None:
        name = args.config or DEFAULT_CONFIG
        fields = model_fields(name, _llama_field_names())
        from_json = fields.pop("vocab_size", None)
        vocab_size = args.vocab_size or from_json or DEFAULT_VOCAB
        if not args.tokenizer and vocab_size < data.MIN_VOCAB:
            raise ValueError(f"--vocab-size {vocab_size} is too small: byte-level BPE needs at least {data.MIN_VOCAB}")
        return name, fields, vocab_size
    fields = dict(ckpt["fields"])
    if args.config:
        given = model_fields(args.config, _llama_field_names())
        given.pop("vocab_size", None)
        changed = sorted(k for k in set(given) | set(fields) if given.get(k) != fields.get(k))
        if changed:
            raise ValueError(f"--config {args.config} differs from the checkpoint's model in {', '.join(changed)}")
    return ckpt["config_name"], fields, None


def _tokenizer(
    args: argparse.Namespace, ckpt: dict[str, Any] | None, text: str, vocab_size: int | None
) -> tuple[tokenizers.Tokenizer, str, str]:
    """(tokenizer, BOS text, EOS text): the run's own when resuming, --tokenizer, or trained on `text`."""
    if ckpt is None:
        if args.tokenizer:
            return data.load_tokenizer(Path(args.tokenizer))
        assert vocab_size is not None  # a new run names its vocabulary size (_model_fields)
        return data.train_tokenizer(text, vocab_size), data.SPECIAL, data.SPECIAL
    saved = Path(args.out) / "tokenizer.json"
    tok, bos, eos = data.load_tokenizer(saved)
    if args.tokenizer and data.load_tokenizer(Path(args.tokenizer))[0].to_str() != tok.to_str():
        raise ValueError(f"--tokenizer {args.tokenizer} differs from the run's {saved}")
    size = tok.get_vocab_size(with_added_tokens=True)
    if args.vocab_size and args.vocab_size != size:
        raise ValueError(f"--vocab-size {args.vocab_size} differs from the run's vocabulary of {size}")
    return tok, bos, eos


def prepare(args: argparse.Namespace) -> Prepared:
    """Check everything that can be wrong with the input, cheapest first, before any training."""
    out = Path(args.out)
    data.check_output_dir(out)
    ckpt_path = out / CHECKPOINT
    ckpt = load_checkpoint(ckpt_path) if args.resume else None
    if ckpt is None and ckpt_path.exists():
        raise ValueError(
            f"{out} already holds a training run ({CHECKPOINT}): pass --resume to continue it, or choose another --out"
        )
    settings = resolve_settings(args, ckpt["settings"] if ckpt else None)
    config_name, fields, vocab_size = _model_fields(args, ckpt)
    ctx = int(fields.get("max_position_embeddings", 2048))
    settings.seq_len = settings.seq_len or ctx
    if settings.seq_len > ctx:
        raise ValueError(f"--seq-len {settings.seq_len} exceeds the model's context of {ctx} tokens")
    start = ckpt["step"] if ckpt else 0
    if args.stop_after is not None and args.stop_after <= start:
        raise ValueError(f"--stop-after {args.stop_after}: the checkpoint is already at step {start}")

    text = data.read_corpus(Path(args.corpus))
    tok, bos, eos = _tokenizer(args, ckpt, text, vocab_size)
    ids = data.encode_corpus(tok, text, tok.token_to_id(bos))  # type: ignore[arg-type]  # BOS is in the vocabulary
    train_ids, val_ids = data.split_tokens(ids, settings.batch, settings.seq_len)
    digest = data.token_digest(ids)
    if ckpt and ckpt["corpus_digest"] != digest:
        raise ValueError(f"the corpus {args.corpus} is not the one the checkpoint was trained on (its tokens differ)")

    config = transformers.LlamaConfig(
        **fields,
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        bos_token_id=tok.token_to_id(bos),
        eos_token_id=tok.token_to_id(eos),
    )
    dtype, why = resolve_dtype(settings.dtype)
    say(f"compute: {dtype} ({why})")
    return Prepared(
        out=out,
        settings=settings,
        dtype=dtype,
        config_name=config_name,
        fields=fields,
        config=config,
        tokenizer=tok,
        bos=bos,
        eos=eos,
        train_ids=torch.from_numpy(train_ids),
        val_ids=torch.from_numpy(val_ids),
        digest=digest,
        checkpoint=ckpt,
    )


# ---- the steps ----


def lr_at(step: int, s: Settings) -> float:
    """Learning rate of step `step` (1-based): linear warmup to s.lr, then a cosine down to
    s.lr / 10 at step s.steps (and flat after it, when a run is extended)."""
    if step <= s.warmup:
        return s.lr * step / s.warmup
    progress = min(1.0, (step - s.warmup) / max(1, s.steps - s.warmup))
    return s.lr * (0.1 + 0.45 * (1.0 + math.cos(math.pi * progress)))


def sample_batch(ids: torch.Tensor, batch: int, seq_len: int, gen: torch.Generator) -> torch.Tensor:
    """[batch, seq_len + 1] int64 windows at random starts drawn from `gen`."""
    starts = torch.randint(0, len(ids) - seq_len, (batch,), generator=gen)
    return ids[starts[:, None] + torch.arange(seq_len + 1)].long()


def validation_windows(ids: torch.Tensor, n: int, seq_len: int) -> torch.Tensor:
    """[n', seq_len + 1] fixed windows evenly spaced over `ids` (n' <= n: as many as fit)."""
    n = max(1, min(n, len(ids) // (seq_len + 1)))
    last = len(ids) - seq_len - 1
    starts = torch.tensor([i * last // max(1, n - 1) for i in range(n)])
    return ids[starts[:, None] + torch.arange(seq_len + 1)].long()


def lm_loss(model: transformers.LlamaForCausalLM, windows: torch.Tensor, bf16: bool, reduction: str = "mean"):
    """Next-token cross-entropy of windows [B, T+1]: logits of the first T tokens against the last T."""
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(input_ids=windows[:, :-1], use_cache=False).logits  # [B, T, V]
    return F.cross_entropy(logits.float().flatten(0, 1), windows[:, 1:].flatten(), reduction=reduction)


@torch.no_grad()
def evaluate(model: transformers.LlamaForCausalLM, windows: torch.Tensor, batch: int, bf16: bool) -> float:
    """Mean next-token loss over the validation windows."""
    model.eval()
    total = sum(lm_loss(model, windows[i : i + batch], bf16, "sum").item() for i in range(0, len(windows), batch))
    model.train()
    return total / (windows.shape[0] * (windows.shape[1] - 1))


# ---- checkpoints and logs ----


def save_checkpoint(path: Path, p: Prepared, model, opt, gen: torch.Generator, progress: dict[str, Any]) -> None:
    """Everything a resumed run needs to take the same steps, written atomically."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        **progress,  # step, tokens_seen, seconds, step_seconds
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": {"kind": "warmup-cosine", "step": progress["step"]},  # lr = lr_at(step + 1, settings)
        "generator": gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "config": p.config.to_dict(),
        "config_name": p.config_name,
        "fields": p.fields,
        "settings": dataclasses.asdict(p.settings),
        "corpus_digest": p.digest,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


class _NoWriter:
    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def tensorboard_writer(folder: Path, purge_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        say("tensorboard is not installed, so no TensorBoard logs (pip install tensorboard)")
        return _NoWriter()
    return SummaryWriter(str(folder), purge_step=purge_step)


def _read_losses(path: Path, up_to: int | None = None) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in rows if up_to is None or r["step"] <= up_to]


# ---- the run ----


def fit(p: Prepared, stop_after: int | None) -> dict[str, Any]:
    """Train from scratch or from p.checkpoint up to --steps (or --stop-after); returns the
    model and the progress figures."""
    s, out, bf16 = p.settings, p.out, p.dtype == "bf16"
    torch.manual_seed(s.seed)
    model = transformers.LlamaForCausalLM(p.config)
    model.train()
    params = list(model.parameters())
    opt = torch.optim.AdamW(
        [
            {"params": [q for q in params if q.ndim >= 2], "weight_decay": 0.1},
            {"params": [q for q in params if q.ndim < 2], "weight_decay": 0.0},
        ],
        lr=s.lr,
        betas=(0.9, 0.95),
    )
    gen = torch.Generator().manual_seed(s.seed)
    progress: dict[str, Any] = {"step": 0, "tokens_seen": 0, "seconds": 0.0, "step_seconds": 0.0}
    ck = p.checkpoint
    if ck:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        gen.set_state(ck["generator"])
        torch.set_rng_state(ck["torch_rng"])
        progress = {k: ck[k] for k in progress}
    start: int = progress["step"]
    end = min(s.steps, stop_after) if stop_after else s.steps
    n_params = sum(q.numel() for q in params)
    c = p.config
    say(
        f"model {p.config_name}: {n_params / 1e6:.2f}M parameters (hidden {c.hidden_size}, {c.num_hidden_layers} "
        f"layers, {c.num_attention_heads}/{c.num_key_value_heads} heads, ff {c.intermediate_size}, "
        f"vocab {c.vocab_size}, ctx {c.max_position_embeddings})"
    )
    plan = f"steps {start + 1}..{end} of {s.steps}" if end > start else f"nothing to train (at step {start})"
    say(
        f"tokens: {len(p.train_ids):,} train, {len(p.val_ids):,} validation; {plan}, "
        f"{s.batch} x {s.seq_len} tokens a step; threads: {torch.get_num_threads()}"
    )

    losses_path = out / "losses.jsonl"
    kept = _read_losses(losses_path, up_to=start) if ck else []  # drop steps taken after the checkpoint
    losses_path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    if not ck:
        shutil.rmtree(out / "tb", ignore_errors=True)
    writer = tensorboard_writer(out / "tb", purge_step=start + 1 if ck else None)
    val = validation_windows(p.val_ids, s.eval_windows, s.seq_len)
    val_loss = None
    session_tokens, session_seconds, wall0 = 0, 0.0, time.perf_counter()
    bar = tqdm(total=s.steps, initial=start, desc="train", unit="step", dynamic_ncols=True, file=sys.stderr)
    try:
        with open(losses_path, "a", encoding="utf-8") as log:
            for step in range(start + 1, end + 1):
                t0 = time.perf_counter()
                lr = lr_at(step, s)
                for group in opt.param_groups:
                    group["lr"] = lr
                loss = lm_loss(model, sample_batch(p.train_ids, s.batch, s.seq_len, gen), bf16)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0).item()
                opt.step()
                value = loss.item()
                if not math.isfinite(value):
                    raise ValueError(f"training diverged: loss {value} at step {step} (try a lower --lr)")
                dt = time.perf_counter() - t0
                session_tokens += s.batch * s.seq_len
                session_seconds += dt
                progress["step"] = step
                progress["tokens_seen"] += s.batch * s.seq_len
                progress["step_seconds"] += dt
                tps = session_tokens / session_seconds
                log.write(json.dumps({"step": step, "loss": value, "lr": lr}) + "\n")
                writer.add_scalar("train/loss", value, step)
                writer.add_scalar("train/lr", lr, step)
                writer.add_scalar("train/grad_norm", grad_norm, step)
                writer.add_scalar("tokens_per_s", tps, step)
                bar.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}", refresh=False)
                bar.update()
                if step % s.eval_every == 0 or step == end:
                    val_loss = evaluate(model, val, s.batch, bf16)
                    writer.add_scalar("val/loss", val_loss, step)
                    writer.flush()
                    log.flush()
                    bar.write(f"step {step}: train loss {value:.4f}, val loss {val_loss:.4f}", file=sys.stderr)
                    progress["seconds"] = (ck["seconds"] if ck else 0.0) + time.perf_counter() - wall0
                    save_checkpoint(out / CHECKPOINT, p, model, opt, gen, progress)
    finally:
        bar.close()
        writer.close()
    if val_loss is None:  # resumed at the last step: nothing trained, still report
        val_loss = evaluate(model, val, s.batch, bf16)
    return {"model": model, "parameters": n_params, "val_loss": val_loss, "finished": end == s.steps, **progress}


def export(p: Prepared, model: transformers.LlamaForCausalLM, gguf_type: str) -> Path:
    """DIR as a Hugging Face folder (fp32 safetensors), then DIR/model.gguf through corelm."""
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=p.config.bos_token_id, eos_token_id=p.config.eos_token_id
    )
    model.save_pretrained(p.out)
    data.save_tokenizer(p.tokenizer, p.out, p.bos, p.eos, p.config.max_position_embeddings)
    llm = corelm.load(p.out)
    assert llm.tokenizer is not None  # the run saved its tokenizer.json beside the weights
    return write_gguf(
        llm.model,
        p.out / "model.gguf",
        tokenizer_metadata=llm.tokenizer.gguf_metadata(p.config.vocab_size),
        wtype=GGUF_TYPES[gguf_type],
        name=f"corelm-{Path(p.config_name).stem}",
    )


def train(args: argparse.Namespace) -> dict[str, Any]:
    """`corelm train`: check, train, export; returns the summary (also DIR/train_summary.json),
    or the progress figures when --stop-after ends the session early."""
    threads = args.threads or corelm.info()["physical_cores"]
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        p = prepare(args)
        if p.checkpoint is None:
            data.save_tokenizer(p.tokenizer, p.out, p.bos, p.eos, p.config.max_position_embeddings)
        result = fit(p, args.stop_after)
        if not result["finished"]:
            say(f"stopped after step {result['step']} of {p.settings.steps}; continue with --resume")
            return {k: v for k, v in result.items() if k != "model"}
        gguf_path = export(p, result["model"], args.gguf_type)
    finally:
        torch.set_num_threads(previous_threads)

    recent = [r["loss"] for r in _read_losses(p.out / "losses.jsonl")][-_FINAL_LOSS_STEPS:]
    summary = {
        "config_name": p.config_name,
        "config": p.config.to_dict(),
        "parameters": result["parameters"],
        "steps": result["step"],
        "tokens_seen": result["tokens_seen"],
        "final_train_loss": sum(recent) / len(recent) if recent else None,  # mean of the last 10 steps
        "final_val_loss": result["val_loss"],
        "val_perplexity": math.exp(result["val_loss"]),
        "seconds": round(result["seconds"], 2),
        "tokens_per_s": round(result["tokens_seen"] / max(result["step_seconds"], 1e-9), 1),
        "dtype": p.dtype,
        "threads": threads,
        "settings": dataclasses.asdict(p.settings),
        "corpus": str(args.corpus),
        "corpus_tokens": {"train": len(p.train_ids), "validation": len(p.val_ids)},
        "gguf": {"path": gguf_path.name, "type": args.gguf_type},
        "command": shlex.join(sys.argv),
    }
    (p.out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    say(
        f"done: val loss {summary['final_val_loss']:.4f} (perplexity {summary['val_perplexity']:.1f}); "
        f"wrote {p.out} (Hugging Face folder) and {gguf_path}"
    )
    return summary
