"""`corelm serve` on encoders and task heads: /v1/embeddings through the official OpenAI client,
/v1/classify and /v1/tag, a decoder that embeds while it generates, bad requests, and an
encoder server refusing completions. Each server is a real subprocess on a loopback port."""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from support import data_file, subprocess_kwargs
from test_server import KEY, ServerProcess, error_of, post, request, wait_for

import corelm

openai = pytest.importorskip("openai", reason="the server tests use the official client: pip install openai")
transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from hf_models import build_encoder, train_tokenizer  # noqa: E402

TEXTS = [
    "Once upon a time there was a little girl named Lily.",
    "Ben ran.",
    "The sun was hot and the sky was blue. Lily and Ben went to the park to play with a big red ball.",
    "Hi!",
]


class FolderServer(ServerProcess):
    """ServerProcess on another model: `python -m corelm.server MODEL --port 0 --threads 1 ...`."""

    def __init__(self, model: Path, *args: str) -> None:
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", prefix="corelm-serve-")
        cmd = [sys.executable, "-m", "corelm.server", str(model), "--port", "0", "--threads", "1", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log, **subprocess_kwargs())
        deadline = time.monotonic() + 60
        while not (found := re.search(r"http://([\d.]+):(\d+)", Path(self.log.name).read_text())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = Path(self.log.name).read_text()
                self.stop()
                raise RuntimeError(f"server did not start:\n{log}")
            time.sleep(0.05)
        self.host, self.port = found.group(1), int(found.group(2))
        self.url = f"http://{self.host}:{self.port}"
        self.model_id = model.name if model.is_dir() else model.stem
        assert self.get("/health")[0] == 200

    def post(self, path: str, obj) -> tuple[int, dict]:
        status, body, _ = post(self.port, path, obj)
        return status, json.loads(body)


def save_hf_tokenizer(folder: Path, text: str) -> None:
    """A WordPiece tokenizer trained on `text`, saved as transformers saves one (as test_encoders)."""
    tok = train_tokenizer("bert", folder, text)
    specials = dict(cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]")
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **specials).save_pretrained(folder)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """A random BERT sequence classifier and a token classifier, with a trained tokenizer each."""
    story = data_file("corpora", "tinystories_sample.txt").read_text(encoding="utf-8")
    root = tmp_path_factory.mktemp("encoders")
    out = {}
    for head, seed in (("sequence", 1), ("token", 2)):
        folder = out[head] = root / f"bert-{head}"
        folder.mkdir()
        model = build_encoder("bert", head, folder, seed=seed)
        with torch.no_grad():  # confident tags, so that entities form
            model.classifier.weight.mul_(40)
        model.save_pretrained(folder)
        save_hf_tokenizer(folder, story)
    return out


@pytest.fixture(scope="module")
def classifier(folders):
    s = FolderServer(folders["sequence"], "--api-key", KEY, "--prefill-chunk", "32")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def tagger(folders):
    s = FolderServer(folders["token"], "--api-key", KEY)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def classifier_llm(folders):
    return corelm.load(folders["sequence"])


@pytest.fixture(scope="module")
def decoder():
    s = ServerProcess("--api-key", KEY, "--parallel", "2", "--ctx", "256")
    yield s
    s.stop()


def assert_alive(server: FolderServer) -> None:
    status, body = server.post("/v1/embeddings", {"input": "still here"})
    assert status == 200 and len(body["data"]) == 1, body


def usage_of(llm, texts: list[str]) -> int:
    return sum(len(e.ids) for e in llm.encode(texts))


# ---- embeddings through the OpenAI client ----


def test_embeddings_equal_python_api(classifier, classifier_llm):
    client, llm = classifier.client(), classifier_llm
    want = llm.embed(TEXTS)
    for fmt in (openai.NOT_GIVEN, "float"):  # not given: the client asks for base64 and decodes it
        r = client.embeddings.create(model=classifier.model_id, input=TEXTS, encoding_format=fmt)
        assert r.object == "list" and r.model == classifier.model_id
        assert [d.index for d in r.data] == [0, 1, 2, 3] and all(d.object == "embedding" for d in r.data)
        np.testing.assert_allclose(np.array([d.embedding for d in r.data]), want, atol=1e-5)
        assert r.usage.prompt_tokens == r.usage.total_tokens == usage_of(llm, TEXTS)
    floats = client.embeddings.create(model=classifier.model_id, input=TEXTS, encoding_format="float")
    b64 = client.embeddings.create(model=classifier.model_id, input=TEXTS, encoding_format="base64")
    for f, b in zip(floats.data, b64.data, strict=True):
        assert isinstance(b.embedding, str)  # asked for explicitly: the client leaves it as it came
        assert np.frombuffer(base64.b64decode(b.embedding), "<f4").tolist() == f.embedding  # bit for bit
    one = client.embeddings.create(model=classifier.model_id, input=TEXTS[2], dimensions=llm.config.n_embd)
    assert len(one.data) == 1
    np.testing.assert_allclose(one.data[0].embedding, want[2], atol=1e-5)


def test_many_inputs_are_split_into_units(classifier, classifier_llm):
    """--prefill-chunk 32 here: 300 texts take many forward passes (units); order and values hold."""
    texts = [f"{TEXTS[i % 4]} {i}" for i in range(300)]
    before = classifier.metrics()
    r = classifier.client().embeddings.create(model=classifier.model_id, input=texts)
    np.testing.assert_allclose(np.array([d.embedding for d in r.data]), classifier_llm.embed(texts), atol=1e-5)
    after = classifier.metrics()
    assert after["corelm_task_units_total"] - before["corelm_task_units_total"] > 1
    assert after['corelm_task_requests_total{task="embed"}'] == before['corelm_task_requests_total{task="embed"}'] + 1
    tokens = 'corelm_task_input_tokens_total{task="embed"}'
    assert after[tokens] - before[tokens] == r.usage.prompt_tokens == usage_of(classifier_llm, texts)


def test_token_ids_are_embedded_as_given(classifier, classifier_llm):
    """Ids run as they are: the framed ids of a text give that text's vector; bare ids another."""
    client, llm = classifier.client(), classifier_llm
    framed = [e.ids for e in llm.encode(TEXTS[:2])]
    r = client.embeddings.create(model=classifier.model_id, input=framed)
    np.testing.assert_allclose(np.array([d.embedding for d in r.data]), llm.embed(TEXTS[:2]), atol=1e-5)
    assert r.usage.prompt_tokens == sum(map(len, framed))
    single = client.embeddings.create(model=classifier.model_id, input=framed[0])  # one array of ids
    np.testing.assert_allclose(single.data[0].embedding, r.data[0].embedding, atol=1e-6)
    bare = client.embeddings.create(model=classifier.model_id, input=framed[0][1:-1])  # no [CLS] / [SEP]
    assert not np.allclose(bare.data[0].embedding, r.data[0].embedding, atol=1e-3)


# ---- classify and tag ----


def test_classify_equals_python_api(classifier, classifier_llm):
    llm = classifier_llm
    status, body = classifier.post("/v1/classify", {"model": classifier.model_id, "input": TEXTS})
    assert status == 200, body
    assert body["object"] == "list" and body["model"] == classifier.model_id
    probs = llm.class_probabilities(TEXTS)
    for i, (item, (label, score)) in enumerate(zip(body["data"], llm.classify(TEXTS), strict=True)):
        assert item["index"] == i and item["label"] == label
        assert item["score"] == pytest.approx(score, abs=1e-5)
        assert list(item["scores"]) == llm.labels
        np.testing.assert_allclose(list(item["scores"].values()), probs[i], atol=1e-5)
    assert body["usage"] == {"prompt_tokens": usage_of(llm, TEXTS), "total_tokens": usage_of(llm, TEXTS)}
    status, one = classifier.post("/v1/classify", {"input": TEXTS[1]})
    assert status == 200 and one["data"][0]["label"] == body["data"][1]["label"]
    # no token classifier here: the error names what the model does
    status, body = classifier.post("/v1/tag", {"input": TEXTS})
    err = body["error"]
    assert status == 400 and err["code"] == "unsupported_model" and err["type"] == "invalid_request_error"
    assert "cannot tag" in err["message"] and "embed, classify" in err["message"]
    assert "/v1/embeddings" in err["message"] and "/v1/classify" in err["message"]


def test_tag_equals_python_api(tagger, folders):
    llm = corelm.load(folders["token"])
    status, body = tagger.post("/v1/tag", {"input": TEXTS})
    assert status == 200, body
    want = llm.tag(TEXTS)
    assert [item["index"] for item in body["data"]] == [0, 1, 2, 3]
    for item, entities, text in zip(body["data"], want, TEXTS, strict=True):
        got = item["entities"]
        assert [(e["label"], e["text"], e["start"], e["end"]) for e in got] == [
            (e.label, e.text, e.start, e.end) for e in entities
        ]
        assert all(text[e["start"] : e["end"]] == e["text"] for e in got)
        np.testing.assert_allclose([e["score"] for e in got], [e.score for e in entities], atol=1e-5)
    assert sum(len(item["entities"]) for item in body["data"]) > 0, "the test should see entities"
    assert body["usage"]["prompt_tokens"] == usage_of(llm, TEXTS)
    status, one = tagger.post("/v1/tag", {"input": TEXTS[0]})
    assert status == 200 and one["data"][0]["entities"] == body["data"][0]["entities"]
    status, body = tagger.post("/v1/classify", {"input": "x"})
    assert status == 400 and "cannot classify" in body["error"]["message"] and "/v1/tag" in body["error"]["message"]


# ---- an encoder server does not generate ----


def test_encoder_refuses_completions(classifier):
    client = classifier.client()
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=classifier.model_id, prompt="Once", max_tokens=3)
    err = e.value.body
    assert err["code"] == "unsupported_model" and err["type"] == "invalid_request_error"
    assert "cannot generate" in err["message"] and "/v1/embeddings" in err["message"]
    with pytest.raises(openai.BadRequestError, match="cannot generate"):
        client.chat.completions.create(model=classifier.model_id, messages=[{"role": "user", "content": "Hi"}])
    assert [m.id for m in client.models.list().data] == [classifier.model_id]
    health = classifier.health()
    assert health["status"] == "ok" and health["slots_total"] == 0 and health["capabilities"] == ["classify", "embed"]
    status, page, headers = request(classifier.port, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"cannot generate" in page and b"/v1/embeddings" in page
    assert_alive(classifier)


# ---- bad requests ----

BAD = [
    ({"input": []}, 400, "input", "invalid_value"),
    ({"input": ""}, 400, "input", "invalid_value"),
    ({"input": ["a", ""]}, 400, "input", "invalid_value"),
    ({"input": 5}, 400, "input", "invalid_type"),
    ({"input": {"text": "a"}}, 400, "input", "invalid_type"),
    ({"input": ["a", 1]}, 400, "input", "invalid_type"),
    ({"input": [1.5, 2]}, 400, "input", "invalid_type"),
    ({"input": [[1, "a"]]}, 400, "input", "invalid_type"),
    ({"input": [[]]}, 400, "input", "invalid_value"),
    ({"input": [[1, 10**6]]}, 400, "input", "invalid_value"),
    ({"input": [-1]}, 400, "input", "invalid_value"),
    ({"input": ["a"] * 2049}, 400, "input", "invalid_value"),
    ({"input": ["the " * 400], "truncate": False}, 400, "input", "context_length_exceeded"),
    ({"input": [[5] * 300], "truncate": False}, 400, "input", "context_length_exceeded"),
    ({}, 400, "input", "missing_required_parameter"),
    ({"input": "a", "encoding_format": "int8"}, 400, "encoding_format", "invalid_value"),
    ({"input": "a", "dimensions": 32}, 400, "dimensions", "unsupported_parameter"),
    ({"input": "a", "dimensions": "64"}, 400, "dimensions", "invalid_type"),
    ({"input": "a", "temperature": 1}, 400, "temperature", "unknown_parameter"),
    ({"input": "a", "model": "text-embedding-3-small"}, 404, "model", "model_not_found"),
    ({"input": "a", "model": 3}, 400, "model", "invalid_type"),
]


@pytest.mark.parametrize("body,status,param,code", BAD)
def test_bad_embedding_requests(classifier, body, status, param, code):
    got, raw, _ = post(classifier.port, "/v1/embeddings", body)
    assert got == status, raw
    err = error_of(raw)
    assert (err["param"], err["code"], err["type"]) == (param, code, "invalid_request_error"), err
    assert_alive(classifier)


@pytest.mark.parametrize(
    "body,code",
    [
        ({"input": [[2, 50, 3]]}, "invalid_type"),  # text only: results point into it
        ({"input": []}, "invalid_value"),
        ({"input": ""}, "invalid_value"),
        ({"input": "a", "encoding_format": "float"}, "unknown_parameter"),
    ],
)
def test_bad_classify_requests(classifier, body, code):
    status, raw, _ = post(classifier.port, "/v1/classify", body)
    assert status == 400 and error_of(raw)["code"] == code, raw
    assert_alive(classifier)


def test_malformed_and_unauthorized(classifier):
    status, raw, _ = post(classifier.port, "/v1/embeddings", b"{not json")
    assert status == 400 and error_of(raw)["code"] == "invalid_json"
    status, raw, _ = post(classifier.port, "/v1/embeddings", {"input": "a"}, key=None)
    assert status == 401 and error_of(raw)["code"] == "invalid_api_key"
    status, raw, headers = request(classifier.port, "GET", "/v1/embeddings", headers={"Authorization": f"Bearer {KEY}"})
    assert status == 405 and headers["Allow"] == "POST"
    assert_alive(classifier)


def test_metrics_count_tasks(classifier, classifier_llm):
    before = classifier.metrics()
    assert classifier.post("/v1/classify", {"input": ["Ben ran.", "Hi!"]})[0] == 200
    after = classifier.metrics()
    k = 'corelm_task_requests_total{task="classify"}'
    assert after[k] == before[k] + 1
    tokens = 'corelm_task_input_tokens_total{task="classify"}'
    assert after[tokens] - before[tokens] == usage_of(classifier_llm, ["Ben ran.", "Hi!"])
    assert after['corelm_http_requests_total{route="/v1/classify",code="200"}'] >= 1


# ---- a decoder embeds too, and goes on generating ----


def test_decoder_embeds_and_generates(decoder):
    llm = corelm.load(data_file("models", "stories260K", "stories260K.gguf"), ctx=256)
    client = decoder.client()
    texts = ["Once upon a time", "Lily and Ben went to the park."]
    r = client.embeddings.create(model="stories260K", input=texts)
    np.testing.assert_allclose(np.array([d.embedding for d in r.data]), llm.embed(texts), atol=1e-5)
    assert r.usage.prompt_tokens == usage_of(llm, texts)
    ids = llm.tokenize(texts[0])
    by_ids = client.embeddings.create(model="stories260K", input=ids, encoding_format="float")
    np.testing.assert_allclose(by_ids.data[0].embedding, r.data[0].embedding, atol=1e-5)
    status, raw, _ = post(decoder.port, "/v1/classify", {"input": "Hello"})
    err = error_of(raw)
    assert status == 400 and err["code"] == "unsupported_model"
    assert "it can generate, embed" in err["message"] and "/v1/chat/completions" in err["message"]
    c = client.completions.create(model="stories260K", prompt="Once upon a time", max_tokens=20, temperature=0)
    assert c.choices[0].text == llm.generate("Once upon a time", max_tokens=20, temperature=0)


def test_embeddings_interleave_with_generation(decoder):
    """A large embedding request while a stream generates: both come out as they do alone."""
    client = decoder.client()
    prompt = dict(model="stories260K", prompt="Once upon a time", max_tokens=120, temperature=0)
    alone = client.completions.create(**prompt).choices[0].text
    texts = [f"Lily had {i} red balls and a big dog." for i in range(1500)]
    want = np.array([d.embedding for d in client.embeddings.create(model="stories260K", input=texts).data])
    before = decoder.metrics()
    got: dict = {}

    def generate() -> None:
        got["text"] = "".join(c.choices[0].text for c in client.completions.create(stream=True, **prompt))

    t = threading.Thread(target=generate)
    t.start()
    r = client.embeddings.create(model="stories260K", input=texts)
    t.join(30)
    assert got["text"] == alone
    np.testing.assert_allclose(np.array([d.embedding for d in r.data]), want, atol=1e-5)
    after = decoder.metrics()
    assert after["corelm_task_units_total"] - before["corelm_task_units_total"] > 1
    assert after["corelm_generation_tokens_total"] - before["corelm_generation_tokens_total"] == 120


def test_disconnect_drops_the_embedding_task(decoder):
    """A client that goes away mid-request: the rest of its inputs are skipped."""
    texts = [f"Lily and Ben went to the park to play with a big red ball {i}. " * 6 for i in range(1500)]
    # ~250k tokens: seconds of work, under the 300k a request may have
    body = json.dumps({"input": texts}).encode()
    before = decoder.metrics()
    s = socket.create_connection(("127.0.0.1", decoder.port), timeout=10)
    s.sendall(
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    wait_for(lambda: decoder.health()["tasks_queued"] == 1)
    s.close()
    assert wait_for(lambda: decoder.health()["tasks_queued"] == 0) < 2.0
    after = decoder.metrics()
    k = 'corelm_task_requests_total{task="embed"}'
    assert after[k] == before[k]
    assert decoder.client().embeddings.create(model="stories260K", input="still here").data
