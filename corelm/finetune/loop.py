"""The training loop: AdamW, the learning-rate schedule, bucketed batches, gradient accumulation,
data parallelism, evaluation, exact checkpoints.

One optimizer step takes --grad-accum micro-batches of --batch x N examples (N processes under
torchrun; each process takes every N-th example of a micro-batch). The loss of a step is the sum of
its per-token (tagging, causal LM) or per-example (classification) cross-entropies divided by their
count over the whole step on every process, so the summed gradients are the same whatever the
split: N processes give the weights one process gives with the same global batch.

Randomness: the batch order of an epoch is a function of (--seed, epoch) (data.batch_plan), and
torch's RNG (dropout) is saved with the model and optimizer, so a resumed run takes the steps an
uninterrupted one takes.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from corelm.analysis import metrics
from corelm.finetune.data import IGNORE, Example, batch_plan
from corelm.finetune.model import adalora_penalty, adalora_state, apply_masks, load_adalora_state
from corelm.train.trainer import load_checkpoint as train_checkpoint

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
CHECKPOINT_FORMAT = "corelm-finetune-checkpoint"
CHECKPOINT_VERSION = 1
CLIP = 1.0


@dataclass
class Settings:
    """What shapes a run; saved in the checkpoint (a resumed run must use the same)."""

    task: str
    method: str
    epochs: int
    batch: int
    grad_accum: int
    lr: float
    warmup: float
    weight_decay: float
    max_len: int
    seed: int
    dtype: str  # "bf16" or "fp32", resolved
    lora_r: int
    lora_alpha: float | None
    lora_dropout: float
    adapter_config: str  # "pfeiffer" or "houlsby" (method adapter)
    reduction_factor: int
    bucket: bool
    world: int  # processes
    bidirectional: bool = False  # a decoder tagger / classifier whose attention is unmasked


class Ranks:
    """This process's place under torchrun (one process otherwise)."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(self.world)))
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def say(message: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        tqdm.write(f"corelm finetune: {message}", file=sys.stderr)


# ---- batches and losses ----


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ids, attention mask and labels of a micro-batch (padding only to its longest)."""
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    per_token = not isinstance(examples[0].labels, int)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long) if per_token else torch.empty(0)
    for i, e in enumerate(examples):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        mask[i, : len(e.ids)] = 1
        if isinstance(e.labels, list):
            labels[i, : len(e.labels)] = torch.tensor(e.labels)
    if not per_token:
        labels = torch.tensor([e.labels for e in examples], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def forward(model, batch: dict[str, torch.Tensor], bf16: bool) -> torch.Tensor:
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=bf16):
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def loss_sum(task: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of a micro-batch (the caller divides by the step's count)."""
    logits = logits.float()
    if task == "causal-lm":  # position t predicts token t + 1
        logits, labels = logits[:, :-1], labels[:, 1:]
    if task == "sequence-classification":
        return F.cross_entropy(logits, labels, reduction="sum")
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum")


def lr_at(step: int, total: int, s: Settings) -> float:
    """Learning rate of step `step` (1-based): linear warmup over the warmup fraction, then linear to 0."""
    warm = max(1, round(s.warmup * total)) if s.warmup > 0 else 0
    if step <= warm:
        return s.lr * step / warm
    return s.lr * max(0.0, (total - step) / max(1, total - warm))


def optimizer(model, s: Settings) -> torch.optim.Optimizer:
    """AdamW with decoupled weight decay on the trainable matrices (not biases, norms); fused when
    torch offers it on the CPU."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for _, p in named if p.ndim >= 2], "weight_decay": s.weight_decay},
        {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0},
    ]
    try:
        return torch.optim.AdamW(groups, lr=s.lr, betas=(0.9, 0.999), eps=1e-8, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=s.lr, betas=(0.9, 0.999), eps=1e-8, foreach=True)


# ---- evaluation ----


@torch.no_grad()
def predict(model, task: str, examples: list[Example], batch: int, bf16: bool, pad_id: int) -> list[Any]:
    """Per example: the token argmaxes (tagging), the class (classification), or (loss sum, count)
    (causal LM); batches of similar length."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].ids))
    out: list[Any] = [None] * len(examples)
    try:
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            b = collate([examples[i] for i in idx], pad_id)
            logits = forward(model, b, bf16).float()
            for row, i in enumerate(idx):
                n = len(examples[i].ids)
                if task == "token-classification":
                    out[i] = logits[row, :n].argmax(-1).tolist()
                elif task == "sequence-classification":
                    out[i] = int(logits[row].argmax())
                else:
                    count = examples[i].weight
                    out[i] = (float(loss_sum(task, logits[row : row + 1, :n], b["labels"][row : row + 1, :n])), count)
    finally:
        model.train(was_training)
    return out


def word_tags(first_piece: list[int], token_pred: list[int], labels: list[str]) -> list[str]:
    """A sentence's word tags: the prediction at each word's first token ("O" for words cut off)."""
    return [labels[token_pred[t]] if t >= 0 else "O" for t in first_piece]


def evaluate(model, task: str, rows: list[Any], examples: list[Example], labels: list[str], batch: int, bf16: bool,
             pad_id: int) -> tuple[dict[str, Any], list[Any]]:  # fmt: skip
    """(metrics, predictions in the file's terms: word tags per sentence, or a label per text)."""
    pred = predict(model, task, examples, batch, bf16, pad_id)
    if task == "token-classification":
        tags = [word_tags(e.first_piece, p, labels) for e, p in zip(examples, pred, strict=True)]
        return metrics.tagging([s.tags for s in rows], tags), tags
    if task == "sequence-classification":
        names = [labels[p] for p in pred]
        return metrics.classification([label for _, label in rows], names, labels), names
    return metrics.language_model(sum(p[0] for p in pred), sum(p[1] for p in pred)), pred


# ---- checkpoints ----


def save_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    return train_checkpoint(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, kind="finetune")


class _NoWriter:
    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        pass

    def add_text(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


class _Logs:
    """TensorBoard scalars, copied to Weights & Biases (offline, in DIR/wandb) where wandb is installed."""

    def __init__(self, writer, wandb_run) -> None:
        self.writer, self.wandb = writer, wandb_run

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)
        if self.wandb is not None:
            self.wandb.log({tag: value}, step=step)

    def close(self) -> None:
        self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()


def tensorboard_writer(folder: Path, purge_step: int | None, enabled: bool, config: dict[str, Any] | None = None):
    if not enabled:
        return _NoWriter()
    try:
        from torch.utils.tensorboard import SummaryWriter

        writer: Any = SummaryWriter(str(folder), purge_step=purge_step)
    except ImportError:
        say("tensorboard is not installed, so no TensorBoard logs (pip install tensorboard)")
        writer = _NoWriter()
    run = None
    if importlib.util.find_spec("wandb") is not None:
        import wandb

        run = wandb.init(project="corelm-finetune", dir=str(folder.parent), mode="offline", config=config or {})
    return _Logs(writer, run)


# ---- the run ----


@dataclass
class Data:
    train: list[Example]
    eval_rows: list[Any] | None
    eval: list[Example] | None
    labels: list[str]
    pad_id: int


def fit(model, s: Settings, d: Data, out: Path, ranks: Ranks, ckpt: dict[str, Any] | None,
        stop_after: int | None, extra_state: dict[str, Any], show: bool,
        masks: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:  # fmt: skip
    """Train to the last epoch (or --stop-after); returns progress figures and the epoch history.
    The best epoch's weights are in out/best.pt when there is --eval data. masks (a pruned model's):
    after every step the weights they name are zero where they are (sparse fine-tuning)."""
    bf16 = s.dtype == "bf16"
    global_batch = s.batch * ranks.world
    micro = math.ceil(len(d.train) / global_batch)
    steps_per_epoch = math.ceil(micro / s.grad_accum)
    total = steps_per_epoch * s.epochs
    opt = optimizer(model, s)
    params = [p for p in model.parameters() if p.requires_grad]
    lengths = [len(e.ids) for e in d.train]
    progress: dict[str, Any] = {"step": 0, "epoch": 0, "position": 0, "tokens": 0, "seconds": 0.0, "best": None}
    progress["history"] = []
    if ckpt:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng"][ranks.rank])
        load_adalora_state(model, ckpt.get("adalora"))
        progress = {k: ckpt[k] for k in progress}
    else:
        torch.manual_seed(s.seed + ranks.rank)  # dropout
    adalora = type(getattr(model, "base_model", None)).__name__ == "AdaLoraModel"
    writer: Any = tensorboard_writer(
        out / "tb", progress["step"] + 1 if ckpt else None, ranks.main, dataclasses.asdict(s)
    )
    every = max(1, total // 20)  # without a progress bar, a line every 5% of the steps
    bar = tqdm(total=total, initial=progress["step"], desc="finetune", unit="step", dynamic_ncols=True,
               file=sys.stderr, disable=not (show and ranks.main))  # fmt: skip
    session_tokens, session_seconds = 0, 0.0
    log = _loss_log(out / "losses.jsonl", progress["step"] if ckpt else 0, ranks.main)

    def checkpoint() -> None:
        rng = ranks.gather(torch.get_rng_state())
        if ranks.main:
            state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **progress, "rng": rng}
            state |= {"model": model.state_dict(), "optimizer": opt.state_dict(), "settings": dataclasses.asdict(s)}
            state["adalora"] = adalora_state(model)
            save_state(out / CHECKPOINT, state | extra_state)
        ranks.barrier()

    model.train()
    try:
        for epoch in range(progress["epoch"], s.epochs):
            plan = batch_plan(lengths, global_batch, s.seed, epoch, s.bucket)
            steps = [plan[i : i + s.grad_accum] for i in range(0, len(plan), s.grad_accum)]
            t_epoch = time.perf_counter()
            for position in range(progress["position"], len(steps)):
                t0 = time.perf_counter()
                group = steps[position]
                count = sum(d.train[i].weight for b in group for i in b)
                lr = lr_at(progress["step"] + 1, total, s)
                for g in opt.param_groups:
                    g["lr"] = lr
                loss_value, tokens = 0.0, 0
                for b in group:
                    mine = [d.train[i] for i in b[ranks.rank :: ranks.world]]
                    if not mine:
                        continue
                    batch = collate(mine, d.pad_id)
                    loss = loss_sum(s.task, forward(model, batch, bf16), batch["labels"]) / max(count, 1)
                    loss.backward()
                    loss_value += loss.item()
                    tokens += int(batch["attention_mask"].sum())
                penalty = adalora_penalty(model) if adalora and ranks.main else None
                if penalty is not None:
                    penalty.backward()
                if ranks.world > 1:
                    _sum_gradients(params, ranks)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, CLIP))
                opt.step()
                if masks:
                    apply_masks(model, masks)
                progress["step"] += 1
                if adalora:
                    model.base_model.update_and_allocate(progress["step"])
                opt.zero_grad(set_to_none=True)
                figures = ranks.sum_(torch.tensor([loss_value, float(tokens)], dtype=torch.float64))
                loss_value, tokens = float(figures[0]), int(figures[1])
                if not math.isfinite(loss_value):
                    raise ValueError(f"training diverged: loss {loss_value} at step {progress['step']} (lower --lr)")
                dt = time.perf_counter() - t0
                session_tokens += tokens
                session_seconds += dt
                progress["tokens"] += tokens
                progress["seconds"] += dt
                progress["position"] = position + 1
                tps = session_tokens / max(session_seconds, 1e-9)
                step = progress["step"]
                if log:
                    log.write(json.dumps({"step": step, "loss": loss_value, "lr": lr}) + "\n")
                writer.add_scalar("train/loss", loss_value, step)
                writer.add_scalar("train/lr", lr, step)
                writer.add_scalar("train/grad_norm", grad_norm, step)
                writer.add_scalar("train/tokens_per_s", tps, step)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}",
                                refresh=False)  # fmt: skip
                bar.update()
                if bar.disable and step % every == 0:
                    say(f"step {step}/{total}: loss {loss_value:.4f}, lr {lr:.2e}, {tps:,.0f} tokens/s")
                if stop_after is not None and step >= stop_after and position + 1 < len(steps):
                    checkpoint()
                    return {"finished": False, **progress, "total_steps": total}
            record = {"epoch": epoch + 1, "step": progress["step"], "seconds": time.perf_counter() - t_epoch}
            if d.eval is not None and d.eval_rows is not None and ranks.main:
                result, _ = evaluate(model, s.task, d.eval_rows, d.eval, d.labels, 2 * s.batch, bf16, d.pad_id)
                record["eval"] = metrics.public(result)
                for key in ("entity_micro_f1", "token_accuracy", "accuracy", "macro_f1", "loss", "perplexity"):
                    if key in result:
                        writer.add_scalar(f"eval/{key}", result[key], progress["step"])
                best = progress["best"]
                if best is None or metrics.score(result) > best["score"]:
                    progress["best"] = {"epoch": epoch + 1, "score": metrics.score(result)}
                    save_state(out / BEST, {"model": model.state_dict(), "epoch": epoch + 1})
                bar.write(f"epoch {epoch + 1}: {metrics.headline(result)}", file=sys.stderr)
            progress["history"].append(record)
            progress["epoch"], progress["position"] = epoch + 1, 0
            checkpoint()
            if stop_after is not None and progress["step"] >= stop_after and epoch + 1 < s.epochs:
                return {"finished": False, **progress, "total_steps": total}
    finally:
        bar.close()
        writer.close()
        if log:
            log.close()
    return {"finished": True, **progress, "total_steps": total, "session_tokens_per_s": session_tokens / max(
        session_seconds, 1e-9)}  # fmt: skip


def _loss_log(path: Path, keep: int, enabled: bool):
    """losses.jsonl opened for appending, without the steps after `keep` (taken after the checkpoint)."""
    if not enabled:
        return None
    rows = path.read_text(encoding="utf-8").splitlines() if keep and path.is_file() else []
    kept = [r for r in rows if r.strip() and json.loads(r)["step"] <= keep]
    path.write_text("".join(r + "\n" for r in kept), encoding="utf-8")
    return open(path, "a", encoding="utf-8", buffering=1)  # line-buffered (followed with tail -f); closed by fit


def _sum_gradients(params: list[torch.nn.Parameter], ranks: Ranks) -> None:
    """Sum every trainable gradient over the processes in one all-reduce (missing ones count as 0)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    ranks.sum_(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n
