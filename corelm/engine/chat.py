"""Rendering chat messages with the model's Jinja template, as transformers does."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Used when a model has no template of its own.
FALLBACK_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# Where a reply in the fallback format ends: the marker of a next turn, or a blank line (a model
# that never saw the format, such as corelm's Shakespeare model, ends a speech there).
FALLBACK_STOPS = ("<|user|>", "<|system|>", "<|assistant|>", "\n\n")


def _raise(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False: json.dumps(
        x, indent=indent, ensure_ascii=ensure_ascii
    )
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def render_chat(
    template: str | None,
    messages: list[dict[str, Any]],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
) -> str:
    """The prompt text for `messages` (OpenAI-style dicts with role and content)."""
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {m!r}")
    try:
        compiled = _environment().from_string(template or FALLBACK_TEMPLATE)
        return compiled.render(
            messages=messages, bos_token=bos_token, eos_token=eos_token, add_generation_prompt=add_generation_prompt
        )
    except jinja2.exceptions.TemplateError as e:
        raise ValueError(f"chat template failed: {e}") from e


def fit_messages(
    messages: list[dict[str, Any]], count: Callable[[list[dict[str, Any]]], int], budget: int
) -> tuple[list[dict[str, Any]], int]:
    """Drop the oldest turns until `count(messages) <= budget`: (the messages kept, how many were
    dropped). System messages and the last message stay; a user message goes with the replies
    that follow it, so the kept conversation still starts with a user turn. The result may still
    be over budget when only those are left."""
    kept = list(messages)
    dropped = 0
    while count(kept) > budget:
        first = next((i for i, m in enumerate(kept[:-1]) if m["role"] != "system"), None)
        if first is None:
            break
        end = first + 1
        while end < len(kept) - 1 and kept[end]["role"] not in ("user", "system"):
            end += 1
        dropped += end - first
        del kept[first:end]
    return kept, dropped
