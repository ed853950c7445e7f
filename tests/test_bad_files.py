"""Bad model files give one clear exception naming the problem, never a crash or a hang."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from support import data_file

import corelm
from corelm.formats import ModelFileError

STORIES = ("models", "stories260K", "stories260K.gguf")


@pytest.fixture(scope="module")
def good_bytes() -> bytes:
    return data_file(*STORIES).read_bytes()


def load_ok_or_clear_error(path) -> None:
    try:
        llm = corelm.load(path)
    except ModelFileError as e:
        assert str(path) in str(e) or "GGUF" in str(e) or "tensor" in str(e), str(e)
        return
    # A mutation that leaves a loadable file (e.g. in a string value or weight bytes) must still run.
    llm.logits([1, 2, 3])


def test_missing_and_wrong_paths(tmp_path):
    with pytest.raises(ModelFileError, match="no such file"):
        corelm.load(tmp_path / "nope.gguf")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        corelm.load(tmp_path / "notes.txt")
    with pytest.raises(ModelFileError, match="config.json"):
        corelm.load(tmp_path)


def test_truncations(tmp_path, good_bytes):
    path = tmp_path / "t.gguf"
    for cut in [0, 3, 4, 8, 23, 24, 100, 1000, 5000, len(good_bytes) // 2, len(good_bytes) - 1]:
        path.write_bytes(good_bytes[:cut])
        with pytest.raises(ModelFileError):
            corelm.load(path)


def test_a_file_cut_in_its_tensor_data_says_truncated(tmp_path, good_bytes):
    path = tmp_path / "cut.gguf"
    for cut in [len(good_bytes) // 3, len(good_bytes) * 2 // 3, len(good_bytes) - 1]:
        path.write_bytes(good_bytes[:cut])
        with pytest.raises(ModelFileError, match=f"truncated GGUF: its tensors need {len(good_bytes)} bytes, the file "
                           f"has {cut}"):  # fmt: skip
            corelm.load(path)


def test_bad_magic_and_version(tmp_path, good_bytes):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUX" + good_bytes[4:])
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        corelm.load(path)
    path.write_bytes(good_bytes[:4] + struct.pack("<I", 7) + good_bytes[8:])
    with pytest.raises(ModelFileError, match="version 7"):
        corelm.load(path)


def test_absurd_counts(tmp_path, good_bytes):
    path = tmp_path / "c.gguf"
    for offset in (8, 16):  # tensor count, metadata count
        for value in (2**63, 2**40, 10**6):
            path.write_bytes(good_bytes[:offset] + struct.pack("<Q", value) + good_bytes[offset + 8 :])
            with pytest.raises(ModelFileError):
                corelm.load(path)


def _rewrite(src, dst, tensor_edit=None, meta_edit=None):
    """Re-write a GGUF with edited tensor infos / metadata, using the gguf package's writer."""
    import gguf

    from corelm.formats.gguf import load_gguf

    r = gguf.GGUFReader(src)
    meta = dict(load_gguf(src).metadata)
    if meta_edit:
        meta_edit(meta)
    w = gguf.GGUFWriter(dst, meta.get("general.architecture", "llama"))
    from corelm.formats.gguf_write import _add_value

    for k, v in meta.items():
        if k != "general.architecture":
            _add_value(w, k, v)
    for t in r.tensors:
        data = np.array(t.data)
        shape, dtype = list(reversed([int(d) for d in t.shape])), t.tensor_type
        if tensor_edit:
            data, shape, dtype = tensor_edit(t.name, data, shape, dtype)
        w.add_tensor(t.name, data, raw_shape=shape, raw_dtype=dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_unknown_architecture(tmp_path):
    dst = tmp_path / "arch.gguf"
    _rewrite(data_file(*STORIES), dst, meta_edit=lambda m: m.update({"general.architecture": "mamba9"}))
    with pytest.raises(ModelFileError, match="unsupported architecture 'mamba9'"):
        corelm.load(dst)


def test_missing_tensor_and_wrong_shape(tmp_path):
    import gguf

    dst = tmp_path / "shape.gguf"

    def drop_dim(name, data, shape, dtype):
        if name == "blk.0.attn_q.weight":
            return data[:32].copy(), [32, shape[1]], dtype
        return data, shape, dtype

    _rewrite(data_file(*STORIES), dst, tensor_edit=drop_dim)
    with pytest.raises(ModelFileError, match="blk.0.attn_q.weight"):
        corelm.load(dst)
    r = gguf.GGUFReader(data_file(*STORIES))
    w = gguf.GGUFWriter(tmp_path / "few.gguf", "llama")
    for t in r.tensors[:3]:
        w.add_tensor(t.name, np.array(t.data))
    w.add_uint32("llama.block_count", 5)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelFileError):
        corelm.load(tmp_path / "few.gguf")


def test_unknown_tensor_type(tmp_path, good_bytes):
    from corelm.formats.gguf import load_gguf

    f = load_gguf(data_file(*STORIES))
    # Find the first tensor info's type field: name, n_dims, dims, then the type (uint32).
    name = next(iter(f.tensors)).encode()
    at = good_bytes.index(name) + len(name)
    (n_dims,) = struct.unpack_from("<I", good_bytes, at)
    type_at = at + 4 + 8 * n_dims
    path = tmp_path / "type.gguf"
    path.write_bytes(good_bytes[:type_at] + struct.pack("<I", 999) + good_bytes[type_at + 4 :])
    with pytest.raises(ModelFileError, match="type"):
        corelm.load(path)
    # An offset far past the end of the file.
    path.write_bytes(good_bytes[: type_at + 4] + struct.pack("<Q", 2**40) + good_bytes[type_at + 12 :])
    with pytest.raises(ModelFileError):
        corelm.load(path)


def test_random_mutations(tmp_path, good_bytes):
    """A few hundred corruptions of the structure: each loads cleanly or raises ModelFileError."""
    rng = np.random.default_rng(1234)
    import gguf

    first_data = gguf.GGUFReader(data_file(*STORIES)).data_offset  # the structure lies before this
    path = tmp_path / "fuzz.gguf"
    for i in range(300):
        blob = bytearray(good_bytes)
        kind = i % 3
        if kind == 0:  # flip a few bytes in the metadata / tensor-info section
            for _ in range(rng.integers(1, 4)):
                blob[rng.integers(0, first_data)] = rng.integers(0, 256)
        elif kind == 1:  # overwrite an 8-byte field with a huge or random value
            at = int(rng.integers(0, first_data - 8))
            blob[at : at + 8] = struct.pack("<Q", int(rng.choice([2**63 - 1, 2**32, rng.integers(0, 2**62)])))
        else:  # truncate somewhere
            blob = blob[: int(rng.integers(0, len(blob)))]
        path.write_bytes(bytes(blob))
        load_ok_or_clear_error(path)


def test_malformed_safetensors(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "vocab_size": 32,
                "hidden_size": 32,
                "num_attention_heads": 1,
                "num_hidden_layers": 1,
                "intermediate_size": 32,
            }
        )
    )
    st = folder / "model.safetensors"
    st.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(ModelFileError, match="malformed safetensors header"):
        corelm.load(folder)
    st.write_bytes(struct.pack("<Q", 5) + b"{nope")
    with pytest.raises(ModelFileError, match="malformed safetensors header"):
        corelm.load(folder)
    header = json.dumps(
        {"model.embed_tokens.weight": {"dtype": "F32", "shape": [32, 32], "data_offsets": [0, 4096]}}
    ).encode()
    st.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 100)
    with pytest.raises(ModelFileError, match="past the end"):
        corelm.load(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(ModelFileError, match="unsupported architecture 't5'"):
        corelm.load(folder)


@pytest.mark.parametrize(
    "parts",
    [
        STORIES,
        ("tokenizers", "llama.cpp-vocab", "ggml-vocab-bert-bge.gguf"),
        ("tokenizers", "llama.cpp-vocab", "ggml-vocab-llama-spm.gguf"),
    ],
)
def test_the_parser_reads_what_the_gguf_package_reads(parts):
    """corelm's own GGUF parser (fast on big vocabularies) against the gguf package's reader:
    every metadata value and type, every tensor's type, shape, offset and bytes."""
    import gguf

    from corelm.formats.gguf import load_gguf

    path = data_file(*parts)
    mine, ref = load_gguf(path), gguf.GGUFReader(path)
    fields = {k: f for k, f in ref.fields.items() if not k.startswith("GGUF.")}
    assert mine.metadata.keys() == fields.keys()
    for key, field in fields.items():
        assert mine.metadata[key] == field.contents(), key
        assert mine.types[key] == (int(field.types[0]), int(field.types[1]) if len(field.types) > 1 else None), key
    assert mine.tensors.keys() == {t.name for t in ref.tensors}
    for t in ref.tensors:
        got = mine.tensors[t.name]
        assert (got.type, got.shape, got.offset) == (
            int(t.tensor_type),
            tuple(reversed([int(d) for d in t.shape])),
            int(t.data_offset),
        )
        assert got.data.tobytes() == np.asarray(t.data).tobytes()
