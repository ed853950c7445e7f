"""OpenAI's request and response shapes: validate a JSON body into a Job, and format results.

Requests are checked the way OpenAI checks them, with an error object naming the field:
wrong types, out-of-range values, unknown top-level fields (400, code "unknown_parameter"),
features corelm does not have (n > 1, tools, echo, ...: 400 naming the field), a model other
than this server's (404 "model_not_found"), a prompt plus max_tokens past the context (400
"context_length_exceeded"). Fields that change nothing here (user, metadata, store, ...) are
accepted and ignored. A model that cannot do what a route asks (completions on an encoder,
/v1/classify without a classifier, ...) gets 400 "unsupported_model" naming what it can do
and the routes that do it.

Sampling follows OpenAI's meaning: temperature (default 1) and top_p (default 1) only; top_k,
min_p, repeat_penalty and ignore_eos are corelm extensions (off unless given). Logprobs are
those of the model's own distribution, before penalties, logit_bias and temperature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from corelm.engine.chat import FALLBACK_STOPS, render_chat
from corelm.engine.sampling import SamplingParams
from corelm.engine.scheduler import GenerationStats, Request, TokenLogprob
from corelm.server.scheduler import Job
from corelm.tokenizer import Tokenizer

MAX_STOPS = 4  # as OpenAI
MAX_LOGPROBS_COMPLETIONS = 5  # as OpenAI's legacy completions
MAX_TOP_LOGPROBS_CHAT = 20
DEFAULT_MAX_TOKENS_COMPLETIONS = 16  # OpenAI's default; chat defaults to the rest of the context

_SAMPLING = {
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "stop",
    "logit_bias",
    "max_tokens",
    "n",
    "stream",
    "stream_options",
    "user",
    "model",
    # corelm extensions
    "top_k",
    "min_p",
    "repeat_penalty",
    "ignore_eos",
}
COMPLETION_FIELDS = _SAMPLING | {"prompt", "logprobs", "echo", "suffix", "best_of"}
CHAT_FIELDS = _SAMPLING | {
    "messages",
    "max_completion_tokens",
    "logprobs",
    "top_logprobs",
    "response_format",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "parallel_tool_calls",
    "metadata",
    "store",
    "service_tier",
    "modalities",
    "audio",
    "prediction",
    "reasoning_effort",
    "web_search_options",
    "prompt_cache_key",
    "safety_identifier",
    "verbosity",
}
_ROLES = ("system", "developer", "user", "assistant", "tool")

# What each of LLM.capabilities is served by, and how an error says it
CAPABILITY_ROUTES = {
    "generate": ("/v1/completions", "/v1/chat/completions"),
    "embed": ("/v1/embeddings",),
    "classify": ("/v1/classify",),
    "tag": ("/v1/tag",),
}
_CANNOT = {
    "generate": "generate text",
    "embed": "embed texts",
    "classify": "classify texts (it has no sequence classification head)",
    "tag": "tag tokens (it has no token classification head)",
}


class ApiError(Exception):
    """An HTTP error with OpenAI's error object as its body."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class ApiRequest:
    kind: str  # "chat" or "completion"
    job: Job
    stream: bool
    include_usage: bool
    prompt_text: str  # for the completions logprobs' text_offset


def _type_name(v: Any) -> str:
    return {
        type(None): "null",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
    }.get(type(v), type(v).__name__)


def _invalid_type(name: str, expected: str, value: Any) -> ApiError:
    return ApiError(
        400,
        f"Invalid type for '{name}': expected {expected}, but got {_type_name(value)} instead.",
        param=name,
        code="invalid_type",
    )


def _invalid_value(name: str, message: str) -> ApiError:
    return ApiError(400, f"Invalid '{name}': {message}", param=name, code="invalid_value")


class _Fields:
    """Typed access to a request body; null counts as absent, as in OpenAI's API."""

    def __init__(self, body: Any, known: set[str]) -> None:
        if not isinstance(body, dict):
            raise ApiError(400, f"The request body must be a JSON object, got {_type_name(body)}.", code="invalid_type")
        for name in body:
            if name not in known:
                raise ApiError(
                    400, f"Unrecognized request argument supplied: {name}", param=name, code="unknown_parameter"
                )
        self.body = body

    def given(self, name: str) -> bool:
        return self.body.get(name) is not None

    def int(self, name: str, default: int | None, lo: int | None = None, hi: int | None = None) -> int | None:
        v = self.body.get(name)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int):
            raise _invalid_type(name, "an integer", v)
        if lo is not None and v < lo:
            raise _invalid_value(name, f"integer below minimum value. Expected a value >= {lo}, but got {v} instead.")
        if hi is not None and v > hi:
            raise _invalid_value(name, f"integer above maximum value. Expected a value <= {hi}, but got {v} instead.")
        return v

    def number(self, name: str, default: float, lo: float, hi: float) -> float:
        v = self.body.get(name)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise _invalid_type(name, "a number", v)
        if not math.isfinite(v) or not lo <= v <= hi:
            raise _invalid_value(name, f"expected a number between {lo} and {hi}, but got {v} instead.")
        return float(v)

    def bool(self, name: str, default: bool) -> bool:
        v = self.body.get(name)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise _invalid_type(name, "a boolean", v)
        return v

    def unsupported(self, name: str, allowed: Any = ()) -> None:
        """A field corelm does not implement: fine when absent or set to an allowed value."""
        v = self.body.get(name)
        if v is not None and v not in allowed and v != [] and v != {}:
            raise ApiError(400, f"'{name}' is not supported by this server.", param=name, code="unsupported_parameter")


class OpenAIApi:
    """Turns request bodies into Jobs for one model, and results into response bodies."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        model_id: str,
        ctx: int,
        vocab_size: int,
        capabilities: frozenset[str] = frozenset({"generate", "embed"}),
    ) -> None:
        self.tok = tokenizer
        self.model_id = model_id
        self.ctx = ctx
        self.vocab_size = vocab_size
        self.capabilities = capabilities  # LLM.capabilities

    # ---- requests ----

    def routes(self) -> list[str]:
        """The POST routes this model answers."""
        return [r for cap in CAPABILITY_ROUTES if cap in self.capabilities for r in CAPABILITY_ROUTES[cap]]

    def require(self, capability: str) -> None:
        """400 unless the model can do `capability` (one of LLM.capabilities)."""
        if capability not in self.capabilities:
            can = ", ".join(c for c in CAPABILITY_ROUTES if c in self.capabilities)
            raise ApiError(
                400,
                f"The model `{self.model_id}` cannot {_CANNOT[capability]}: it can {can}. "
                f"This server answers POST {', '.join(self.routes())}.",
                param="model",
                code="unsupported_model",
            )

    def check_model(self, model: Any) -> None:
        """A request's "model": absent, or this server's model id."""
        if model is not None and not isinstance(model, str):
            raise _invalid_type("model", "a string", model)
        if model is not None and model != self.model_id:
            raise ApiError(
                404,
                f"The model `{model}` does not exist (this server serves `{self.model_id}`).",
                param="model",
                code="model_not_found",
            )

    def parse_completion(self, body: Any) -> ApiRequest:
        self.require("generate")
        f = _Fields(body, COMPLETION_FIELDS)
        if f.bool("echo", False):
            raise ApiError(400, "'echo' is not supported by this server.", param="echo", code="unsupported_parameter")
        f.unsupported("suffix", allowed=("",))
        if f.int("best_of", 1, lo=1) != 1:
            raise ApiError(400, "best_of > 1 is not supported: one choice per request.", param="best_of")
        if "prompt" not in body:
            raise ApiError(
                400, "Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter"
            )
        prompt, prompt_text = self._completion_prompt(body["prompt"])
        logprobs = f.int("logprobs", None, lo=0, hi=MAX_LOGPROBS_COMPLETIONS)
        return self._common(f, "completion", prompt, prompt_text, logprobs, DEFAULT_MAX_TOKENS_COMPLETIONS)

    def parse_chat(self, body: Any) -> ApiRequest:
        self.require("generate")
        f = _Fields(body, CHAT_FIELDS)
        for name in ("tools", "functions", "audio", "prediction", "web_search_options"):
            f.unsupported(name)
        f.unsupported("tool_choice", allowed=("none", "auto"))
        f.unsupported("function_call", allowed=("none", "auto"))
        f.unsupported("modalities", allowed=(["text"],))
        rf = body.get("response_format")
        if rf is not None and rf != {"type": "text"}:
            raise ApiError(
                400,
                "Only response_format {'type': 'text'} is supported.",
                param="response_format",
                code="unsupported_parameter",
            )
        if "messages" not in body:
            raise ApiError(
                400, "Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter"
            )
        prompt = self._chat_prompt(body["messages"])
        logprobs = None
        if f.bool("logprobs", False):
            logprobs = f.int("top_logprobs", 0, lo=0, hi=MAX_TOP_LOGPROBS_CHAT)
        elif f.given("top_logprobs"):
            raise ApiError(400, "'top_logprobs' needs 'logprobs' set to true.", param="top_logprobs")
        return self._common(f, "chat", prompt, "", logprobs, None)

    def _common(
        self, f: _Fields, kind: str, prompt: list[int], prompt_text: str, logprobs: int | None, default_max: int | None
    ) -> ApiRequest:
        self.check_model(f.body.get("model"))
        n = f.int("n", 1)
        if n != 1:
            raise _invalid_value("n", f"only n=1 is supported (one choice per request), got {n}.")
        name = "max_completion_tokens" if f.given("max_completion_tokens") else "max_tokens"
        max_tokens = f.int(name, None, lo=1)
        if len(prompt) >= self.ctx:
            raise ApiError(
                400,
                f"This model's maximum context length is {self.ctx} tokens. However, your prompt has "
                f"{len(prompt)} tokens. Please reduce the length of the prompt.",
                param="messages" if kind == "chat" else "prompt",
                code="context_length_exceeded",
            )
        room = self.ctx - len(prompt)
        if max_tokens is None:
            max_tokens = room if default_max is None else min(default_max, room)
        elif max_tokens > room:
            raise ApiError(
                400,
                f"This model's maximum context length is {self.ctx} tokens. However, you requested "
                f"{len(prompt) + max_tokens} tokens ({len(prompt)} in the prompt, {max_tokens} in the completion). "
                "Please reduce the prompt or the completion length.",
                param=name,
                code="context_length_exceeded",
            )
        temperature = f.number("temperature", 1.0, 0.0, 2.0)
        top_p = f.number("top_p", 1.0, 0.0, 1.0)
        if top_p == 0.0:  # only the most likely token is left
            temperature, top_p = 0.0, 1.0
        params = SamplingParams(
            temperature=temperature,
            top_k=f.int("top_k", 0, lo=0) or 0,
            top_p=top_p,
            min_p=f.number("min_p", 0.0, 0.0, 1.0),
            repeat_penalty=f.number("repeat_penalty", 1.0, 1e-3, 10.0),
            presence_penalty=f.number("presence_penalty", 0.0, -2.0, 2.0),
            frequency_penalty=f.number("frequency_penalty", 0.0, -2.0, 2.0),
            seed=_seed(f.int("seed", None)),
        )
        stream = f.bool("stream", False)
        include_usage = False
        so = f.body.get("stream_options")
        if so is not None:
            if not stream:
                raise ApiError(
                    400,
                    "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                    param="stream_options",
                )
            if not isinstance(so, dict) or set(so) - {"include_usage", "include_obfuscation"}:
                raise _invalid_value("stream_options", "expected an object with 'include_usage'.")
            include_usage = _Fields(so, {"include_usage", "include_obfuscation"}).bool("include_usage", False)
        request = Request(
            prompt=prompt,
            max_tokens=max_tokens,
            params=params,
            stops=self._stops(f.body.get("stop"))
            + (list(FALLBACK_STOPS) if kind == "chat" and self.tok.chat_template is None else []),  # as LLM.chat
            logprobs=logprobs,
            ignore_eos=f.bool("ignore_eos", False),
            logit_bias=self._logit_bias(f.body.get("logit_bias")),
        )
        return ApiRequest(kind, Job(request), stream, include_usage, prompt_text)

    def _stops(self, stop: Any) -> list[str]:
        if stop is None:
            return []
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _invalid_type("stop", "a string or an array of strings", stop)
        if len(stops) > MAX_STOPS:
            raise _invalid_value("stop", f"at most {MAX_STOPS} stop sequences, got {len(stops)}.")
        return [s for s in stops if s]

    def _logit_bias(self, bias: Any) -> dict[int, float]:
        if bias is None:
            return {}
        if not isinstance(bias, dict):
            raise _invalid_type("logit_bias", "an object", bias)
        out = {}
        for key, value in bias.items():
            if not key.isdigit() or int(key) >= self.vocab_size:
                raise _invalid_value(
                    "logit_bias", f"{key!r} is not a token id of this model (0..{self.vocab_size - 1})."
                )
            if isinstance(value, bool) or not isinstance(value, int | float) or not -100 <= value <= 100:
                raise _invalid_value("logit_bias", f"the bias of token {key} must be a number in [-100, 100].")
            out[int(key)] = float(value)
        return out

    def check_ids(self, ids: list[Any], name: str) -> list[int]:
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, int):
                raise _invalid_type(name, "an array of token ids (integers)", i)
            if not 0 <= i < self.vocab_size:
                raise _invalid_value(name, f"token id {i} is out of range [0, {self.vocab_size}).")
        return list(ids)

    def _completion_prompt(self, prompt: Any) -> tuple[list[int], str]:
        """A string, an array of token ids, or either of those wrapped in a one-element array."""
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
            prompt = prompt[0]
        elif isinstance(prompt, list) and prompt and all(isinstance(p, str | list) for p in prompt):
            raise _invalid_value("prompt", "only one prompt per request is supported (got an array of prompts).")
        if isinstance(prompt, str):
            ids = self.tok.encode(prompt)
            text = prompt
        elif isinstance(prompt, list):
            ids, text = self.check_ids(prompt, "prompt"), ""
        else:
            raise _invalid_type("prompt", "a string or an array of token ids", prompt)
        if not ids:
            raise _invalid_value("prompt", "the prompt is empty.")
        return ids, text

    def _chat_prompt(self, messages: Any) -> list[int]:
        if not isinstance(messages, list):
            raise _invalid_type("messages", "an array", messages)
        if not messages:
            raise _invalid_value("messages", "expected an array with minimum length 1, but got an empty array instead.")
        plain = []
        for i, m in enumerate(messages):
            where = f"messages[{i}]"
            if not isinstance(m, dict):
                raise _invalid_type(where, "an object", m)
            role = m.get("role")
            if role not in _ROLES:
                raise _invalid_value(f"{where}.role", f"expected one of {', '.join(_ROLES)}, but got {role!r}.")
            plain.append({"role": "system" if role == "developer" else role, "content": self._content(m, where)})
        tok = self.tok
        bos = tok.token_text(tok.bos_id) if tok.bos_id is not None else ""
        eos = tok.token_text(tok.eos_id) if tok.eos_id is not None else ""
        try:  # as LLM.stream_chat: the template writes BOS itself when the model wants one
            text = render_chat(tok.chat_template, plain, bos_token=bos, eos_token=eos)
        except ValueError as e:
            raise ApiError(400, str(e), param="messages") from None
        return tok.encode(text, add_bos=False if tok.chat_template else None)

    @staticmethod
    def _content(m: dict[str, Any], where: str) -> str:
        content = m.get("content")
        if content is None:
            if m.get("role") == "assistant":
                return ""
            raise ApiError(400, f"Missing required parameter: '{where}.content'.", param=f"{where}.content")
        if isinstance(content, str):
            return content
        if not isinstance(content, list):
            raise _invalid_type(f"{where}.content", "a string or an array of content parts", content)
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _invalid_value(
                    f"{where}.content[{j}]", "only text parts ({'type': 'text', 'text': ...}) are supported."
                )
            texts.append(part["text"])
        return "".join(texts)

    # ---- responses ----

    def models(self, created: int) -> dict[str, Any]:
        return {"object": "list", "data": [self.model_card(created)]}

    def model_card(self, created: int) -> dict[str, Any]:
        return {"id": self.model_id, "object": "model", "created": created, "owned_by": "corelm"}

    def token_str(self, token: int) -> str:
        return self.tok.token_bytes(token).decode("utf-8", errors="replace")

    def logprobs_body(self, req: ApiRequest, lps: list[TokenLogprob]) -> dict[str, Any]:
        if req.kind == "chat":
            return {
                "content": [
                    {
                        "token": self.token_str(lp.token),
                        "logprob": lp.logprob,
                        "bytes": list(self.tok.token_bytes(lp.token)),
                        "top_logprobs": [
                            {"token": self.token_str(t), "logprob": v, "bytes": list(self.tok.token_bytes(t))}
                            for t, v in lp.top
                        ],
                    }
                    for lp in lps
                ],
                "refusal": None,
            }
        return {
            "tokens": [self.token_str(lp.token) for lp in lps],
            "token_logprobs": [lp.logprob for lp in lps],
            "top_logprobs": [{self.token_str(t): v for t, v in lp.top} for lp in lps],
            "text_offset": [len(req.prompt_text) + lp.offset for lp in lps],
        }

    def response(
        self,
        req: ApiRequest,
        rid: str,
        created: int,
        text: str,
        lps: list[TokenLogprob] | None,
        finish: str,
        usage: dict,
    ) -> dict[str, Any]:
        logprobs = self.logprobs_body(req, lps) if lps is not None else None
        if req.kind == "chat":
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": logprobs,
                "finish_reason": finish,
            }
            obj = "chat.completion"
        else:
            choice = {"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish}
            obj = "text_completion"
        return {
            "id": rid,
            "object": obj,
            "created": created,
            "model": self.model_id,
            "choices": [choice],
            "usage": usage,
        }

    def chunk(
        self,
        req: ApiRequest,
        rid: str,
        created: int,
        text: str | None,
        lps: list[TokenLogprob] | None = None,
        finish: str | None = None,
        first: bool = False,
    ) -> dict[str, Any]:
        """One server-sent event's object; text None makes the closing chunk (an empty delta)."""
        logprobs = self.logprobs_body(req, lps) if lps else None
        if req.kind == "chat":
            delta: dict[str, Any] = {} if text is None else {"content": text}
            if first:
                delta = {"role": "assistant", **delta}
            choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            obj = "chat.completion.chunk"
        else:
            choice = {"text": text or "", "index": 0, "logprobs": logprobs, "finish_reason": finish}
            obj = "text_completion"
        out = {"id": rid, "object": obj, "created": created, "model": self.model_id, "choices": [choice]}
        if req.include_usage:
            out["usage"] = None
        return out

    def usage_chunk(self, req: ApiRequest, rid: str, created: int, usage: dict) -> dict[str, Any]:
        obj = "chat.completion.chunk" if req.kind == "chat" else "text_completion"
        return {"id": rid, "object": obj, "created": created, "model": self.model_id, "choices": [], "usage": usage}


def _seed(seed: int | None) -> int | None:
    return None if seed is None else seed % 2**64  # numpy's generators take non-negative seeds


def usage(stats: GenerationStats) -> dict[str, Any]:
    """OpenAI's usage object; cached_tokens: prompt tokens the prefix cache saved prefilling."""
    return {
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.generated_tokens,
        "total_tokens": stats.prompt_tokens + stats.generated_tokens,
        "prompt_tokens_details": {"cached_tokens": stats.cached_tokens},
    }
