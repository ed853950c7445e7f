"""POST /v1/embeddings (OpenAI's Embeddings API), /v1/classify and /v1/tag (corelm's own):
request validation, the work the scheduler thread runs (a Task), and the response bodies.

/v1/embeddings takes `input` as OpenAI does: a string, an array of strings, an array of token
ids or an array of arrays of token ids; at most MAX_INPUTS inputs and MAX_TOTAL_TOKENS tokens
in all; empty strings and arrays are refused. Texts are tokenized as LLM.embed tokenizes them
(an encoder's [CLS] ... [SEP] framing, BOS first for a decoder) and the vectors are
LLM.embed's (pooling and unit length as the model's config says). Token ids are embedded
exactly as given, for encoders too: no framing or BOS is added, so send [CLS] ... [SEP]
yourself if the model expects it. `encoding_format` is "float" or "base64" (little-endian
float32 bytes, which OpenAI's client decodes); `dimensions` is accepted only when it equals
the model's width (no Matryoshka truncation); `user` is ignored. A decoder answers with its
pooled hidden states (the last token's), as LLM.embed does.

/v1/classify ({"input": text or [texts]} -> label, score and every label's probability) and
/v1/tag (-> entities with character spans, as LLM.tag) take text only: their results point
into it. A model without the head gets 400 "unsupported_model" naming what it can do.

Inputs longer than the model's maximum (LLM.max_tokens) are cut as LLM.embed cuts them;
`"truncate": false` (a corelm extension, all three routes) makes them a 400 instead.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np

from corelm.llm import LLM
from corelm.models.base import Segment
from corelm.server.openai_api import ApiError, OpenAIApi, _Fields, _invalid_type, _invalid_value
from corelm.server.scheduler import Task

MAX_INPUTS = 2048  # as OpenAI
MAX_TOTAL_TOKENS = 300_000  # as OpenAI: tokens of all inputs of one request
EMBEDDING_FIELDS = {"input", "model", "encoding_format", "dimensions", "user", "truncate"}
TEXT_TASK_FIELDS = {"input", "model", "user", "truncate"}
ROUTE_KINDS = {"/v1/embeddings": "embed", "/v1/classify": "classify", "/v1/tag": "tag"}


@dataclass
class TaskRequest:
    kind: str  # "embed", "classify" or "tag"
    inputs: list[str] | list[list[int]]
    token_ids: bool  # inputs are arrays of token ids (embed only)
    lengths: list[int]  # tokens of each input, as the model sees it
    truncate: bool = True
    encoding_format: str = "float"

    @property
    def tokens(self) -> int:
        return sum(self.lengths)


class TaskApi:
    """Validates requests to the three routes against one LLM and formats their results."""

    def __init__(self, llm: LLM, api: OpenAIApi) -> None:
        self.llm = llm
        self.api = api

    def parse(self, kind: str, body: Any) -> TaskRequest:
        self.api.require(kind)
        f = _Fields(body, EMBEDDING_FIELDS if kind == "embed" else TEXT_TASK_FIELDS)
        self.api.check_model(body.get("model"))
        encoding_format = "float"
        if kind == "embed":
            encoding_format = body.get("encoding_format") or "float"
            if encoding_format not in ("float", "base64"):
                raise _invalid_value(
                    "encoding_format", f"expected 'float' or 'base64', but got {encoding_format!r} instead."
                )
            dimensions = f.int("dimensions", None, lo=1)
            if dimensions is not None and dimensions != self.llm.config.n_embd:
                raise ApiError(
                    400,
                    f"'dimensions' is not supported: this model's embeddings have {self.llm.config.n_embd} "
                    f"dimensions (got {dimensions}).",
                    param="dimensions",
                    code="unsupported_parameter",
                )
        truncate = f.bool("truncate", True)
        if "input" not in body:
            raise ApiError(
                400, "Missing required parameter: 'input'.", param="input", code="missing_required_parameter"
            )
        inputs, token_ids = self._inputs(body["input"], allow_ids=kind == "embed")
        if token_ids:
            lengths = [len(ids) for ids in inputs]
            limit = self.llm.max_tokens
            if not truncate and max(lengths) > limit:
                i = int(np.argmax(lengths))
                raise _too_long(f"input {i} has {lengths[i]} tokens; this model takes at most {limit}.")
            inputs = [ids[:limit] for ids in inputs]
            lengths = [min(n, limit) for n in lengths]
        else:
            try:
                lengths = [len(e.ids) for e in self.llm.encode(inputs, truncate)]
            except ValueError as e:  # too long (truncate false), or a tokenizer that does not fit the model
                code = "context_length_exceeded" if "more than" in str(e) else "invalid_value"
                raise ApiError(400, f"Invalid 'input': {e}.", param="input", code=code) from None
        if sum(lengths) > MAX_TOTAL_TOKENS:
            raise _too_long(
                f"the inputs have {sum(lengths)} tokens in all; at most {MAX_TOTAL_TOKENS} per request. "
                "Send them in several requests."
            )
        return TaskRequest(kind, inputs, token_ids, lengths, truncate, encoding_format)

    def _inputs(self, value: Any, allow_ids: bool) -> tuple[list, bool]:
        """(texts or token-id arrays, whether they are token ids)."""
        expected = "a string, an array of strings" + (" or an array of token ids" if allow_ids else "")
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise _invalid_type("input", expected, value)
        if not value:
            raise _invalid_value("input", "expected a non-empty array, but got an empty array instead.")
        if allow_ids and all(_is_int(v) for v in value):
            value = [value]  # one array of token ids
        if len(value) > MAX_INPUTS:
            raise _invalid_value("input", f"at most {MAX_INPUTS} inputs per request, got {len(value)}.")
        if all(isinstance(v, str) for v in value):
            for i, text in enumerate(value):
                if not text:
                    raise _invalid_value("input", f"input {i} is an empty string.")
            return value, False
        if allow_ids and all(isinstance(v, list) for v in value):
            for i, ids in enumerate(value):
                if not ids:
                    raise _invalid_value("input", f"input {i} is an empty array of token ids.")
                self.api.check_ids(ids, "input")
            return value, True
        bad = next(v for v in value if not isinstance(v, str))  # not all strings, nor all arrays
        raise _invalid_type("input", expected + (" (all of one kind)" if allow_ids else ""), bad)

    # ---- the work, on the scheduler thread ----

    def task(self, req: TaskRequest) -> Task:
        llm = self.llm

        def run(start: int, stop: int) -> Any:
            part = req.inputs[start:stop]
            if req.token_ids:
                return embed_ids(llm, part)  # type: ignore[arg-type]  # token_ids: lists of ids
            texts: list[str] = part  # type: ignore[assignment]  # not token_ids: strings
            if req.kind == "embed":
                return llm.embed(texts, truncate=req.truncate)
            if req.kind == "classify":
                return llm.class_probabilities(texts, truncate=req.truncate)
            return llm.tag(texts, truncate=req.truncate)

        return Task(req.kind, req.lengths, run)

    # ---- responses ----

    def response(self, req: TaskRequest, results: list[Any]) -> dict[str, Any]:
        usage = {"prompt_tokens": req.tokens, "total_tokens": req.tokens}
        out: dict[str, Any] = {"object": "list", "data": [], "model": self.api.model_id, "usage": usage}
        if req.kind == "embed":
            vectors = np.concatenate(results)
            out["data"] = [
                {"object": "embedding", "index": i, "embedding": _encode(v, req.encoding_format)}
                for i, v in enumerate(vectors)
            ]
        elif req.kind == "classify":
            labels = self.llm.labels
            out["data"] = [
                {
                    "index": i,
                    "label": labels[int(p.argmax())],
                    "score": float(p.max()),
                    "scores": {label: float(v) for label, v in zip(labels, p, strict=True)},
                }
                for i, p in enumerate(np.concatenate(results))
            ]
        else:
            per_text = [found for part in results for found in part]
            out["data"] = [
                {
                    "index": i,
                    "entities": [
                        {"label": e.label, "text": e.text, "start": e.start, "end": e.end, "score": e.score}
                        for e in found
                    ],
                }
                for i, found in enumerate(per_text)
            ]
        return out


def embed_ids(llm: LLM, inputs: list[list[int]]) -> np.ndarray:
    """LLM.embed for token ids taken as they are (no framing, no BOS): [len(inputs), n_embd]."""
    model, c = llm.model, llm.config
    tokens = np.concatenate([np.asarray(ids, np.int32) for ids in inputs])
    segments = [Segment(model.new_cache(len(ids)) if c.causal else None, 0, len(ids)) for ids in inputs]
    h, step = model.hidden_states(tokens, segments)
    out = np.asarray(model.pool(h, step, c.default_pooling), np.float32)
    if c.normalize:
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


def _encode(v: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(np.ascontiguousarray(v, "<f4").tobytes()).decode("ascii")
    return v.tolist()


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _too_long(message: str) -> ApiError:
    return ApiError(400, f"Invalid 'input': {message}", param="input", code="context_length_exceeded")
