"""`corelm serve` as a real subprocess on a loopback port: the OpenAI client against it, bad
input over raw sockets, continuous batching, disconnects and the bounded queue."""

from __future__ import annotations

import argparse
import http.client
import json
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from support import data_file, subprocess_kwargs

import corelm

openai = pytest.importorskip("openai", reason="the server tests use the official client: pip install openai")

KEY = "sk-corelm-test"
M = "stories260K"  # the model id: the file's stem


class ServerProcess:
    """`python -m corelm.server MODEL --port 0 ...`, waited on until /health answers."""

    def __init__(self, *args: str) -> None:
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", prefix="corelm-serve-")
        model = data_file("models", "stories260K", "stories260K.gguf")
        cmd = [sys.executable, "-m", "corelm.server", str(model), "--port", "0", "--threads", "1", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log, **subprocess_kwargs())
        deadline = time.monotonic() + 60
        while True:
            found = re.search(r"http://([\d.]+):(\d+)", Path(self.log.name).read_text())
            if found:
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = Path(self.log.name).read_text()
                self.stop()
                raise RuntimeError(f"server did not start:\n{log}")
            time.sleep(0.05)
        self.host, self.port = found.group(1), int(found.group(2))
        self.url = f"http://{self.host}:{self.port}"
        assert self.get("/health")[0] == 200

    def get(self, path: str, headers: dict | None = None) -> tuple[int, bytes]:
        return request(self.port, "GET", path, headers=headers)

    def metrics(self) -> dict[str, float]:
        text = self.get("/metrics")[1].decode()
        return {m[0]: float(m[1]) for m in re.findall(r"^(corelm_\w+(?:\{[^}]*\})?) (\S+)$", text, re.M)}

    def health(self) -> dict:
        return json.loads(self.get("/health")[1])

    def client(self, key: str = KEY, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=30, **kw)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        print(f"server log ({self.url if hasattr(self, 'url') else 'not started'}):")  # shown when a test fails
        print(Path(self.log.name).read_text()[-4000:])
        self.log.close()


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read(), dict(r.getheaders())
    finally:
        conn.close()


def post(port: int, path: str, obj, key: str | None = KEY, **headers):
    body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    h = {"Content-Type": "application/json", **headers}
    if key:
        h["Authorization"] = f"Bearer {key}"
    return request(port, "POST", path, body, h)


def raw(port: int, data: bytes) -> bytes:
    """Send bytes as they are and read the reply until the server closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except TimeoutError:
            pass
    return out


@pytest.fixture(scope="module")
def server():
    s = ServerProcess("--api-key", KEY, "--parallel", "4", "--ctx", "512")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def llm():
    return corelm.load(data_file("models", "stories260K", "stories260K.gguf"), ctx=512)


def assert_alive(server: ServerProcess) -> None:
    """The server still answers, and correctly, after a bad request."""
    status, body, _ = post(server.port, "/v1/completions", {"prompt": "Once upon a time", "max_tokens": 3})
    assert status == 200, body
    assert json.loads(body)["usage"]["completion_tokens"] == 3


def error_of(body: bytes) -> dict:
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


# ---- the OpenAI client ----


def test_models(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["stories260K"]
    assert server.client().models.retrieve("stories260K").id == "stories260K"


def test_completion_equals_python_api(server, llm):
    c = server.client().completions.create(model=M, prompt="Once upon a time", max_tokens=30, temperature=0)
    assert c.choices[0].text == llm.generate("Once upon a time", max_tokens=30, temperature=0)
    assert c.choices[0].finish_reason == "length"
    assert (c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.total_tokens) == (5, 30, 35)


def test_chat_and_streaming_chat(server, llm):
    client = server.client()
    messages = [{"role": "system", "content": "Tell a story."}, {"role": "user", "content": "Hi"}]
    r = client.chat.completions.create(model=M, messages=messages, max_tokens=24, temperature=0)
    text = r.choices[0].message.content
    assert r.choices[0].message.role == "assistant" and r.object == "chat.completion"
    assert text == llm.chat(messages, max_tokens=24, temperature=0)
    assert r.usage.completion_tokens == 24 and r.choices[0].finish_reason == "length"

    chunks = list(
        client.chat.completions.create(
            model=M,
            messages=messages,
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24


def test_stream_arrives_in_pieces(server):
    # A writer that falls behind sends what has piled up as one chunk, so with this tiny (fast)
    # model chunks may hold several tokens; a long reply still comes in many pieces.
    stream = server.client().completions.create(model=M, prompt="Once", max_tokens=400, temperature=0, stream=True)
    texts = [c.choices[0].text for c in stream]
    assert sum(1 for t in texts if t) > 3


def test_raw_stream_format(server):
    status, body, headers = post(
        server.port,
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "stream": True},
    )
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = body.decode().split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: {") for e in events[:-2])


def test_stop_strings(server, llm):
    client = server.client()
    full = llm.generate("Once upon a time", max_tokens=40, temperature=0)
    cut = full[: full.index("Lily")]
    for stop in ("Lily", ["Lily", "zzz"]):
        c = client.completions.create(model=M, prompt="Once upon a time", max_tokens=40, temperature=0, stop=stop)
        assert c.choices[0].text == cut and c.choices[0].finish_reason == "stop"
    pieces = client.completions.create(
        model=M, prompt="Once upon a time", max_tokens=40, temperature=0, stop="Lily", stream=True
    )
    pieces = list(pieces)
    assert "".join(p.choices[0].text for p in pieces) == cut and pieces[-1].choices[0].finish_reason == "stop"


def test_seed_makes_sampling_repeatable(server, llm):
    client = server.client()

    def sample(seed):
        return (
            client.completions.create(model=M, prompt="Lily and Ben", max_tokens=30, temperature=1.0, seed=seed)
            .choices[0]
            .text
        )

    assert (
        sample(7)
        == sample(7)
        == llm.generate("Lily and Ben", max_tokens=30, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=7)
    )
    assert len({sample(s) for s in range(4)}) > 1


def test_prefix_cache(server, llm):
    """A second request with the same system prompt reuses its keys and values: same reply,
    usage.prompt_tokens_details.cached_tokens and /metrics say how many prompt tokens were saved."""
    system = {"role": "system", "content": "You tell short stories about a dog named Max who likes the park. " * 3}
    before = server.metrics()
    replies, prompts = [], []
    for question in ("Tell me about Max.", "What did Max see?"):
        messages = [system, {"role": "user", "content": question}]
        r = server.client().chat.completions.create(model=M, messages=messages, max_tokens=16, temperature=0)
        assert r.choices[0].message.content == llm.chat(messages, max_tokens=16, temperature=0)
        replies.append(r)
        prompts.append(llm.chat_ids(messages))
    shared = next(i for i, (a, b) in enumerate(zip(*prompts, strict=False)) if a != b)
    cached = replies[1].usage.prompt_tokens_details.cached_tokens
    assert cached == shared > 100 and replies[0].usage.prompt_tokens_details.cached_tokens < shared
    after = server.metrics()
    assert after["corelm_prompt_tokens_cached_total"] - before["corelm_prompt_tokens_cached_total"] >= cached


def test_logprobs(server):
    client = server.client()
    c = client.completions.create(model=M, prompt="Once upon a time", max_tokens=12, temperature=0, logprobs=3)
    lp = c.choices[0].logprobs
    assert "".join(lp.tokens).removeprefix(" ") == c.choices[0].text.removeprefix(" ")
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 12
    for tok, v, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert len(top) == 3 and v <= 0 and top[tok] == pytest.approx(v) == max(top.values())  # greedy: the top one
    r = client.chat.completions.create(
        model=M,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = r.choices[0].logprobs.content
    assert len(content) == 8 and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)
    assert "".join(t.token for t in content).strip() == r.choices[0].message.content.strip()


@pytest.mark.parametrize(
    "kwargs, error, param",
    [
        (dict(n=99), openai.BadRequestError, "n"),
        (dict(max_tokens=-1), openai.BadRequestError, "max_tokens"),
        (dict(max_tokens=10**9), openai.BadRequestError, "max_tokens"),
        (dict(temperature=5), openai.BadRequestError, "temperature"),
        (dict(extra_body={"temperature": "hot"}), openai.BadRequestError, "temperature"),
        (dict(extra_body={"stop": 3}), openai.BadRequestError, "stop"),
        (dict(extra_body={"bogus_field": 1}), openai.BadRequestError, "bogus_field"),
        (dict(model="gpt-nothing"), openai.NotFoundError, "model"),
        (dict(prompt="Once upon a time " * 200), openai.BadRequestError, "prompt"),
    ],
)
def test_bad_completion_requests(server, kwargs, error, param):
    args = {"model": M, "prompt": "Hi", "max_tokens": 4, **kwargs}
    with pytest.raises(error) as e:
        server.client().completions.create(**args)
    err = error_of(e.value.response.content)
    assert err["param"] == param and err["type"] == "invalid_request_error"
    assert_alive(server)


def test_bad_chat_requests(server):
    client = server.client()
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model=M, messages=[])
    with pytest.raises(openai.BadRequestError, match="role"):
        client.chat.completions.create(model=M, messages=[{"role": "wizard", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        client.chat.completions.create(
            model=M, messages=[{"role": "user", "content": "x"}], logprobs=True, top_logprobs=99
        )
    assert_alive(server)


def test_api_key(server):
    with pytest.raises(openai.AuthenticationError) as e:
        server.client(key="wrong").models.list()
    assert error_of(e.value.response.content)["code"] == "invalid_api_key"
    status, body, _ = request(server.port, "GET", "/v1/models")
    assert status == 401 and "API key" in error_of(body)["message"]
    # The page, health and metrics are open.
    assert server.get("/")[0] == 200 and server.get("/health")[0] == 200 and server.get("/metrics")[0] == 200


# ---- malformed HTTP, raw ----


@pytest.mark.parametrize(
    "body, status, code",
    [
        (b"{not json", 400, "invalid_json"),
        (b"\xff\xfe\xfa", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_type"),
        (b'{"prompt": 5}', 400, "invalid_type"),
        (b'{"prompt": "x", "max_tokens": "10"}', 400, "invalid_type"),
        (b'{"prompt": "x", "max_tokens": 1.5}', 400, "invalid_type"),
        (b'{"prompt": "x", "max_tokens": true}', 400, "invalid_type"),
        (b'{"prompt": "x", "max_tokens": 0}', 400, "invalid_value"),
        (b'{"prompt": "x", "stream": "yes"}', 400, "invalid_type"),
        (b'{"prompt": [1, 99999]}', 400, "invalid_value"),
        (b'{"prompt": "x", "logprobs": 50}', 400, "invalid_value"),
        (b'{"max_tokens": 3}', 400, "missing_required_parameter"),
        (b'{"prompt": "x", "echo": true}', 400, "unsupported_parameter"),
        (b'{"prompt": "x", "stream_options": {"include_usage": true}}', 400, None),
    ],
)
def test_malformed_bodies(server, body, status, code):
    got, reply, _ = post(server.port, "/v1/completions", body)
    assert got == status, reply
    assert error_of(reply)["code"] == code
    assert_alive(server)


def test_http_errors(server):
    port = server.port
    status, body, headers = request(port, "GET", "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"})
    assert status == 405 and "POST" in headers["Allow"] and error_of(body)["code"] == "method_not_allowed"
    status, body, _ = post(port, "/health", {})
    assert status == 405
    status, body, _ = request(port, "GET", "/nowhere")
    assert status == 404 and error_of(body)["code"] == "unknown_url"
    status, body, _ = request(port, "GET", "/v1/nowhere", headers={"Authorization": f"Bearer {KEY}"})
    assert status == 404
    # Oversized: refused from the header, before reading the body.
    reply = raw(
        port,
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + KEY.encode()
        + b"\r\nContent-Length: 100000000\r\n\r\n{",
    )
    assert reply.startswith(b"HTTP/1.1 413") and b"request_too_large" in reply
    reply = raw(
        port,
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer "
        + KEY.encode()
        + b"\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 411")
    reply = raw(port, b"NONSENSE\r\n\r\n")  # an HTTP/0.9-style line: the reply is the bare body
    assert json.loads(reply)["error"]["message"].startswith("Bad request syntax")
    reply = raw(port, b"GET /health HTTP/1.1\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 431") and b'"error"' in reply
    reply = raw(port, b"BREW /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 501") and b'"error"' in reply  # a method HTTP does not know
    status, body, _ = request(port, "DELETE", "/v1/models")
    assert status == 401  # /v1 asks for the key first
    status, body, _ = request(port, "DELETE", "/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    assert status == 405
    assert_alive(server)


def test_keep_alive_after_errors(server):
    """One connection, several requests: an error does not break the next request on it."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    h = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    for body, status in [
        (b"{bad", 400),
        (b'{"prompt": "Hi", "max_tokens": 2}', 200),
        (b'{"n": 99, "prompt": "x"}', 400),
    ]:
        conn.request("POST", "/v1/completions", body=body, headers=h)
        r = conn.getresponse()
        assert r.status == status
        r.read()
    conn.close()


# ---- continuous batching ----


def test_concurrent_streams_are_batched(server):
    client = server.client()
    prompts = ["Once upon a time", "Lily and Ben", "The cat", "One day, a little"]
    settings = [dict(temperature=0), dict(temperature=0), dict(temperature=0.9, seed=11), dict(temperature=0)]
    alone = [
        client.completions.create(model=M, prompt=p, max_tokens=200, **s).choices[0].text
        for p, s in zip(prompts, settings, strict=True)
    ]
    before = server.metrics()
    results: list[str | None] = [None] * len(prompts)
    start = threading.Barrier(len(prompts))

    def run(i: int) -> None:
        start.wait()
        stream = client.completions.create(model=M, prompt=prompts[i], max_tokens=200, stream=True, **settings[i])
        results[i] = "".join(c.choices[0].text for c in stream)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == alone
    after = server.metrics()
    steps = after["corelm_forward_batch_calls_total"] - before["corelm_forward_batch_calls_total"]
    assert after["corelm_batch_sequences_max"] >= 3
    assert after["corelm_batched_steps_total"] > before["corelm_batched_steps_total"]
    assert steps < 4 * 201  # fewer forward calls than tokens: steps were shared
    assert after["corelm_generation_tokens_total"] - before["corelm_generation_tokens_total"] == 4 * 200
    assert 'corelm_http_requests_total{route="/v1/completions",code="200"}' in after


# ---- one slot, one waiting place: disconnects and 503 ----


@pytest.fixture(scope="module")
def small_server():
    s = ServerProcess("--parallel", "1", "--queue", "1", "--ctx", "8192")
    yield s
    s.stop()


def send_completion(port: int, stream: bool, max_tokens: int = 2000) -> socket.socket:
    """Start a long completion over a raw socket."""
    body = json.dumps({"prompt": "Once upon a time", "max_tokens": max_tokens, "stream": stream}).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return s


def open_stream(port: int) -> tuple[socket.socket, bytes]:
    """Start a long streaming completion; returns its socket once tokens flow."""
    s = send_completion(port, stream=True)
    got = b""
    while got.count(b"data: ") < 3:
        got += s.recv(4096)
    return s, got


def wait_for(cond, timeout: float = 5.0) -> float:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.02)
    return time.monotonic() - t0


def test_disconnect_frees_the_slot(small_server):
    before = small_server.metrics()
    sock, got = open_stream(small_server.port)
    assert got.startswith(b"HTTP/1.1 200") and small_server.health()["slots_busy"] == 1
    sock.close()
    assert wait_for(lambda: small_server.health()["slots_busy"] == 0) < 1.0
    after = small_server.metrics()
    assert after["corelm_requests_cancelled_total"] == before["corelm_requests_cancelled_total"] + 1
    assert after["corelm_generation_tokens_total"] - before["corelm_generation_tokens_total"] < 1000
    assert_alive_small(small_server)


def test_disconnect_without_streaming_frees_the_slot(small_server):
    before = small_server.metrics()
    # Long enough that the tiny model (thousands of tokens a second) is still generating when the
    # handler's next poll of the socket (every POLL_SECONDS) finds the client gone.
    sock = send_completion(small_server.port, stream=False, max_tokens=8000)
    wait_for(
        lambda: small_server.metrics()["corelm_generation_tokens_total"] > before["corelm_generation_tokens_total"]
    )
    sock.close()
    assert wait_for(lambda: small_server.health()["slots_busy"] == 0) < 1.0
    after = small_server.metrics()
    assert after["corelm_requests_cancelled_total"] == before["corelm_requests_cancelled_total"] + 1
    assert after["corelm_generation_tokens_total"] - before["corelm_generation_tokens_total"] < 4000
    assert_alive_small(small_server)


def assert_alive_small(server: ServerProcess) -> None:
    status, body, _ = post(server.port, "/v1/completions", {"prompt": "Hi", "max_tokens": 3}, key=None)
    assert status == 200, body


def test_queue_full_gives_503(small_server):
    running, _ = open_stream(small_server.port)  # holds the only slot
    waiting: dict = {}

    def queued() -> None:
        waiting["reply"] = post(small_server.port, "/v1/completions", {"prompt": "Hi", "max_tokens": 5}, key=None)

    t = threading.Thread(target=queued)
    t.start()
    wait_for(lambda: small_server.health()["queue_depth"] == 1)
    status, body, headers = post(small_server.port, "/v1/completions", {"prompt": "Hi", "max_tokens": 5}, key=None)
    assert status == 503 and headers["Retry-After"] == "1"
    assert error_of(body)["code"] == "queue_full"
    with pytest.raises(openai.InternalServerError):  # what the client makes of a 503
        small_server.client().completions.create(model=M, prompt="Hi", max_tokens=5)
    running.close()  # frees the slot: the waiting request runs
    t.join(10)
    assert waiting["reply"][0] == 200
    assert small_server.metrics()['corelm_http_requests_total{route="/v1/completions",code="503"}'] == 2
    assert_alive_small(small_server)


# ---- pieces ----


def test_stop_strings_helper():
    from corelm.engine.stops import StopStrings

    held = StopStrings(["</s>", "User:"])
    assert held.push("Hello <") == "Hello " and held.push("/") == "" and held.push("x") == "</x"
    assert held.push(" Us") == " " and held.push("er: more") == "" and held.stopped
    assert held.flush("tail") == ""
    held = StopStrings(["abc"])
    assert held.push("xa") == "x" and held.flush("b") == "ab" and not held.stopped
    assert StopStrings([]).push("abc") == "abc"


# ---- the CLI hook ----


def test_add_parser():
    from corelm.server import add_parser, cmd_serve

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "m.gguf", "--port", "9000", "--parallel", "2", "--queue", "3", "--ctx", "64"])
    assert args.func is cmd_serve and (args.port, args.parallel, args.queue, args.ctx) == (9000, 2, 3, 64)
    assert args.host == "127.0.0.1"
    assert parser.parse_args(["serve"]).model is None  # corelm's default model


def test_page_is_served(server):
    status, body, headers = request(server.port, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"/v1/chat/completions" in body and b"getReader" in body
    assert not re.search(rb"""(src|href)=["']?(https?:)?//""", body)  # no external resources
    with urllib.request.urlopen(server.url + "/health") as r:
        assert json.loads(r.read())["status"] == "ok"
