"""Constrained decoding (corelm/engine/constrain.py): masks inside the Engine's batched sampler,
`LLM.generate(json_schema=..., json_object=..., grammar=...)`, the typed generation parameters,
and the tool-call JSON (corelm/server/tools.py) parsed whole and as a stream."""

from __future__ import annotations

import inspect
import json
import random

import numpy as np
import pytest
from support import stories260k

import corelm
from corelm.engine.constrain import Grammar, apply_masks
from corelm.engine.sampling import SamplingParams
from corelm.engine.scheduler import Engine, Request
from corelm.server.tools import Tool, ToolSpec, ToolStream, parse_reply

jsonschema = pytest.importorskip("jsonschema")

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "mood": {"enum": ["happy", "sad", "calm"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 2},
    },
    "required": ["name", "age", "mood", "tags"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def llm():
    return corelm.load(threads=1)  # the default model: a byte-level BPE vocabulary


@pytest.fixture(scope="module")
def stories():
    return corelm.load(stories260k(), ctx=512)  # a SentencePiece vocabulary (byte fallback, leading space)


def test_apply_masks_sets_refused_tokens_to_minus_infinity():
    rng = np.random.default_rng(0)
    for vocab in (5, 32, 33, 2048, 49152):
        logits = rng.standard_normal((3, vocab)).astype(np.float32)
        before = logits.copy()
        masks = rng.integers(-(2**31), 2**31, size=(2, (vocab + 31) // 32), dtype=np.int64).astype(np.int32)
        apply_masks(logits, [0, 2], masks)
        allowed = np.unpackbits(masks.view(np.uint8), axis=1, bitorder="little")[:, :vocab].astype(bool)
        for j, r in enumerate((0, 2)):
            assert np.array_equal(np.isneginf(logits[r]), ~allowed[j])
            assert np.array_equal(logits[r][allowed[j]], before[r][allowed[j]])
        assert np.array_equal(logits[1], before[1])  # an unconstrained row is untouched


def test_mask_rows_wider_or_narrower_than_the_vocabulary(llm):
    """Logits padded past the tokenizer's vocabulary never allow the padding; a narrower row
    keeps the tokens it has."""
    c = Grammar.json_object().matcher(llm.tokenizer)
    exact = np.zeros(c.words, np.int32)
    c.fill(exact)
    wide = np.full(c.words + 3, -1, np.int32)
    c.fill(wide)
    assert np.array_equal(wide[: c.words], exact) and not wide[c.words :].any()
    narrow = np.zeros(c.words - 1, np.int32)
    c.fill(narrow)
    assert np.array_equal(narrow, exact[:-1])


@pytest.mark.parametrize("model", ["llm", "stories"])
def test_generate_json_schema_validates(model, request):
    m = request.getfixturevalue(model)
    for seed in range(4):
        text = m.generate("Hello", max_tokens=200, json_schema=PERSON, seed=seed, temperature=1.0)
        assert m.last_stats.finish_reason == "stop", text
        jsonschema.validate(json.loads(text), PERSON)


def test_json_schema_as_text_and_greedy(llm):
    text = llm.generate("ROMEO:", max_tokens=200, json_schema=json.dumps(PERSON), temperature=0)
    jsonschema.validate(json.loads(text), PERSON)
    assert text == llm.generate("ROMEO:", max_tokens=200, json_schema=PERSON, temperature=0)


def test_json_object_and_chat(llm, stories):
    text = llm.generate("ROMEO:", max_tokens=300, json_object=True, seed=3, temperature=0.7)
    if llm.last_stats.finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:
        assert text.startswith("{")
    reply = stories.chat([{"role": "user", "content": "Who are you?"}], max_tokens=200, json_schema=PERSON, seed=1)
    jsonschema.validate(json.loads(reply), PERSON)


def test_lark_grammar_and_regex(llm, stories):
    for m in (llm, stories):
        for seed in range(3):
            text = m.generate("Hi", max_tokens=20, grammar='start: ("yes" | "no") ", " ("sir" | "madam")', seed=seed)
            assert text in ("yes, sir", "yes, madam", "no, sir", "no, madam")
        assert m.last_stats.finish_reason == "stop"
        digits = m.generate("Hi", max_tokens=20, grammar=Grammar.regex(r"[0-9]{3}-[0-9]{2}"), seed=1)
        assert len(digits) == 6 and digits[3] == "-" and (digits[:3] + digits[4:]).isdigit()


def test_bad_structured_requests(llm):
    with pytest.raises(ValueError, match="at most one"):
        llm.generate("x", json_schema=PERSON, json_object=True)
    with pytest.raises(ValueError, match="JSON schema"):
        llm.generate("x", json_schema="{not json")
    with pytest.raises(ValueError, match="lark"):
        llm.generate("x", grammar="start: (((")


def test_constrained_and_free_sequences_share_a_batch(llm):
    """A constrained sequence beside a free one: the free one draws exactly what it draws alone
    (its row is neither masked nor reordered), the constrained one stays valid."""
    prompt = llm.tokenize("ROMEO:")
    free = Request(prompt, 40, SamplingParams(seed=7), ignore_eos=True)

    def run(requests: list[Request]) -> list[list[int]]:
        eng = Engine(llm.model, llm.tokenizer, len(requests), 256)
        seqs = [eng.add(r) for r in requests]
        while eng.busy:
            eng.step()
        return [s.tokens for s in seqs]

    (alone,) = run([free])
    constrained = Request(prompt, 200, SamplingParams(seed=1), grammar=Grammar.json_schema(PERSON))
    together, json_tokens = run([free, constrained])
    assert together == alone
    jsonschema.validate(json.loads(llm.detokenize(json_tokens)), PERSON)


def test_generation_parameters_are_typed_keywords():
    for name in ("generate", "stream", "chat", "stream_chat"):
        sig = inspect.signature(getattr(corelm.LLM, name))
        assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()), name
        for p in ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "repeat_last_n", "seed", "stop"):
            assert sig.parameters[p].annotation != inspect.Parameter.empty, (name, p)
        assert {"json_schema", "json_object", "grammar", "logit_bias"} <= set(sig.parameters)
        assert getattr(corelm.LLM, name).__doc__


def test_typed_parameters_reach_the_sampler(llm):
    b = llm.generate("ROMEO:", max_tokens=40, temperature=0, ignore_eos=True)
    for penalty in (dict(repeat_penalty=5.0, repeat_last_n=0), dict(frequency_penalty=2.0), dict(presence_penalty=2.0)):
        assert llm.generate("ROMEO:", max_tokens=40, temperature=0, ignore_eos=True, **penalty) != b, penalty
    banned = llm.tokenize(b, add_bos=False)[0]
    c = llm.generate("ROMEO:", max_tokens=12, temperature=0, logit_bias={banned: -100})
    assert llm.tokenize(c, add_bos=False)[:1] != [banned]
    with pytest.raises(TypeError):
        llm.generate("x", 4, 0.5)  # sampling parameters are keywords
    with pytest.raises(ValueError, match="logit_bias"):
        llm.generate("x", logit_bias={10**6: 1.0})


# ---- tool calls: the JSON the reply is constrained to, parsed whole and streamed ----

WEATHER = Tool(
    "get_weather",
    "the weather in a city",
    {
        "type": "object",
        "properties": {"city": {"enum": ["Paris", "Rome"]}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city", "days"],
        "additionalProperties": False,
    },
)
TIME = Tool("get_time", "", {"type": "object", "properties": {}, "additionalProperties": False})


def reassemble(parts: list[dict]) -> tuple[str, list[tuple[str, str]]]:
    """Content and (name, arguments) per call from ToolStream's deltas, as a client adds them up."""
    content, calls = "", {}
    for p in parts:
        content += p.get("content", "")
        for c in p.get("tool_calls", []):
            if "id" in c:
                calls[c["index"]] = [c["function"]["name"], ""]
            calls[c["index"]][1] += c["function"]["arguments"]
    return content, [tuple(calls[i]) for i in sorted(calls)]


@pytest.mark.parametrize(
    "doc",
    [
        '{"tool_calls":[{"name":"get_weather","arguments":{"city":"Pa\\"ris","n":[1,2,{"a":null}]}},'
        '{"name":"get_time","arguments":{}}]}',
        '{"response":"Hello \\u00e9 \\ud83d\\ude00 \\n \\\\ end \\"q\\""}',
        '{"tool_calls":[{"name":"x","arguments":"s,}]"}]}',
        '{"response":""}',
    ],
)
def test_tool_stream_reassembles_any_split(doc):
    obj = json.loads(doc)
    rng = random.Random(0)
    for _ in range(100):
        stream, parts, i = ToolStream(), [], 0
        while i < len(doc):
            k = rng.randint(1, 5)
            parts += stream.push(doc[i : i + k])
            i += k
        content, calls = reassemble(parts)
        if "response" in obj:
            assert content == obj["response"] and not calls
        else:
            assert [(n, json.loads(a)) for n, a in calls] == [(c["name"], c["arguments"]) for c in obj["tool_calls"]]
            assert len(stream.ids) == len(calls)
    reply = parse_reply(doc, ToolSpec((WEATHER,), "auto"))
    if "response" in obj:
        assert reply.content == obj["response"] and not reply.tool_calls
    else:
        assert reply.content is None
        assert [json.loads(c["function"]["arguments"]) for c in reply.tool_calls] == [
            c["arguments"] for c in obj["tool_calls"]
        ]


@pytest.mark.parametrize("choice", ["auto", "required", "get_weather"])
def test_tool_calls_are_generated_valid(llm, choice):
    spec = ToolSpec((WEATHER, TIME), choice, parallel=False, response_schema={"type": "string", "maxLength": 8})
    schema = spec.schema()
    for seed in range(3):
        text = llm.generate("ROMEO:", max_tokens=120, json_schema=schema, seed=seed)
        assert llm.last_stats.finish_reason == "stop", text
        obj = json.loads(text)
        jsonschema.validate(obj, schema)
        reply = parse_reply(text, spec)
        if choice != "auto":
            assert len(reply.tool_calls) == 1
        for call in reply.tool_calls:
            tool = {"get_weather": WEATHER, "get_time": TIME}[call["function"]["name"]]
            jsonschema.validate(json.loads(call["function"]["arguments"]), tool.parameters)
            if choice == "get_weather":
                assert tool is WEATHER
