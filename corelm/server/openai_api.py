"""OpenAI's request and response shapes: validate a JSON body into a Job, and format results.

Requests are checked the way OpenAI checks them, with an error object naming the field:
wrong types, out-of-range values, unknown top-level fields (400, code "unknown_parameter"),
features corelm does not have (echo, best_of, audio, ...: 400 naming the field), a model other
than this server's (404 "model_not_found"), a prompt plus max_tokens past the context (400
"context_length_exceeded"). Fields that change nothing here (user, metadata, store, ...) are
accepted and ignored. A model that cannot do what a route asks (completions on an encoder,
/v1/classify without a classifier, ...) gets 400 "unsupported_model" naming what it can do
and the routes that do it.

Sampling follows OpenAI's meaning: temperature (default 1) and top_p (default 1) only; top_k,
min_p, repeat_penalty and ignore_eos are corelm extensions (off unless given). Logprobs are
those of the model's own distribution, before penalties, logit_bias, temperature and grammar.

Structured output (engine/constrain.py, llguidance): response_format {"type": "json_object"} or
{"type": "json_schema", "json_schema": {"name", "schema", "strict"}} on both routes, and as
llama.cpp's server takes them, "json_schema" (a schema) and "grammar" (a Lark grammar, in
llguidance's dialect) extensions. Chat takes tools and tool_choice (tools.py). n choices are n
sequences of the batch (a seed s gives choice i the seed s + i).
"""

from __future__ import annotations

import math
import queue
from dataclasses import dataclass, field, replace
from typing import Any

from corelm import __version__
from corelm.engine.chat import FALLBACK_STOPS, FALLBACK_TEMPLATE, render_chat
from corelm.engine.constrain import Grammar
from corelm.engine.sampling import SamplingParams
from corelm.engine.scheduler import GenerationStats, Request, TokenLogprob
from corelm.server.scheduler import Job
from corelm.server.tools import Tool, ToolSpec, history_messages, parse_reply
from corelm.tokenizer import Tokenizer

MAX_STOPS = 4  # as OpenAI
MAX_LOGPROBS_COMPLETIONS = 5  # as OpenAI's legacy completions
MAX_TOP_LOGPROBS_CHAT = 20
DEFAULT_MAX_TOKENS_COMPLETIONS = 16  # OpenAI's default; chat defaults to the rest of the context
MAX_N = 16  # choices per request

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
    "json_schema",
    "grammar",
    "response_format",
}
COMPLETION_FIELDS = _SAMPLING | {"prompt", "logprobs", "echo", "suffix", "best_of"}
CHAT_FIELDS = _SAMPLING | {
    "messages",
    "max_completion_tokens",
    "logprobs",
    "top_logprobs",
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


class ChoiceEvents(queue.SimpleQueue):
    """A Job's event queue that puts (choice index, event) on its request's one queue, so a
    handler waits on one queue for all of its n choices."""

    def __init__(self, shared: queue.SimpleQueue, index: int) -> None:
        self.shared, self.index = shared, index

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        self.shared.put((self.index, item))


@dataclass
class Choice:
    """One finished choice of a request that did not stream."""

    index: int
    text: str
    logprobs: list[TokenLogprob] | None
    finish: str


@dataclass
class ApiRequest:
    kind: str  # "chat" or "completion"
    jobs: list[Job]  # one per choice (n)
    stream: bool
    include_usage: bool
    prompt_text: str  # for the completions logprobs' text_offset
    tools: ToolSpec | None = None  # a chat whose reply is tool calls or a JSON answer (tools.py)
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)  # (choice index, event)

    @property
    def job(self) -> Job:
        return self.jobs[0]


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
        model_path: str = "",
    ) -> None:
        self.tok = tokenizer
        self.model_id = model_id
        self.ctx = ctx
        self.vocab_size = vocab_size
        self.capabilities = capabilities  # LLM.capabilities
        self.model_path = model_path  # as given to `corelm serve` (/props)

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
        for name in ("functions", "audio", "prediction", "web_search_options"):
            f.unsupported(name)
        f.unsupported("function_call", allowed=("none", "auto"))
        f.unsupported("modalities", allowed=(["text"],))
        if "messages" not in body:
            raise ApiError(
                400, "Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter"
            )
        tools = self._tools(f)
        prompt = self._chat_prompt(body["messages"], tools)
        logprobs = None
        if f.bool("logprobs", False):
            logprobs = f.int("top_logprobs", 0, lo=0, hi=MAX_TOP_LOGPROBS_CHAT)
        elif f.given("top_logprobs"):
            raise ApiError(400, "'top_logprobs' needs 'logprobs' set to true.", param="top_logprobs")
        return self._common(f, "chat", prompt, "", logprobs, None, tools)

    def _common(
        self,
        f: _Fields,
        kind: str,
        prompt: list[int],
        prompt_text: str,
        logprobs: int | None,
        default_max: int | None,
        tools: ToolSpec | None = None,
    ) -> ApiRequest:
        self.check_model(f.body.get("model"))
        n = f.int("n", 1, lo=1, hi=MAX_N)
        assert n is not None
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
        grammar = self._grammar(f, tools)
        if tools is not None and not tools.constrained:
            tools = None  # tool_choice "none": a plain reply
        request = Request(
            prompt=prompt,
            max_tokens=max_tokens,
            params=params,
            stops=self._stops(f.body.get("stop"))
            + (list(FALLBACK_STOPS) if kind == "chat" and self.tok.chat_template is None else []),  # as LLM.chat
            logprobs=logprobs,
            ignore_eos=f.bool("ignore_eos", False),
            logit_bias=self._logit_bias(f.body.get("logit_bias")),
            grammar=grammar,
        )
        req = ApiRequest(kind, [], stream, include_usage, prompt_text, tools)
        for i in range(n):
            seed = params.seed
            choice = (
                request if i == 0 or seed is None else replace(request, params=replace(params, seed=_seed(seed + i)))
            )
            req.jobs.append(Job(choice, events=ChoiceEvents(req.events, i)))
        return req

    # ---- structured output ----

    def _grammar(self, f: _Fields, tools: ToolSpec | None) -> Grammar | None:
        """The request's constraint: tools (tools.py), response_format, or the json_schema / grammar
        extensions; at most one of the last three."""
        given = [name for name in ("response_format", "json_schema", "grammar") if f.given(name)]
        if len(given) > 1:
            raise ApiError(400, f"Give one of {', '.join(given)}, not several.", param=given[1])
        schema = self._response_schema(f)
        try:
            if tools is not None and tools.constrained:
                return Grammar.json_schema(replace(tools, response_schema=schema).schema())
            if schema is not None:
                return Grammar.json_schema(schema)
            if f.given("grammar"):
                g = f.body["grammar"]
                if not isinstance(g, str):
                    raise _invalid_type("grammar", "a string (a Lark grammar)", g)
                return Grammar.lark(g)
        except ValueError as e:
            name = "tools" if tools is not None and tools.constrained else given[0]
            raise ApiError(400, f"Invalid '{name}': {e}", param=name, code="invalid_value") from None
        return None

    def _response_schema(self, f: _Fields) -> dict[str, Any] | None:
        """The JSON schema that response_format or json_schema asks for (json_object: any object)."""
        if f.given("json_schema"):
            schema = f.body["json_schema"]
            if not isinstance(schema, dict):
                raise _invalid_type("json_schema", "an object (a JSON schema)", schema)
            return schema
        rf = f.body.get("response_format")
        if rf is None:
            return None
        if not isinstance(rf, dict):
            raise _invalid_type("response_format", "an object", rf)
        kind = rf.get("type")
        if kind == "text":
            return None
        if kind == "json_object":
            return {"type": "object"}
        if kind == "json_schema":
            spec = rf.get("json_schema")
            if not isinstance(spec, dict):
                raise _invalid_type("response_format.json_schema", "an object", spec)
            name = spec.get("name")
            if name is not None and not isinstance(name, str):
                raise _invalid_type("response_format.json_schema.name", "a string", name)
            schema = spec.get("schema", {})
            if not isinstance(schema, dict):
                raise _invalid_type("response_format.json_schema.schema", "an object", schema)
            return schema
        raise _invalid_value(
            "response_format.type", f"expected one of 'text', 'json_object', 'json_schema', but got {kind!r}."
        )

    def _tools(self, f: _Fields) -> ToolSpec | None:
        raw, choice = f.body.get("tools"), f.body.get("tool_choice")
        if raw is None or raw == []:
            if choice not in (None, "none", "auto"):
                raise ApiError(400, "'tool_choice' is only allowed when 'tools' are given.", param="tool_choice")
            return None
        if not isinstance(raw, list):
            raise _invalid_type("tools", "an array", raw)
        tools: list[Tool] = []
        for i, t in enumerate(raw):
            where = f"tools[{i}]"
            if not isinstance(t, dict) or t.get("type", "function") != "function":
                raise _invalid_value(where, "expected an object with type 'function'.")
            fn = t.get("function")
            if not isinstance(fn, dict):
                raise _invalid_type(f"{where}.function", "an object", fn)
            name = fn.get("name")
            if not isinstance(name, str) or not name or len(name) > 64:
                raise _invalid_value(f"{where}.function.name", "expected a string of 1 to 64 characters.")
            params = fn.get("parameters", {"type": "object", "properties": {}})
            if not isinstance(params, dict):
                raise _invalid_type(f"{where}.function.parameters", "an object (a JSON schema)", params)
            description = fn.get("description") or ""
            if not isinstance(description, str):
                raise _invalid_type(f"{where}.function.description", "a string", description)
            if any(x.name == name for x in tools):
                raise _invalid_value(f"{where}.function.name", f"{name!r} is given twice.")
            tools.append(Tool(name, description, params))
        names = [t.name for t in tools]
        if choice is None:
            choice = "auto"
        elif isinstance(choice, dict):
            fn = choice.get("function")
            name = fn.get("name") if isinstance(fn, dict) else None
            if choice.get("type") != "function" or name not in names:
                raise _invalid_value(
                    "tool_choice",
                    f"expected {{'type': 'function', 'function': {{'name': ...}}}} naming one of {names}.",
                )
            choice = name
        elif choice not in ("none", "auto", "required"):
            raise _invalid_value("tool_choice", f"expected 'none', 'auto', 'required' or a function, got {choice!r}.")
        return ToolSpec(tuple(tools), choice, f.bool("parallel_tool_calls", True))

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

    def _chat_prompt(self, messages: Any, tools: ToolSpec | None = None) -> list[int]:
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
            message = {"role": "system" if role == "developer" else role, "content": self._content(m, where)}
            if role == "assistant" and m.get("tool_calls") is not None:
                message["tool_calls"] = self._past_calls(m["tool_calls"], f"{where}.tool_calls")
            if role == "tool":
                message["tool_call_id"] = m.get("tool_call_id")
            plain.append(message)
        tok = self.tok
        plain = history_messages(plain, tok.chat_template)
        if tools is not None:  # described in the (first) system message
            if plain[0]["role"] == "system":
                plain[0] = {"role": "system", "content": plain[0]["content"] + "\n\n" + tools.system_text()}
            else:
                plain.insert(0, {"role": "system", "content": tools.system_text()})
        bos = tok.token_text(tok.bos_id) if tok.bos_id is not None else ""
        eos = tok.token_text(tok.eos_id) if tok.eos_id is not None else ""
        try:  # as LLM.stream_chat: the template writes BOS itself when the model wants one
            text = render_chat(tok.chat_template, plain, bos_token=bos, eos_token=eos)
        except ValueError as e:
            raise ApiError(400, str(e), param="messages") from None
        return tok.encode(text, add_bos=False if tok.chat_template else None)

    @staticmethod
    def _past_calls(calls: Any, where: str) -> list[dict[str, Any]]:
        """An earlier assistant turn's tool_calls, checked."""
        if not isinstance(calls, list):
            raise _invalid_type(where, "an array", calls)
        for j, c in enumerate(calls):
            fn = c.get("function") if isinstance(c, dict) else None
            if (
                not isinstance(fn, dict)
                or not isinstance(fn.get("name"), str)
                or not isinstance(fn.get("arguments"), str)
            ):
                raise _invalid_value(
                    f"{where}[{j}]", "expected {'id', 'type': 'function', 'function': {'name', 'arguments'}}."
                )
        return calls

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

    # ---- llama.cpp's routes: /tokenize, /detokenize, /props ----

    def tokenize(self, body: Any) -> dict[str, Any]:
        """{"content": str, "add_special": false, "parse_special": true, "with_pieces": false}
        -> {"tokens": [ids]} (with_pieces: [{"id", "piece"}], a piece that is not whole UTF-8 as
        its byte values), as llama.cpp's server."""
        f = _Fields(body, {"content", "add_special", "parse_special", "with_pieces", "model"})
        content = body.get("content")
        if not isinstance(content, str):
            if content is None:
                raise ApiError(400, "Missing required parameter: 'content'.", param="content")
            raise _invalid_type("content", "a string", content)
        add = f.bool("add_special", False)
        ids = self.tok.encode(
            content, add_bos=add and self.tok.bos_id is not None, special=f.bool("parse_special", True)
        )
        if not f.bool("with_pieces", False):
            return {"tokens": ids}
        pieces: list[dict[str, Any]] = []
        for i in ids:
            raw = self.tok.token_bytes(i)
            try:
                piece: Any = raw.decode("utf-8")
            except UnicodeDecodeError:
                piece = list(raw)
            pieces.append({"id": i, "piece": piece})
        return {"tokens": pieces}

    def detokenize(self, body: Any) -> dict[str, Any]:
        """{"tokens": [ids]} -> {"content": str}."""
        _Fields(body, {"tokens", "model"})
        tokens = body.get("tokens")
        if not isinstance(tokens, list):
            if tokens is None:
                raise ApiError(400, "Missing required parameter: 'tokens'.", param="tokens")
            raise _invalid_type("tokens", "an array of token ids", tokens)
        return {"content": self.tok.decode(self.check_ids(tokens, "tokens"))}

    def props(self, total_slots: int) -> dict[str, Any]:
        """What llama.cpp's GET /props tells: the defaults a request gets, slots, model, template."""
        tok = self.tok
        defaults = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)  # OpenAI's meaning (_common)
        return {
            "default_generation_settings": {
                "n_ctx": self.ctx,
                "params": {
                    "temperature": defaults.temperature,
                    "top_k": defaults.top_k,
                    "top_p": defaults.top_p,
                    "min_p": defaults.min_p,
                    "repeat_penalty": defaults.repeat_penalty,
                    "repeat_last_n": defaults.repeat_last_n,
                    "presence_penalty": defaults.presence_penalty,
                    "frequency_penalty": defaults.frequency_penalty,
                    "seed": -1,
                    "n_predict": -1,
                    "max_tokens_completions": DEFAULT_MAX_TOKENS_COMPLETIONS,
                    "ignore_eos": False,
                    "stop": [],
                },
            },
            "total_slots": total_slots,
            "model_alias": self.model_id,
            "model_path": self.model_path,
            "n_vocab": self.vocab_size,
            "capabilities": sorted(self.capabilities),
            "chat_template": tok.chat_template or FALLBACK_TEMPLATE,
            "bos_token": tok.token_text(tok.bos_id) if tok.bos_id is not None else "",
            "eos_token": tok.token_text(tok.eos_id) if tok.eos_id is not None else "",
            "modalities": {"vision": False, "audio": False},
            "build_info": f"corelm {__version__}",
        }

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

    def response(self, req: ApiRequest, rid: str, created: int, choices: list[Choice], usage: dict) -> dict[str, Any]:
        """The JSON response of a request that did not stream."""
        out = []
        for c in choices:
            logprobs = self.logprobs_body(req, c.logprobs) if c.logprobs is not None else None
            if req.kind == "chat":
                message: dict[str, Any] = {"role": "assistant", "content": c.text, "refusal": None}
                finish = c.finish
                if req.tools is not None:
                    reply = parse_reply(c.text, req.tools)
                    message["content"] = reply.content
                    if reply.tool_calls:
                        message["tool_calls"] = reply.tool_calls
                        finish = "tool_calls" if finish == "stop" else finish
                out.append({"index": c.index, "message": message, "logprobs": logprobs, "finish_reason": finish})
            else:
                out.append({"text": c.text, "index": c.index, "logprobs": logprobs, "finish_reason": c.finish})
        return {
            "id": rid,
            "object": "chat.completion" if req.kind == "chat" else "text_completion",
            "created": created,
            "model": self.model_id,
            "choices": out,
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
        index: int = 0,
        delta: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One server-sent event's object; text None makes the closing chunk (an empty delta);
        `delta` replaces the chat delta (tool calls)."""
        logprobs = self.logprobs_body(req, lps) if lps else None
        if req.kind == "chat":
            if delta is None:
                delta = {} if text is None else {"content": text}
            if first:
                delta = {"role": "assistant", **delta}
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            obj = "chat.completion.chunk"
        else:
            choice = {"text": text or "", "index": index, "logprobs": logprobs, "finish_reason": finish}
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


def usage(*stats: GenerationStats) -> dict[str, Any]:
    """OpenAI's usage object over a request's choices (the prompt counted once); cached_tokens:
    prompt tokens the prefix cache saved prefilling the first."""
    generated = sum(s.generated_tokens for s in stats)
    return {
        "prompt_tokens": stats[0].prompt_tokens,
        "completion_tokens": generated,
        "total_tokens": stats[0].prompt_tokens + generated,
        "prompt_tokens_details": {"cached_tokens": stats[0].cached_tokens},
    }
