"""Tool (function) calls and structured replies for /v1/chat/completions.

Any model can call tools this way, whatever its chat template knows: the tools are described in
a system message, and the reply is constrained (engine/constrain.py) to one compact JSON object,
llama.cpp's "generic" tool-call format:

    {"tool_calls":[{"name":"get_weather","arguments":{"city":"Paris"}}]}    a call (or several)
    {"response":"It is sunny."}                                             a plain answer

tool_choice "auto" allows both, "required" only calls, a named function only a call to it,
"none" neither (the reply is plain text; the tools are still described). With
parallel_tool_calls false a reply holds one call at most. The JSON keys come in schema order
(name, then arguments), so ToolStream can turn the text into OpenAI's deltas as it grows: a call's
id and name once its name is complete, then its arguments' JSON text chunk by chunk, or the
response's text as plain content.

Earlier turns come back in OpenAI's shapes (assistant messages with tool_calls, "tool" messages
with tool_call_id) and are rendered in the same format: an assistant call as its JSON, a tool's
result as a "tool" turn when the template knows that role, else as a user turn holding
{"tool_response": {...}}.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class ToolSpec:
    """A request's tools and tool_choice ("none", "auto", "required" or a function's name)."""

    tools: tuple[Tool, ...]
    choice: str
    parallel: bool = True
    response_schema: dict[str, Any] | None = None  # response_format's schema for a plain answer

    @property
    def constrained(self) -> bool:
        return self.choice != "none"

    def schema(self) -> dict[str, Any]:
        """The JSON schema the reply is constrained to."""
        tools = [t for t in self.tools if self.choice in ("auto", "required", t.name)]
        call = {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {"name": {"const": t.name}, "arguments": t.parameters},
                    "required": ["name", "arguments"],
                    "additionalProperties": False,
                }
                for t in tools
            ]
        }
        calls: dict[str, Any] = {"type": "array", "items": call, "minItems": 1}
        if not self.parallel or self.choice not in ("auto", "required"):
            calls["maxItems"] = 1
        with_calls = {
            "type": "object",
            "properties": {"tool_calls": calls},
            "required": ["tool_calls"],
            "additionalProperties": False,
        }
        if self.choice != "auto":
            return with_calls
        answer = {
            "type": "object",
            "properties": {"response": self.response_schema or {"type": "string"}},
            "required": ["response"],
            "additionalProperties": False,
        }
        return {"anyOf": [with_calls, answer]}

    def system_text(self) -> str:
        described = json.dumps(
            [{"name": t.name, "description": t.description, "parameters": t.parameters} for t in self.tools],
            ensure_ascii=False,
        )
        text = f"You can call these tools (functions):\n{described}\n"
        if self.choice == "none":
            return text + "Do not call any of them now: answer directly."
        call = '{"tool_calls":[{"name":TOOL_NAME,"arguments":{...}}]}'
        if self.choice == "auto":
            return text + f'Reply with one JSON object: {call} to call tools, or {{"response":YOUR_ANSWER}}.'
        if self.choice == "required":
            return text + f"Reply with one JSON object that calls tools: {call}."
        named = call.replace("TOOL_NAME", json.dumps(self.choice))
        return text + f"Reply with one JSON object that calls {self.choice}: {named}."


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def history_messages(messages: list[dict[str, Any]], template: str | None) -> list[dict[str, Any]]:
    """OpenAI messages with tool calls and results as the model sees them (see the module doc)."""
    tool_role = template is None or "tool" in template
    names: dict[str, str] = {}
    out = []
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                names[c.get("id", "")] = c["function"]["name"]
                try:
                    args = json.loads(c["function"]["arguments"])
                except ValueError:
                    args = c["function"]["arguments"]
                calls.append({"name": c["function"]["name"], "arguments": args})
            text = json.dumps({"tool_calls": calls}, ensure_ascii=False, separators=(",", ":"))
            out.append({"role": "assistant", "content": text})
        elif m["role"] == "tool":
            result = {"tool_call_id": m.get("tool_call_id"), "content": m["content"]}
            if m.get("tool_call_id") in names:
                result["name"] = names[m["tool_call_id"]]
            if tool_role:
                out.append({"role": "tool", "content": m["content"]})
            else:
                out.append({"role": "user", "content": json.dumps({"tool_response": result}, ensure_ascii=False)})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    return out


@dataclass
class Reply:
    """A finished reply: plain content, or tool calls (each {"id", "type", "function": {name, arguments}})."""

    content: str | None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


def parse_reply(text: str, spec: ToolSpec, ids: list[str] | None = None) -> Reply:
    """The generated JSON as OpenAI's message parts; text that is not the expected JSON (cut by
    max_tokens) is returned as content."""
    try:
        obj = json.loads(text)
    except ValueError:
        return Reply(text)
    if isinstance(obj, dict) and isinstance(obj.get("tool_calls"), list):
        calls = []
        for i, c in enumerate(obj["tool_calls"]):
            args = json.dumps(c.get("arguments"), ensure_ascii=False, separators=(",", ":"))
            cid = ids[i] if ids and i < len(ids) else new_call_id()
            calls.append({"id": cid, "type": "function", "function": {"name": c.get("name"), "arguments": args}})
        return Reply(None, calls)
    if isinstance(obj, dict) and "response" in obj:
        r = obj["response"]
        return Reply(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False, separators=(",", ":")))
    return Reply(text)


@dataclass
class _Frame:
    kind: str  # "{" or "["
    key: str | None = None  # the key whose value is being read (objects)
    index: int = 0  # the element being read (arrays)
    want_key: bool = False
    want_value: bool = False


class ToolStream:
    """Turns the growing JSON reply into OpenAI's streamed deltas.

    push(text) returns a list of delta parts, each one of
        {"content": str}                                          a plain answer's text
        {"tool_calls": [{"index", "id", "type", "function": {"name", "arguments": ""}}]}   a call starts
        {"tool_calls": [{"index", "function": {"arguments": str}}]}                       its arguments grow
    """

    def __init__(self) -> None:
        self.text = ""
        self.stack: list[_Frame] = []
        self.in_str = False
        self.esc = False
        self.str_key = False
        self.str_start = 0
        self.str_path: tuple[Any, ...] = ()
        self.args: tuple[int, int] | None = None  # (call index, where its arguments' text starts) while open
        self.args_sent = 0  # where the arguments' text sent so far ends
        self.resp_start: int | None = None  # where the response string's raw text starts, while open
        self.resp_sent = 0  # raw characters of the response string already sent (decoded)
        self.ids: list[str] = []  # each call's id, in order

    def _path(self) -> tuple[Any, ...]:
        return tuple(f.key if f.kind == "{" else f.index for f in self.stack)

    def push(self, piece: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        base = len(self.text)
        self.text += piece
        for k, ch in enumerate(piece):
            self._char(base + k, ch, out)
        if self.args is not None:
            self._send_args(len(self.text), out)
        if self.resp_start is not None:
            self._send_response(len(self.text), out, final=False)
        return out

    def _char(self, pos: int, ch: str, out: list[dict[str, Any]]) -> None:
        if self.in_str:
            if self.esc:
                self.esc = False
            elif ch == "\\":
                self.esc = True
            elif ch == '"':
                self.in_str = False
                self._string_end(pos, out)
            return
        if ch in " \t\r\n":
            return
        top = self.stack[-1] if self.stack else None
        if top is not None and top.want_key:
            if ch == '"':
                self.in_str, self.str_key, self.str_start = True, True, pos + 1
            elif ch == "}":
                self._close(pos, out)
            return
        if ch == ":" and top is not None:
            top.want_value = True
            return
        if ch == "," and top is not None:
            self._value_end(len(self.stack), pos, out)
            if top.kind == "{":
                top.want_key, top.key = True, None
            else:
                top.index += 1
                top.want_value = True
            return
        if ch in "}]":
            self._close(pos, out)
            return
        if top is None or top.want_value:
            if top is not None:
                top.want_value = False
            path = self._path()
            if len(path) == 3 and path[0] == "tool_calls" and path[2] == "arguments":
                self.args, self.args_sent = (path[1], pos), pos
            if ch == "{":
                self.stack.append(_Frame("{", want_key=True))
            elif ch == "[":
                self.stack.append(_Frame("[", want_value=True))
            elif ch == '"':
                self.in_str, self.str_key, self.str_start, self.str_path = True, False, pos + 1, path
                if path == ("response",):
                    self.resp_start, self.resp_sent = pos + 1, 0

    def _close(self, pos: int, out: list[dict[str, Any]]) -> None:
        self._value_end(len(self.stack), pos, out)
        self.stack.pop()
        self._value_end(len(self.stack), pos + 1, out)  # the container was a value of its parent

    def _value_end(self, depth: int, end: int, out: list[dict[str, Any]]) -> None:
        """A value at `depth` frames ended before `end` (if one was open there)."""
        if self.args is not None and depth == 3:
            self._send_args(end, out)
            self.args = None

    def _string_end(self, pos: int, out: list[dict[str, Any]]) -> None:
        raw = self.text[self.str_start : pos]
        if self.str_key:
            top = self.stack[-1]
            top.key, top.want_key = json.loads(f'"{raw}"'), False
            return
        path = self.str_path
        if len(path) == 3 and path[0] == "tool_calls" and path[2] == "name":
            cid = new_call_id()
            self.ids.append(cid)
            call = {"index": path[1], "id": cid, "type": "function"}
            out.append({"tool_calls": [{**call, "function": {"name": json.loads(f'"{raw}"'), "arguments": ""}}]})
        elif path == ("response",):
            self._send_response(pos, out, final=True)
            self.resp_start = None

    def _send_args(self, end: int, out: list[dict[str, Any]]) -> None:
        assert self.args is not None
        if end > self.args_sent:
            out.append(
                {"tool_calls": [{"index": self.args[0], "function": {"arguments": self.text[self.args_sent : end]}}]}
            )
            self.args_sent = end

    def _send_response(self, end: int, out: list[dict[str, Any]], final: bool) -> None:
        """Send the response string's text decoded so far (raw text up to `end`), keeping back an
        escape that is not complete yet."""
        assert self.resp_start is not None
        start = self.resp_start + self.resp_sent
        raw = self.text[start:end]
        cut = len(raw) if final else _complete(raw)
        if cut:
            out.append({"content": json.loads(f'"{raw[:cut]}"')})
            self.resp_sent += cut


def _complete(raw: str) -> int:
    """The length of the longest prefix of a JSON string's raw text made of whole characters
    (an escape is whole with all its characters; a high surrogate with its low one)."""
    i = 0
    while i < len(raw):
        if raw[i] != "\\":
            i += 1
            continue
        if i + 1 >= len(raw):
            break
        need = 2
        if raw[i + 1] == "u":
            need = 12 if raw[i + 2 : i + 4].lower() in ("d8", "d9", "da", "db") else 6
        if i + need > len(raw):
            break
        i += need
    return i
