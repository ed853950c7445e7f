"""The Engine (corelm/engine/scheduler.py): chunked prefill, the prefix cache, cancellation,
waiting for a slot; on the real tiny model."""

from __future__ import annotations

import pytest
from support import stories260k

import corelm
from corelm.engine.sampling import SamplingParams
from corelm.engine.scheduler import Delta, Done, Engine, Generation, Request

GREEDY = SamplingParams(temperature=0)


@pytest.fixture(scope="module")
def llm():
    return corelm.load(stories260k())


def engine(llm, slots=2, prefill_chunk=512) -> Engine:
    return Engine(llm.model, llm.tokenizer, slots, 256, prefill_chunk=prefill_chunk)


def finish(eng: Engine) -> list[tuple[Generation, Delta | Done]]:
    events = []
    while eng.busy:
        events += eng.step()
    return events


def greedy(llm, prompt: list[int], n: int = 24) -> Request:
    return Request(prompt, n, GREEDY, ignore_eos=True)


def fresh_tokens(llm, prompt: list[int], n: int = 24) -> list[int]:
    eng = engine(llm, slots=1)
    seq = eng.add(greedy(llm, prompt, n))
    finish(eng)
    return seq.tokens


def test_a_free_slot_s_prefix_is_reused(llm):
    system = llm.tokenize("Once upon a time, there was a little dog named Max. Max liked to run and")
    first, second = system + llm.tokenize(" jump", add_bos=False), system + llm.tokenize(" eat", add_bos=False)
    eng = engine(llm)
    a = eng.add(greedy(llm, first))
    finish(eng)
    prefilled = eng.stats.prompt_tokens
    b = eng.add(greedy(llm, second))
    finish(eng)
    shared = next(i for i, (x, y) in enumerate(zip(first, second, strict=False)) if x != y)
    assert b.slot is a.slot and b.stats.cached_tokens == shared
    assert eng.stats.prompt_tokens - prefilled == len(second) - shared  # only the new tokens were computed
    assert b.tokens == fresh_tokens(llm, second)
    # The same prompt again: everything but its last token comes from the cache.
    c = eng.add(greedy(llm, second))
    finish(eng)
    assert c.stats.cached_tokens == len(second) - 1 and c.tokens == b.tokens


def test_a_running_sequence_s_prefix_is_copied(llm):
    system = llm.tokenize("Lily and Ben went to the park. They saw a big tree and")
    eng = engine(llm)
    a = eng.add(greedy(llm, system + llm.tokenize(" a bird", add_bos=False), 40))
    eng.step()  # a's prompt is in its slot; a keeps running
    second = system + llm.tokenize(" a cat", add_bos=False)
    b = eng.add(greedy(llm, second))
    eng.step()
    assert b.slot is not a.slot and not a.done and b.stats.cached_tokens >= len(system) - 1
    finish(eng)
    assert b.tokens == fresh_tokens(llm, second)


def test_chunked_prefill_equals_one_step_and_keeps_decoding(llm):
    long = llm.tokenize("Once upon a time, there was a little girl named Lily. She loved to play outside " * 3)
    eng = engine(llm, prefill_chunk=8)
    running = eng.add(greedy(llm, llm.tokenize("Tom had a red ball"), 60))
    eng.step()
    joining = eng.add(greedy(llm, long))
    before = len(running.tokens)
    steps = 0
    while joining.cached < len(long):
        eng.step()
        steps += 1
    assert steps >= len(long) // 8 and len(running.tokens) == before + steps  # a token every step
    finish(eng)
    assert joining.tokens == fresh_tokens(llm, long)


def test_cancel_frees_the_slot_and_requests_wait_in_order(llm):
    eng = engine(llm, slots=1)
    ids = llm.tokenize("Once upon a time")
    a, b, c = (eng.add(greedy(llm, ids, 50)) for _ in range(3))
    eng.step()
    assert eng.active == [a] and list(eng.waiting) == [b, c]
    eng.cancel(c)  # waiting
    eng.cancel(a)  # running: its slot goes to b at the next step
    events = finish(eng)
    assert a.done and c.done and {s for s, _ in events} == {b} and isinstance(events[-1][1], Done)
    assert eng.stats.cancelled == 2 and eng.stats.finished == 1 and len(b.tokens) == 50


def test_events_and_finish_reasons(llm):
    eng = engine(llm)
    ids = llm.tokenize("Once upon a time")
    full = eng.add(greedy(llm, ids, 30))
    cut = eng.add(Request(ids, 30, GREEDY, stops=["Lily"]))
    none = eng.add(Request(ids, 0, GREEDY))
    events = finish(eng)
    text = {s: "".join(e.text for q, e in events if q is s and isinstance(e, Delta)) for s in (full, cut)}
    done = {s: e for s, e in events if isinstance(e, Done)}
    assert text[cut] == text[full][: text[full].index("Lily")]
    assert done[full].finish_reason == "length" and done[cut].finish_reason == "stop"
    assert done[none].finish_reason == "length" and done[none].stats.generated_tokens == 0


def test_llm_reuses_its_last_prompt(llm):
    prompt = "Once upon a time, there was a little girl named Lily."
    first = llm.generate(prompt, max_tokens=20, temperature=0)
    again = llm.generate(prompt, max_tokens=20, temperature=0)
    assert again == first and llm.last_stats.cached_tokens == len(llm.tokenize(prompt)) - 1


def test_same_seed_same_text_in_a_batch_or_alone(llm):
    ids = llm.tokenize("Lily and Ben")
    params = SamplingParams(temperature=1.0, seed=11)
    alone = llm.generate(ids, max_tokens=30, temperature=1.0, seed=11)
    eng = engine(llm)
    other = eng.add(Request(llm.tokenize("Tom had a dog"), 30, SamplingParams(temperature=1.0, seed=3)))
    seq = eng.add(Request(ids, 30, params))
    events = finish(eng)
    assert "".join(e.text for s, e in events if s is seq and isinstance(e, Delta)) == alone
    assert other.done
