"""`corelm serve` beyond plain text, with the official openai client over a real socket:
response_format (json_object, json_schema), tools and tool_choice (whole and streamed), n
choices, and llama.cpp's /tokenize, /detokenize and /props."""

from __future__ import annotations

import json

import pytest
from test_server import KEY, M, ServerProcess, error_of, post, request

openai = pytest.importorskip("openai", reason="the server tests use the official client: pip install openai")
jsonschema = pytest.importorskip("jsonschema")

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 99},
        "pet": {"enum": ["cat", "dog", None]},
    },
    "required": ["name", "age", "pet"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city over some days",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"enum": ["Paris", "Rome", "Oslo"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}, "additionalProperties": False}},
}
SHORT_ANSWER = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "string", "maxLength": 10}}}
USER = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def server():
    # A context past the model's 512: a tool list takes ~470 of its tiny vocabulary's tokens.
    s = ServerProcess("--api-key", KEY, "--parallel", "4", "--ctx", "1024")
    yield s
    s.stop()


def check_call(call, tools=(WEATHER, CLOCK)) -> None:
    """A tool call as OpenAI returns one: id, type, a known name, arguments valid JSON for it."""
    assert call.id.startswith("call_") and call.type == "function"
    spec = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    jsonschema.validate(json.loads(call.function.arguments), spec[call.function.name])


def test_response_format_json_schema(server):
    client = server.client()
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    for seed in range(3):
        r = client.chat.completions.create(
            model=M, messages=USER, max_tokens=200, response_format=fmt, seed=seed, temperature=1.0
        )
        c = r.choices[0]
        assert c.finish_reason == "stop", c.message.content
        jsonschema.validate(json.loads(c.message.content), PERSON)
    r = client.completions.create(model=M, prompt="Once", max_tokens=200, seed=1, extra_body={"response_format": fmt})
    jsonschema.validate(json.loads(r.choices[0].text), PERSON)
    r = client.completions.create(model=M, prompt="Once", max_tokens=200, seed=1, extra_body={"json_schema": PERSON})
    jsonschema.validate(json.loads(r.choices[0].text), PERSON)


def test_response_format_json_object(server):
    r = server.client().chat.completions.create(
        model=M,
        messages=USER,
        max_tokens=300,
        seed=4,
        response_format={"type": "json_object"},
        logit_bias={},
    )
    text, finish = r.choices[0].message.content, r.choices[0].finish_reason
    assert text.startswith("{")
    if finish == "stop":
        assert isinstance(json.loads(text), dict)


def test_grammar_extension(server):
    r = server.client().completions.create(
        model=M, prompt="Once", max_tokens=20, seed=2, extra_body={"grammar": 'start: "yes" | "no"'}
    )
    assert r.choices[0].text in ("yes", "no") and r.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_tool_calls(server, choice):
    client = server.client()
    for seed in range(2):
        r = client.chat.completions.create(
            model=M,
            messages=USER,
            tools=[WEATHER, CLOCK],
            tool_choice=choice,
            parallel_tool_calls=False,
            max_tokens=200,
            seed=seed,
        )
        c = r.choices[0]
        assert c.finish_reason == "tool_calls" and c.message.content is None
        assert len(c.message.tool_calls) == 1
        check_call(c.message.tool_calls[0])
        if isinstance(choice, dict):
            assert c.message.tool_calls[0].function.name == "get_weather"


def test_tool_choice_auto_and_none(server):
    client = server.client()
    kinds = set()
    for seed in range(6):
        r = client.chat.completions.create(
            model=M,
            messages=USER,
            tools=[WEATHER],
            max_tokens=200,
            seed=seed,
            parallel_tool_calls=False,
            response_format=SHORT_ANSWER,  # the plain answer's schema: short, so the tiny model ends it
        )
        c = r.choices[0]
        if c.message.tool_calls:
            assert c.finish_reason == "tool_calls" and c.message.content is None
            check_call(c.message.tool_calls[0], (WEATHER,))
            kinds.add("call")
        else:
            assert c.finish_reason == "stop" and len(c.message.content) <= 10
            kinds.add("answer")
    assert kinds  # the model chooses; each seed's reply is one valid kind
    r = client.chat.completions.create(model=M, messages=USER, tools=[WEATHER], tool_choice="none", max_tokens=8)
    assert r.choices[0].message.tool_calls is None and isinstance(r.choices[0].message.content, str)


def test_streamed_tool_calls_reassemble(server):
    """Deltas as OpenAI streams them: id, type and name first, then the arguments' text;
    the reassembled call equals the unstreamed one for the same seed; finish_reason tool_calls."""
    client = server.client()
    args = dict(
        model=M,
        messages=USER,
        tools=[WEATHER, CLOCK],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=200,
        seed=3,
    )
    whole = client.chat.completions.create(**args).choices[0].message.tool_calls
    calls: dict[int, dict] = {}
    finish, pieces = None, 0
    for chunk in client.chat.completions.create(**args, stream=True):
        for choice in chunk.choices:
            for d in choice.delta.tool_calls or []:
                if d.id:
                    assert d.index not in calls and d.type == "function" and d.function.name
                    calls[d.index] = {"name": d.function.name, "arguments": d.function.arguments or ""}
                else:
                    calls[d.index]["arguments"] += d.function.arguments
                    pieces += 1
            finish = choice.finish_reason or finish
    # At least one arguments delta after the call's start; how many depends on timing: a writer that falls
    # behind the scheduler merges the waiting deltas into one write (app._next), as a loaded 2-core host
    # does. Splits of every size are test_structured.py's test_tool_stream_reassembles_any_split.
    assert finish == "tool_calls" and pieces >= 1
    assert [(c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())] == [
        (c.function.name, json.loads(c.function.arguments)) for c in whole
    ]
    # the client's own accumulator agrees
    with client.chat.completions.stream(**args) as s:
        final = s.get_final_completion()
    check_call(final.choices[0].message.tool_calls[0])


def test_tool_results_in_the_history(server):
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
    messages = [
        *USER,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C"},
    ]
    r = server.client().chat.completions.create(
        model=M, messages=messages, tools=[WEATHER], max_tokens=200, response_format=SHORT_ANSWER, seed=1
    )
    assert r.choices[0].finish_reason in ("stop", "tool_calls")


@pytest.mark.parametrize(
    "body, param",
    [
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": 3}}},
            "response_format.json_schema.schema",
        ),
        ({"response_format": {"type": "json_object"}, "grammar": 'start: "x"'}, "grammar"),
        ({"grammar": "start: ((("}, "grammar"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": ""}}]}, "tools[0].function.name"),
        ({"tools": "get_weather"}, "tools"),
        ({"n": 0}, "n"),
        ({"messages": [{"role": "assistant", "tool_calls": [{"function": 1}]}]}, "messages[0].tool_calls[0]"),
    ],
)
def test_bad_structured_requests(server, body, param):
    status, raw, _ = post(server.port, "/v1/chat/completions", {"messages": USER, "max_tokens": 4, **body})
    assert status == 400, raw
    err = error_of(raw)
    assert err["param"] == param and "\n" not in err["message"] and "Traceback" not in err["message"]


# ---- n choices ----


def test_n_choices(server):
    client = server.client()
    r = client.completions.create(model=M, prompt="Once upon a time", max_tokens=12, n=3, seed=5, temperature=1.0)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert len({c.text for c in r.choices}) > 1  # each choice is its own sequence, with its own seed
    one = client.completions.create(model=M, prompt="Once upon a time", max_tokens=12, seed=5, temperature=1.0)
    assert r.choices[0].text == one.choices[0].text
    assert one.usage.completion_tokens <= r.usage.completion_tokens <= 3 * 12  # summed over the choices
    assert r.usage.prompt_tokens == one.usage.prompt_tokens  # counted once
    chat = client.chat.completions.create(model=M, messages=USER, max_tokens=8, n=2, seed=1)
    assert [c.index for c in chat.choices] == [0, 1]


def test_n_choices_stream(server):
    client = server.client()
    texts, finishes = {0: "", 1: "", 2: ""}, {}
    stream = client.chat.completions.create(
        model=M, messages=USER, max_tokens=10, n=3, seed=2, stream=True, stream_options={"include_usage": True}
    )
    usage = None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
    assert set(finishes) == {0, 1, 2} and usage is not None
    whole = client.chat.completions.create(model=M, messages=USER, max_tokens=10, n=3, seed=2)
    assert [texts[i] for i in range(3)] == [c.message.content for c in whole.choices]
    assert usage.completion_tokens == whole.usage.completion_tokens


# ---- llama.cpp's routes ----


def test_tokenize_detokenize(server):
    status, raw, _ = post(server.port, "/tokenize", {"content": "Hello world"})
    assert status == 200
    ids = json.loads(raw)["tokens"]
    assert ids and all(isinstance(i, int) for i in ids)
    status, raw, _ = post(server.port, "/detokenize", {"tokens": ids})
    assert status == 200 and json.loads(raw)["content"].strip() == "Hello world"
    status, raw, _ = post(server.port, "/tokenize", {"content": "Hello", "with_pieces": True, "add_special": True})
    pieces = json.loads(raw)["tokens"]
    assert pieces[0]["id"] == 1 and all({"id", "piece"} == set(p) for p in pieces)  # BOS first
    assert "".join(p["piece"] for p in pieces[1:] if isinstance(p["piece"], str)).strip() == "Hello"
    for path, body, param in [
        ("/tokenize", {}, "content"),
        ("/tokenize", {"content": 3}, "content"),
        ("/tokenize", {"content": "x", "bogus": 1}, "bogus"),
        ("/detokenize", {"tokens": [10**9]}, "tokens"),
        ("/detokenize", {"tokens": "abc"}, "tokens"),
    ]:
        status, raw, _ = post(server.port, path, body)
        assert status == 400 and error_of(raw)["param"] == param, (path, body, raw)
    status, raw, _ = post(server.port, "/tokenize", {"content": "x"}, key=None)
    assert status == 401


def test_props(server):
    status, raw, _ = request(server.port, "GET", "/props", headers={"Authorization": f"Bearer {KEY}"})
    assert status == 200
    props = json.loads(raw)
    assert props["total_slots"] == 4 and props["model_path"].endswith("stories260K.gguf")
    assert props["default_generation_settings"]["n_ctx"] == 1024
    assert props["default_generation_settings"]["params"]["temperature"] == 1.0
    assert "chat_template" in props and props["build_info"].startswith("corelm")
    assert request(server.port, "POST", "/props")[0] in (401, 405)
