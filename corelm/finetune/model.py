"""The model side of fine-tuning: what MODEL is (checked without torch), loading it with its task
head, wrapping it with peft, merging, and writing the folder (and GGUF) corelm runs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DECODERS = ("gpt2", "llama", "qwen2")
ENCODERS = ("bert", "roberta", "distilbert")
HEADS = {
    "token-classification": "AutoModelForTokenClassification",
    "sequence-classification": "AutoModelForSequenceClassification",
    "causal-lm": "AutoModelForCausalLM",
}


@dataclass
class Source:
    """Where the pretrained model is: a folder (with gguf_file when it is a GGUF file in it)."""

    folder: Path
    gguf_file: str | None
    model_type: str

    @property
    def is_decoder(self) -> bool:
        return self.model_type in DECODERS

    def hf_kwargs(self) -> dict[str, str]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def inspect_source(path: str, task: str, bidirectional: bool = False) -> Source:
    """MODEL checked against the task (and --bidirectional) without loading it: an HF folder's
    config.json, or a GGUF file's general.architecture."""
    p = Path(path)
    if p.is_dir():
        config = p / "config.json"
        if not config.is_file():
            raise ValueError(f"--model {path}: a folder without config.json is not a Hugging Face model folder")
        try:
            model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type", "")
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"--model {path}: config.json is not valid JSON: {e}") from None
        source = Source(p, None, model_type)
    elif p.is_file():
        with open(p, "rb") as fh:
            if fh.read(4) != b"GGUF":
                raise ValueError(f"--model {path}: not a GGUF file (expected a .gguf file or a Hugging Face folder)")
        import gguf

        reader = gguf.GGUFReader(p)
        field = reader.get_field("general.architecture")
        model_type = field.contents() if field is not None else ""
        source = Source(p.parent, p.name, model_type)
        from corelm.formats.gguf import SPARSE_TENSORS

        if reader.get_field(SPARSE_TENSORS) is not None:
            raise ValueError(
                f"--model {path}: its pruned matrices are in corelm's sparse layouts, which transformers cannot "
                "read; write the pruned model with `corelm sparsify ... --dense` (the same values) and fine-tune "
                "that (the masks stay fixed, and DIR/model.gguf is stored sparse again)"
            )
    else:
        raise ValueError(f"--model {path}: no such file or folder")
    if source.model_type not in DECODERS + ENCODERS:
        kinds = ", ".join(DECODERS + ENCODERS)
        raise ValueError(f"--model {path}: model type {source.model_type!r} is not one corelm fine-tunes ({kinds})")
    if source.gguf_file and not source.is_decoder:
        raise ValueError(f"--model {path}: GGUF input is supported for {', '.join(DECODERS)} (got {model_type})")
    if task == "causal-lm" and not source.is_decoder:
        raise ValueError(f"--task causal-lm needs a decoder ({', '.join(DECODERS)}); {path} is a {model_type} encoder")
    if bidirectional and task == "causal-lm":
        raise ValueError("--bidirectional is for tagging and classification: a causal LM must not see what it predicts")
    if bidirectional and not source.is_decoder:
        raise ValueError(
            f"--bidirectional lets a decoder ({', '.join(DECODERS)}) attend both ways; {path} is a "
            f"{source.model_type} encoder, which already does"
        )
    return source


def load(source: Source, task: str, labels: list[str], seed: int, bidirectional: bool = False):
    """(model in fp32, train mode; tokenizer) with a new task head of len(labels) outputs; with
    bidirectional, a decoder whose self-attention is unmasked (padding aside)."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()  # the "newly initialized head" notice is expected here
    kw = source.hf_kwargs()
    tokenizer = transformers.AutoTokenizer.from_pretrained(source.folder, **kw)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{source.folder}: needs a fast tokenizer (tokenizer.json) for character offsets")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    extra = {}
    if task != "causal-lm":
        extra = dict(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            ignore_mismatched_sizes=True,
        )
    torch.manual_seed(seed)  # the new head's initial weights
    model = getattr(transformers, HEADS[task]).from_pretrained(source.folder, dtype=torch.float32, **kw, **extra)
    model.config.pad_token_id = tokenizer.pad_token_id
    if bidirectional:
        # transformers' own switch (5.x): its decoders then build a bidirectional mask (padding keys
        # masked) instead of a causal one, and tell the attention kernel not to mask causally.
        # save_pretrained keeps it in config.json, which corelm's loader reads.
        model.config.is_causal = False
    if source.gguf_file:
        _plain_weights(model, source)
    model.train()
    return model, tokenizer


def _plain_weights(model, source: Source) -> None:
    """transformers marks a model read from GGUF as quantized (and then refuses to save it) even when
    it dequantized every tensor to fp32 into plain layers, as it does here: check that it did, and
    drop the mark."""
    import torch

    odd = {type(m).__name__ for m in model.modules() if type(m).__module__.startswith("transformers.integrations")}
    if odd or any(p.dtype != torch.float32 for p in model.parameters()):
        raise ValueError(f"{source.gguf_file}: transformers kept GGUF blocks ({', '.join(sorted(odd))}); cannot train")
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def wrap(model, task: str, method: str, r: int, alpha: float | None, dropout: float, total_steps: int,
         adapter_config: str = "pfeiffer", reduction_factor: int = 16):  # fmt: skip
    """The model with peft's LoRA / AdaLoRA on every linear layer or AdapterHub's bottleneck adapter
    in every block (the task head trains whole), or as it is for full fine-tuning."""
    if method == "full":
        return model
    if method == "adapter":
        return _with_adapter(model, adapter_config, reduction_factor)
    import peft

    task_type = {
        "token-classification": peft.TaskType.TOKEN_CLS,
        "sequence-classification": peft.TaskType.SEQ_CLS,
        "causal-lm": peft.TaskType.CAUSAL_LM,
    }[task]
    common: dict[str, Any] = dict(
        task_type=task_type, lora_alpha=alpha or 2 * r, lora_dropout=dropout, target_modules="all-linear"
    )
    if task != "causal-lm":  # the head trains whole (peft's modules_to_save), so no LoRA on it
        common["exclude_modules"] = ["classifier", "score"]
    if method == "lora":
        config = peft.LoraConfig(r=r, **common)
    else:  # adalora: start at 1.5 r, prune to r on average between 10% and 80% of the steps
        config = peft.AdaLoraConfig(
            init_r=max(r + 1, round(1.5 * r)),
            target_r=r,
            tinit=total_steps // 10,
            tfinal=total_steps // 5,
            deltaT=max(1, total_steps // 50),
            total_step=total_steps,
            **common,
        )
    return peft.get_peft_model(model, config)


ADAPTER = "corelm"  # the adapter's name (in its tensors' names and config.json)
# Task-head modules (top-level names of the *For...Classification models), and BERT's pooler that
# its sequence head reads: trained whole beside the adapter, as beside LoRA.
_HEAD_MODULES = ("classifier", "pre_classifier", "score")


def _with_adapter(model, kind: str, reduction_factor: int):
    """AdapterHub's Pfeiffer (SeqBnConfig) or Houlsby (DoubleSeqBnConfig) adapter in every block;
    the base model frozen, the head not."""
    import adapters

    config = {"pfeiffer": adapters.SeqBnConfig, "houlsby": adapters.DoubleSeqBnConfig}[kind]
    adapters.init(model)
    model.add_adapter(ADAPTER, config=config(reduction_factor=reduction_factor))
    model.train_adapter(ADAPTER)  # freezes everything else and makes the adapter the active one
    for name, p in model.named_parameters():
        if name.split(".")[0] in _HEAD_MODULES or ".pooler." in name:
            p.requires_grad_(True)
    return model


def adalora_penalty(model):
    """AdaLoRA's orthogonality penalty on its P and Q factors (what peft adds to a loss it computes
    itself; here the loop computes the loss), or None for other methods."""
    import torch

    base = getattr(model, "base_model", None)
    if type(base).__name__ != "AdaLoraModel":
        return None
    name = base.trainable_adapter_name
    terms = []
    for n, p in base.model.named_parameters():
        if ("lora_A" in n or "lora_B" in n) and name in n:
            cov = p @ p.T if "lora_A" in n else p.T @ p
            terms.append(torch.linalg.matrix_norm(cov - torch.eye(*cov.shape, dtype=cov.dtype)))
    if not terms:
        return None
    return base.peft_config[name].orth_reg_weight * torch.stack(terms).mean()


def adalora_state(model) -> dict | None:
    """What AdaLoRA keeps outside the weights (the importance averages that choose the ranks, and the
    rank pattern), for an exact resume; None for other methods."""
    base: Any = getattr(model, "base_model", None)
    if type(base).__name__ != "AdaLoraModel":
        return None
    ra = base.rankallocator
    pattern = base.peft_config[base.trainable_adapter_name].rank_pattern
    return {"ipt": dict(ra.ipt), "exp_avg_ipt": dict(ra.exp_avg_ipt), "exp_avg_unc": dict(ra.exp_avg_unc),
            "rank_pattern": dict(pattern) if pattern else None}  # fmt: skip


def load_adalora_state(model, state: dict | None) -> None:
    if state is None:
        return
    base = model.base_model
    ra = base.rankallocator
    ra.ipt, ra.exp_avg_ipt, ra.exp_avg_unc = dict(state["ipt"]), dict(state["exp_avg_ipt"]), dict(state["exp_avg_unc"])
    base.peft_config[base.trainable_adapter_name].rank_pattern = state["rank_pattern"]


def sparsity_masks(model) -> dict[str, Any]:
    """A pruned model's fixed masks (weight != 0), by parameter name: every matrix at least PRUNED_ZEROS exact
    zeros (corelm sparsify's; trained weights have next to none). Empty for a dense model."""
    from corelm.quantize.convert import PRUNED_ZEROS

    return {
        name: p.detach() != 0
        for name, p in model.named_parameters()
        if p.ndim == 2 and int((p == 0).sum()) >= PRUNED_ZEROS * p.numel()
    }


def apply_masks(model, masks: dict[str, Any]) -> None:
    """Zero what the masks drop in the parameters of those names (others - a LoRA-wrapped model's frozen
    base weights - are left: they do not move)."""
    import torch

    named = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            if name in named:
                named[name].mul_(mask)


def merged(model):
    """A plain transformers model: peft's low-rank updates added into the base weights. A bottleneck
    adapter cannot be merged: the model keeps it (and save_folder writes it beside the weights)."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


def save_folder(model, tokenizer, out: Path) -> None:
    """DIR as a Hugging Face folder corelm loads: config.json (with id2label, and with an adapter
    the "adapters" section AdapterHub writes), model.safetensors (an adapter's tensors under the names
    AdapterHub gives them), tokenizer.json and tokenizer_config.json."""
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
