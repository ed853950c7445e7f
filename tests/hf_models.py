"""Random-weight Hugging Face models with real structure (small widths), saved as folders."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

SMALL_GQA = dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2)

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
    # per-head q/k norms, head_dim 48 with hidden 128 / 4 heads
    "qwen3": ("qwen3", dict(SMALL_GQA, head_dim=48, intermediate_size=256)),
    # a sliding window shorter than the 40-token test sequence
    "mistral-swa8": ("mistral", dict(SMALL_GQA, intermediate_size=256, sliding_window=8)),
    # fused qkv and gate-up, rope over 3/4 of each head (special ids inside the small vocabulary)
    "phi3-partial-rope": (
        "phi3",
        dict(
            SMALL_GQA, intermediate_size=192, partial_rotary_factor=0.75, pad_token_id=0, bos_token_id=1, eos_token_id=2
        ),
    ),
}

VOCAB = 384
CTX = 256


def build_hf_model(name: str, folder: Path, seed: int = 0, vocab: int = VOCAB) -> transformers.PreTrainedModel:
    """Save a random model named in CONFIGS to `folder`; return the torch model (fp32, eval)."""
    kind, overrides = CONFIGS[name]
    torch.manual_seed(seed)
    if kind == "gpt2":
        config = transformers.GPT2Config(vocab_size=vocab, n_positions=CTX, initializer_range=0.1, **overrides)
    else:
        config = transformers.AutoConfig.for_model(
            kind, vocab_size=vocab, max_position_embeddings=CTX, rms_norm_eps=1e-5, initializer_range=0.1, **overrides
        )
    model = transformers.AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32).eval()
    return save_perturbed(model, folder)


def save_perturbed(model: transformers.PreTrainedModel, folder: Path) -> transformers.PreTrainedModel:
    """Save `model` after giving its norms and biases non-trivial values, so a mistake there shows."""
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if any(s in pname.lower() for s in ("norm", "ln_")) or pname.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder, safe_serialization=True)
    return model


def hf_logits(model: transformers.PreTrainedModel, ids: list[int]):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


# ---- encoders and task heads ----

ENCODERS = {
    "bert": (transformers.BertConfig, dict(hidden_size=64, num_attention_heads=4, intermediate_size=128)),
    "roberta": (transformers.RobertaConfig, dict(hidden_size=64, num_attention_heads=2, intermediate_size=96)),
    "distilbert": (transformers.DistilBertConfig, dict(dim=64, n_heads=4, hidden_dim=128)),
}
HEADS = {"": "AutoModel", "sequence": "AutoModelForSequenceClassification", "token": "AutoModelForTokenClassification"}
SEQUENCE_LABELS = ["negative", "neutral", "positive"]
TOKEN_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def train_tokenizer(kind: str, folder: Path, text: str, vocab_size: int = VOCAB):
    """A small real tokenizer trained on `text` and saved as folder/tokenizer.json: WordPiece
    framed [CLS] ... [SEP] (bert, distilbert) or byte-level BPE framed <s> ... </s> (roberta)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    if kind == "roberta":
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        )
        tok.train_from_iterator([text], trainer)
        tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True)
    else:
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        tok.train_from_iterator([text], trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
        tok.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    tok.save(str(folder / "tokenizer.json"))
    return tok


def build_encoder(kind: str, head: str, folder: Path, seed: int = 0, text: str = "") -> transformers.PreTrainedModel:
    """A random BERT / RoBERTa / DistilBERT (with a sequence or token classifier when `head` says
    so) saved to `folder`, with a tokenizer trained on `text` when given; the torch model (eval)."""
    config_cls, overrides = ENCODERS[kind]
    labels = {"sequence": SEQUENCE_LABELS, "token": TOKEN_LABELS}.get(head, [])
    extra = dict(id2label=dict(enumerate(labels)), label2id={k: i for i, k in enumerate(labels)}) if labels else {}
    if kind == "distilbert":
        config = config_cls(vocab_size=VOCAB, max_position_embeddings=CTX, n_layers=2, **overrides, **extra)
    else:
        pad = {"pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2} if kind == "roberta" else {}
        ctx = CTX + 2 if kind == "roberta" else CTX
        sizes = dict(vocab_size=VOCAB, max_position_embeddings=ctx, num_hidden_layers=2, type_vocab_size=2)
        config = config_cls(**sizes, **pad, **overrides, **extra)
    torch.manual_seed(seed)
    model = getattr(transformers, HEADS[head]).from_config(config).eval()
    save_perturbed(model, folder)
    if text:
        train_tokenizer(kind, folder, text)
    return model


def build_decoder_head(
    name: str, head: str, folder: Path, seed: int = 0, vocab: int = VOCAB, bidirectional: bool = False
) -> transformers.PreTrainedModel:
    """A random decoder of CONFIGS with a sequence or token classifier, saved to `folder`; with
    bidirectional, its attention unmasked (transformers' config.is_causal = False)."""
    kind, overrides = CONFIGS[name]
    labels = SEQUENCE_LABELS if head == "sequence" else TOKEN_LABELS
    extra = dict(id2label=dict(enumerate(labels)), label2id={k: i for i, k in enumerate(labels)})
    if bidirectional:
        extra["is_causal"] = False
    torch.manual_seed(seed)
    if kind == "gpt2":
        config = transformers.GPT2Config(vocab_size=vocab, n_positions=CTX, pad_token_id=0, **overrides, **extra)
    else:
        overrides = {**overrides, "pad_token_id": 0}
        config = transformers.AutoConfig.for_model(
            kind, vocab_size=vocab, max_position_embeddings=CTX, **overrides, **extra
        )
    model = getattr(transformers, HEADS[head]).from_config(config).eval()
    return save_perturbed(model, folder)
