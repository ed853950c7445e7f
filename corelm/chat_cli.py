"""`corelm chat`: the interactive loop. Each line is a user message, or a command:

    /help  /reset  /system TEXT  /save FILE  /load FILE  /exit

Commands never reach the model (a message that starts with "/" is typed as "//..."). The
conversation never outgrows the context: before each reply the oldest turns are dropped (said
on stderr) until the prompt leaves room for the reply. Ctrl-C during a reply stops it and
returns to the prompt; at the prompt it clears the line (twice in a row quits). A terminal
gets readline's line editing and history (up-arrow).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from corelm.engine.chat import fit_messages
from corelm.llm import LLM

COMMANDS = {
    "/help": "this list",
    "/reset": "forget the conversation (the system message stays)",
    "/system TEXT": "set the system message (no TEXT: show it)",
    "/save FILE": "write the conversation to FILE (JSON: a list of {role, content})",
    "/load FILE": "read a conversation written by /save (or an OpenAI-style messages list)",
    "/exit": "quit (also /quit, Ctrl-D)",
}
ROLES = ("system", "user", "assistant")


def say(text: str) -> None:
    """Feedback for the user: stderr, so stdout holds only the model's replies."""
    print(text, file=sys.stderr, flush=True)


def read_messages(path: str) -> list[dict[str, str]]:
    """A conversation from a JSON file: a list of {"role", "content"}, or {"messages": [...]}."""
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not JSON ({e})") from None
    if isinstance(data, dict):
        data = data.get("messages")
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of messages (or an object with 'messages')")
    for i, m in enumerate(data):
        if not (isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)):
            raise ValueError(f"{path}: message {i} must be {{'role': one of {', '.join(ROLES)}, 'content': text}}")
    return [{"role": m["role"], "content": m["content"]} for m in data]


class ChatSession:
    """The conversation and the commands that act on it; `reply` streams the model's answer."""

    def __init__(self, llm: LLM, system: str | None, max_tokens: int, sampling: dict[str, Any]) -> None:
        self.llm = llm
        self.messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
        self.max_tokens = max_tokens
        self.sampling = sampling

    # ---- commands ----

    def command(self, line: str) -> bool:
        """Run a /command; False when it asks to quit."""
        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        if name in ("/exit", "/quit"):
            return False
        if name == "/help":
            say("commands:")
            for usage, what in COMMANDS.items():
                say(f"  {usage:14} {what}")
            say("Ctrl-C stops a reply; a message starting with / is typed as //...")
        elif name == "/reset":
            n = sum(m["role"] != "system" for m in self.messages)
            self.messages = [m for m in self.messages if m["role"] == "system"]
            kept = " (the system message stays)" if self.messages else ""
            say(f"conversation cleared: {n} message{'s' * (n != 1)} forgotten{kept}")
        elif name == "/system":
            if not arg:
                current = next((m["content"] for m in self.messages if m["role"] == "system"), None)
                say(
                    f"system message: {current!r}"
                    if current is not None
                    else "no system message (/system TEXT sets one)"
                )
            else:
                self.messages = [{"role": "system", "content": arg}] + [
                    m for m in self.messages if m["role"] != "system"
                ]
                say(f"system message set ({len(arg)} characters)")
        elif name == "/save":
            if not arg:
                say("usage: /save FILE")
            else:
                try:
                    with open(arg, "w", encoding="utf-8") as f:
                        json.dump(self.messages, f, indent=2, ensure_ascii=False)
                        f.write("\n")
                    say(f"saved {len(self.messages)} messages to {arg}")
                except OSError as e:
                    say(f"cannot save: {e}")
        elif name == "/load":
            if not arg:
                say("usage: /load FILE")
            else:
                try:
                    self.messages = read_messages(arg)
                    say(f"loaded {len(self.messages)} messages from {arg}")
                except (OSError, ValueError) as e:
                    say(f"cannot load: {e}")
        else:
            say(f"unknown command {name} (/help lists them; type //... to send a message starting with /)")
        return True

    # ---- a turn ----

    def fit(self) -> list[int] | None:
        """Drop the oldest turns so that the prompt leaves room for a reply (up to -n tokens, at
        most half the context): the prompt's ids, or None when the last message alone is too long."""
        llm = self.llm
        room = max(1, min(self.max_tokens, llm.ctx // 2))

        def count(messages: list[dict[str, Any]]) -> int:
            return len(llm.chat_ids(messages))

        kept, dropped = fit_messages(self.messages, count, llm.ctx - room)
        ids = llm.chat_ids(kept)
        if len(ids) >= llm.ctx:
            hint = ", /system a shorter system message" if kept[0]["role"] == "system" else ""
            say(
                f"this message makes a prompt of {len(ids)} tokens; the context holds {llm.ctx}: not sent "
                f"(-c sets a larger context{hint})"
            )
            return None
        if dropped:
            say(
                f"[dropped the {dropped} oldest message{'s' * (dropped != 1)} to fit the {llm.ctx}-token context; "
                "-c sets a larger one]"
            )
            self.messages = kept
        return ids

    def reply(self, text: str, write: Callable[[str], None]) -> None:
        """Send a user message and stream the answer through `write`; Ctrl-C stops it early."""
        self.messages.append({"role": "user", "content": text})
        ids = self.fit()
        if ids is None:
            self.messages.pop()
            return
        llm = self.llm
        # The generation loop stops at a full context anyway: capping here keeps the reply quiet about it.
        max_tokens = min(self.max_tokens, llm.ctx - len(ids) + 1)
        answer = ""
        pieces = llm.stream_chat(self.messages, max_tokens=max_tokens, **self.sampling)
        interrupted = False
        try:
            for piece in pieces:
                answer += piece
                write(piece)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            pieces.close()  # type: ignore[attr-defined]  # a generator: releases the model at once
        write("\n")
        if interrupted:
            say("[reply stopped]")
        else:
            say(speed_line(llm))
        if answer:
            self.messages.append({"role": "assistant", "content": answer})
        else:
            self.messages.pop()  # nothing came back: forget the question too


def speed_line(llm: LLM) -> str:
    import corelm

    s = llm.last_stats
    info = corelm.info()
    return (
        f"[prompt {s.prompt_tokens} tokens ({s.cached_tokens} cached), {s.prefill_tps:.1f} tok/s | "
        f"generated {s.generated_tokens} tokens, {s.decode_tps:.1f} tok/s | stop: {s.finish_reason} | "
        f"{info['isa']}, {info['threads']} threads]"
    )


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def run(llm: LLM, system: str | None, max_tokens: int | None, sampling: dict[str, Any]) -> int:
    """The REPL over stdin; max_tokens None: 256 per reply (or the room the context has)."""
    if max_tokens is not None and max_tokens > llm.ctx // 2:
        say(f"-n {max_tokens}: a reply stops when the {llm.ctx}-token context fills (-c sets a larger one)")
    session = ChatSession(llm, system, 256 if max_tokens is None else max_tokens, sampling)
    interactive = sys.stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  # line editing and history for input()
        except ImportError:
            pass
        say("corelm chat: type a message; /help lists commands, Ctrl-C stops a reply, /exit or Ctrl-D quits.")
    last_interrupted = False
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            if interactive:
                print()
            break
        except KeyboardInterrupt:
            if last_interrupted or not interactive:
                print()
                break
            last_interrupted = True
            say("\n(Ctrl-C again, /exit or Ctrl-D quits)")
            continue
        last_interrupted = False
        if not line.strip():
            continue
        if line.startswith("/") and not line.startswith("//"):
            if not session.command(line):
                break
            continue
        session.reply(line[1:] if line.startswith("//") else line, _write)
    return 0
