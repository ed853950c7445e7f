"""Generation: sampling, stop conditions, the Python API's contracts, chat templates."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from support import DATA, data_file, greedy_ids

import corelm
from corelm.engine.chat import render_chat
from corelm.engine.sampling import Sampler, SamplingParams


@pytest.fixture(scope="module")
def llm():
    return corelm.load(data_file("models", "stories260K", "stories260K.gguf"))


def test_greedy_is_deterministic(llm):
    a = llm.generate("Once upon a time", max_tokens=30, temperature=0)
    assert a == llm.generate("Once upon a time", max_tokens=30, temperature=0)
    assert llm.last_stats.generated_tokens == 30 and llm.last_stats.finish_reason == "length"


def test_seed_makes_sampling_repeatable(llm):
    a = llm.generate("Once upon a time", max_tokens=40, temperature=1.0, seed=7)
    assert a == llm.generate("Once upon a time", max_tokens=40, temperature=1.0, seed=7)
    others = {llm.generate("Once upon a time", max_tokens=40, temperature=1.0, seed=s) for s in range(4)}
    assert len(others) > 1


def test_stream_equals_generate(llm):
    pieces = list(llm.stream("Lily and Ben", max_tokens=25, temperature=0.7, seed=3))
    assert len(pieces) > 1
    assert "".join(pieces) == llm.generate("Lily and Ben", max_tokens=25, temperature=0.7, seed=3)


def test_prompt_as_token_ids(llm):
    ids = llm.tokenize("Once upon a time")
    assert ids[0] == llm.tokenizer.bos_id
    assert llm.generate(ids, max_tokens=10, temperature=0) == llm.generate(
        "Once upon a time", max_tokens=10, temperature=0
    )
    assert llm.detokenize(ids[1:]) == "Once upon a time"


def test_stop_strings_and_ids(llm):
    full = llm.generate("Once upon a time", max_tokens=40, temperature=0)
    assert "Lily" in full
    cut = llm.generate("Once upon a time", max_tokens=40, temperature=0, stop=["Lily"])
    assert cut == full[: full.index("Lily")] and llm.last_stats.finish_reason == "stop"
    first = llm.tokenize(full, add_bos=False)[3]
    short = llm.generate("Once upon a time", max_tokens=40, temperature=0, stop_ids=[first])
    assert len(llm.tokenize(short, add_bos=False)) <= 3


def test_stop_tokens_and_ignore_eos(llm):
    # stories260K (llama2.c) never emits its EOS id; a period is a stop token it does emit.
    period = llm.tokenize(".", add_bos=False)[-1]
    text = llm.generate("Once upon a time", max_tokens=100, temperature=0, stop_ids=[period])
    assert llm.last_stats.finish_reason == "stop" and "." not in text
    llm.generate("Once upon a time", max_tokens=120, temperature=0, stop_ids=[period], ignore_eos=True)
    assert llm.last_stats.generated_tokens == 120 and llm.last_stats.finish_reason == "length"
    assert llm.tokenizer.eos_id in llm.tokenizer.eos_ids


def test_context_limits(llm):
    small = corelm.load(data_file("models", "stories260K", "stories260K.gguf"), ctx=16)
    with pytest.raises(ValueError, match="context"):
        small.generate("Once upon a time " * 10, max_tokens=4)
    small.generate("Once upon a time", max_tokens=100, temperature=0, ignore_eos=True)
    assert small.last_stats.prompt_tokens + small.last_stats.generated_tokens <= 17


def test_bad_arguments(llm):
    with pytest.raises(ValueError, match="out of range"):
        llm.generate([1, 5000], max_tokens=2)
    with pytest.raises(ValueError, match="out of range"):
        llm.logits([-1])
    with pytest.raises(ValueError, match="max_tokens"):
        llm.generate("x", max_tokens=-1)
    with pytest.raises(ValueError):
        llm.generate("x", top_p=0)
    with pytest.raises(ValueError, match="empty"):
        llm.generate([], max_tokens=2)


def test_concurrent_calls_are_safe(llm):
    expected = llm.generate("Once upon a time", max_tokens=20, temperature=0)
    results = []

    def run():
        results.append(llm.generate("Once upon a time", max_tokens=20, temperature=0))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 4


def test_logits_every_position(llm):
    ids = llm.tokenize("Once upon a time, there was")
    out = llm.logits(ids)
    assert out.shape == (len(ids), llm.config.vocab_size) and out.dtype == np.float32
    # The greedy next token is the argmax of the last position (compared as ids: its text need
    # not tokenize back to the same token).
    (nxt,) = greedy_ids(llm.model, ids, 1)
    assert nxt == int(out[-1].argmax())


# ---- sampler ----


def test_sampler_filters():
    logits = np.array([5.0, 4.0, 1.0, 0.0, -3.0], np.float32)
    assert Sampler(SamplingParams(temperature=0))(logits) == 0
    top1 = Sampler(SamplingParams(temperature=5.0, top_k=1, seed=0))
    assert {top1(logits) for _ in range(50)} == {0}
    topk2 = Sampler(SamplingParams(temperature=5.0, top_k=2, top_p=1.0, min_p=0.0, seed=0))
    assert {topk2(logits) for _ in range(200)} == {0, 1}
    minp = Sampler(SamplingParams(temperature=5.0, top_k=0, top_p=1.0, min_p=0.3, seed=0))
    assert {minp(logits) for _ in range(200)} == {0, 1}  # p(2)/p(0) = e^-4 < 0.3
    nucleus = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=0.5, min_p=0.0, seed=0))
    assert {nucleus(logits) for _ in range(100)} == {0}  # p(0) = 0.71 covers 0.5


def test_penalties():
    logits = np.array([3.0, 2.9, -1.0], np.float32)
    rep = Sampler(SamplingParams(temperature=0, repeat_penalty=1.5))
    assert rep(logits, history=[0]) == 1  # 3.0 / 1.5 < 2.9
    freq = Sampler(SamplingParams(temperature=0, frequency_penalty=0.1))
    assert freq(logits, history=[0]) == 0 and freq(logits, history=[0, 0]) == 1
    pres = Sampler(SamplingParams(temperature=0, presence_penalty=0.2))
    assert pres(logits, history=[0]) == 1


def test_sampling_distribution_matches_softmax():
    logits = np.array([1.0, 0.5, 0.0, -0.5], np.float32)
    s = Sampler(SamplingParams(temperature=0.7, top_k=0, top_p=1.0, min_p=0.0, seed=1))
    counts = np.bincount([s(logits) for _ in range(20000)], minlength=4) / 20000
    p = np.exp(logits / 0.7)
    np.testing.assert_allclose(counts, p / p.sum(), atol=0.015)


# ---- chat templates ----

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA2 = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'].strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + message['content'].strip() + ' ' + eos_token }}{% else %}"
    "{{ raise_exception('unknown role ' + message['role']) }}{% endif %}{% endfor %}"
)


@pytest.mark.parametrize("template", [CHATML, LLAMA2], ids=["chatml", "llama2"])
def test_chat_template_renders_like_transformers(template):
    transformers = pytest.importorskip("transformers")
    tok_json = DATA / "tokenizers" / "gpt2" / "tokenizer.json"
    if not tok_json.exists():
        pytest.skip(f"test data not found: {tok_json}")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tok_json), bos_token="<s>", eos_token="</s>")
    hf.chat_template = template
    messages = [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": " How are you? "},
    ]
    expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert render_chat(template, messages, bos_token="<s>", eos_token="</s>") == expected


def test_chat_template_errors():
    with pytest.raises(ValueError, match="unknown role"):
        render_chat(LLAMA2, [{"role": "tool", "content": "x"}])
    with pytest.raises(ValueError, match="role"):
        render_chat(CHATML, [{"content": "no role"}])


def test_chat_with_fallback_template(llm):
    assert llm.tokenizer.chat_template is None
    reply = llm.chat([{"role": "user", "content": "Tell me a story"}], max_tokens=20, temperature=0)
    assert isinstance(reply, str) and llm.last_stats.generated_tokens > 0


def test_fit_messages_drops_the_oldest_turns_and_keeps_system_and_last():
    from corelm.engine.chat import fit_messages

    def msgs(*roles):
        return [{"role": r, "content": f"{r}{i}"} for i, r in enumerate(roles)]

    convo = msgs("system", "user", "assistant", "user", "assistant", "user")
    kept, dropped = fit_messages(convo, len, 4)
    assert dropped == 2 and [m["content"] for m in kept] == ["system0", "user3", "assistant4", "user5"]
    kept, dropped = fit_messages(convo, len, 1)  # cannot fit: system and the last message stay
    assert dropped == 4 and [m["content"] for m in kept] == ["system0", "user5"]
    assert fit_messages(convo, len, 6) == (convo, 0)


def test_chat_without_a_template_stops_at_a_turn_boundary():
    # The fallback format's turn markers and a blank line end a reply (as the server's chat does):
    # corelm's default model writes Shakespeare's speeches, a blank line between two.
    from corelm.engine.chat import FALLBACK_STOPS

    llm = corelm.load()
    assert llm.tokenizer.chat_template is None and "\n\n" in FALLBACK_STOPS and "<|user|>" in FALLBACK_STOPS
    messages = [{"role": "user", "content": "Hello there"}]
    long = llm.generate(llm.chat_ids(messages), max_tokens=250, temperature=0)
    reply = llm.chat(messages, max_tokens=250, temperature=0)
    assert "\n\n" in long and reply == long[: long.index("\n\n")] and llm.last_stats.finish_reason == "stop"


def test_llm_repr_says_what_is_loaded(llm):
    text = repr(llm)
    info = corelm.info()
    assert text.startswith("<corelm.LLM llama decoder: ") and "parameters" in text and "MiB" in text
    assert "F32" in text and f"context {llm.ctx} (trained 2048)" in text
    assert f"{info['threads']} threads, {info['isa']} kernels" in text


def test_sampling_parameters_are_named_when_wrong(llm):
    for kwargs, message in [
        ({"temperature": -1}, "temperature must be >= 0, got -1"),
        ({"top_p": 2}, "top_p must be above 0 and at most 1, got 2"),
        ({"min_p": float("nan")}, "min_p must be from 0 to 1, got nan"),
        ({"repeat_penalty": 0}, "repeat_penalty must be positive, got 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            llm.generate("Once", max_tokens=2, **kwargs)
