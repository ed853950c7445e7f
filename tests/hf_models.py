"""Random-weight Hugging Face models with real structure (small widths), saved as folders."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

CONFIGS = {
    # GQA 4/2, head dim 64
    "llama-gqa-hd64": (
        "llama",
        dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, intermediate_size=512, num_hidden_layers=2),
    ),
    # head dim 128, MQA, linear rope scaling, tied embeddings
    "llama-hd128-linear": (
        "llama",
        dict(
            hidden_size=256,
            num_attention_heads=2,
            num_key_value_heads=1,
            intermediate_size=384,
            num_hidden_layers=2,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
        ),
    ),
    # llama3 frequency scaling, explicit head_dim different from hidden/heads
    "llama3-scaling": (
        "llama",
        dict(
            hidden_size=192,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=64,
            intermediate_size=320,
            num_hidden_layers=2,
            rope_parameters={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "rope_theta": 500000.0,
                "original_max_position_embeddings": 64,
            },
        ),
    ),
    "qwen2": (
        "qwen2",
        dict(
            hidden_size=128,
            num_attention_heads=2,
            num_key_value_heads=1,
            intermediate_size=256,
            num_hidden_layers=2,
            tie_word_embeddings=False,
        ),
    ),
    "gpt2": ("gpt2", dict(n_embd=128, n_head=2, n_layer=2)),
}

VOCAB = 384
CTX = 256


def build_hf_model(name: str, folder: Path, seed: int = 0) -> transformers.PreTrainedModel:
    """Save a random model named in CONFIGS to `folder`; return the torch model (fp32, eval)."""
    kind, overrides = CONFIGS[name]
    torch.manual_seed(seed)
    if kind == "gpt2":
        config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=CTX, initializer_range=0.1, **overrides)
    else:
        cls = transformers.Qwen2Config if kind == "qwen2" else transformers.LlamaConfig
        config = cls(
            vocab_size=VOCAB, max_position_embeddings=CTX, rms_norm_eps=1e-5, initializer_range=0.1, **overrides
        )
    model = transformers.AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a mistake there shows
        for pname, p in model.named_parameters():
            if "norm" in pname or "ln_" in pname or pname.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder, safe_serialization=True)
    return model


def hf_logits(model: transformers.PreTrainedModel, ids: list[int]):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()
