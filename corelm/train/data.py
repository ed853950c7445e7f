"""Training data without torch: the corpus, the byte-level BPE tokenizer, the token stream.

Everything here runs before any model exists, so bad input fails in seconds with a message
naming the problem (a missing or binary corpus, a vocabulary the corpus cannot fill, an
output folder that cannot be written), never after an hour of training.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

SPECIAL = "<|endoftext|>"  # BOS and EOS; also separates documents in a corpus that writes it
MIN_VOCAB = 257  # the 256 byte tokens plus SPECIAL
_CHUNK = 1 << 16  # characters per encode_batch item (cut at line ends)


def check_output_dir(out: Path) -> None:
    """Create `out` if needed and prove it is writable, with a probe file."""
    probe = out / ".corelm-write-probe"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise OSError(f"cannot write to the output folder {out}: {e.strerror or e}") from e


def read_corpus(path: Path) -> str:
    """The corpus as text; empty, binary (NUL bytes) or non-UTF-8 files are refused."""
    if not path.exists():
        raise FileNotFoundError(f"corpus {path}: no such file")
    if not path.is_file():
        raise ValueError(f"corpus {path}: not a regular file")
    data = path.read_bytes()
    nul = data.find(b"\0")
    if nul >= 0:
        raise ValueError(f"corpus {path}: looks binary (NUL byte at offset {nul}); expected a UTF-8 text file")
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"corpus {path}: not UTF-8 text (bad byte at offset {e.start}); expected a UTF-8 text file"
        ) from None
    if not text.strip():
        raise ValueError(f"corpus {path}: is empty")
    return text


def _chunks(text: str) -> Iterator[str]:
    """Pieces of about _CHUNK characters, cut after a newline where there is one."""
    start = 0
    while start < len(text):
        end = min(start + _CHUNK, len(text))
        if end < len(text):
            cut = text.rfind("\n", start, end)
            end = cut + 1 if cut > start else end
        yield text[start:end]
        start = end


def train_tokenizer(text: str, vocab_size: int) -> tokenizers.Tokenizer:
    """A GPT-2 style byte-level BPE with exactly `vocab_size` tokens (SPECIAL is id 0).

    The BPE trainer stops early when the corpus has no more pairs to merge; that is an
    error here, naming both sizes, since the model's embedding would have unused rows."""
    if vocab_size < MIN_VOCAB:
        raise ValueError(f"--vocab-size {vocab_size} is too small: byte-level BPE needs at least {MIN_VOCAB}")
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # The trainer does not split out special tokens itself: keep SPECIAL out of the merges.
    pieces = (piece for chunk in _chunks(text) for piece in chunk.split(SPECIAL))
    tok.train_from_iterator(pieces, trainer)
    # BOS first when transformers encodes with special tokens (as it did in training).
    bos = tok.token_to_id(SPECIAL)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SPECIAL} $A", pair=f"{SPECIAL} $A {SPECIAL} $B:1", special_tokens=[(SPECIAL, bos)]
    )
    got = tok.get_vocab_size(with_added_tokens=True)
    if got < vocab_size:
        raise ValueError(
            f"the corpus supports only {got} tokens but --vocab-size is {vocab_size}: "
            f"use a larger corpus or a vocabulary of at most {got}"
        )
    return tok


def load_tokenizer(path: Path) -> tuple[tokenizers.Tokenizer, str, str]:
    """A tokenizer.json with its BOS and EOS texts (from a tokenizer_config.json beside it,
    else SPECIAL, which the vocabulary must then hold)."""
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer {path}: no such file")
    try:
        tok = tokenizers.Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises plain Exception for a malformed file
        raise ValueError(f"tokenizer {path}: cannot load: {e}") from e
    tok.no_truncation()
    tok.no_padding()
    config_path = path.parent / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    names = []
    for key in ("bos_token", "eos_token"):
        name = config.get(key) or SPECIAL
        name = name.get("content", SPECIAL) if isinstance(name, dict) else name
        if tok.token_to_id(name) is None:
            raise ValueError(f"tokenizer {path}: has no {key} {name!r}")
        names.append(name)
    return tok, names[0], names[1]


def save_tokenizer(tok: tokenizers.Tokenizer, out: Path, bos: str, eos: str, ctx: int) -> None:
    """tokenizer.json and tokenizer_config.json as transformers and corelm read them."""
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "unk_token": None,
        "add_bos_token": True,
        "add_eos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": ctx,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def encode_corpus(tok: tokenizers.Tokenizer, text: str, bos_id: int) -> np.ndarray:
    """The corpus as one int32 token stream: BOS, then the text (SPECIAL written in the text
    becomes its token, so documents separated by it are separated in the stream)."""
    parts = [np.array([bos_id], dtype=np.int32)]
    chunks = list(_chunks(text))
    for i in range(0, len(chunks), 64):
        for enc in tok.encode_batch(chunks[i : i + 64], add_special_tokens=False):
            parts.append(np.asarray(enc.ids, dtype=np.int32))
    return np.concatenate(parts)


def split_tokens(ids: np.ndarray, batch: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """The first 90% for training and the last 10% for validation, with the sizes checked:
    training draws batches of `batch` windows of seq_len + 1 tokens, validation needs one."""
    window = seq_len + 1
    need = max(batch * window, 10 * window)
    if len(ids) < need:
        raise ValueError(
            f"the corpus is {len(ids)} tokens; training needs at least {need} "
            f"(one batch of {batch} x {window} tokens, and a validation tenth of at least {window}): "
            "use a larger corpus or a smaller --batch / --seq-len"
        )
    cut = len(ids) * 9 // 10
    return ids[:cut], ids[cut:]


def token_digest(ids: np.ndarray) -> str:
    """A fingerprint of the token stream, so --resume can tell a changed corpus."""
    return hashlib.sha256(np.ascontiguousarray(ids, dtype=np.int32).tobytes()).hexdigest()[:16]
