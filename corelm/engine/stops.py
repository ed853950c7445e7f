"""Stop strings over streamed text: emit what is safe, hold back what may start a stop string.

    stops = StopStrings(["\\n\\n", "User:"])
    for piece in pieces:
        out = stops.push(piece)     # text that can be shown now
        if stops.stopped: ...       # a stop string appeared; `out` is the text before it
    out = stops.flush()             # at the end: the text still held back

Used by the Engine (corelm/engine/scheduler.py) for every sequence, so LLM.stream and the
server cut text the same way.
"""

from __future__ import annotations

from collections.abc import Iterable


class StopStrings:
    def __init__(self, stops: Iterable[str] = ()) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""  # text held back while it could be the start of a stop string
        self.stopped = False

    def push(self, text: str) -> str:
        """Add generated text; returns the part that can be emitted now. After a stop string,
        `stopped` is set and the returned text is what came before it (the rest is dropped)."""
        if self.stopped:
            return ""
        self.pending += text
        if not self.stops:
            out, self.pending = self.pending, ""
            return out
        hit = min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if hit >= 0:
            out, self.pending, self.stopped = self.pending[:hit], "", True
            return out
        hold = max((k for s in self.stops for k in range(1, len(s)) if self.pending.endswith(s[:k])), default=0)
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out

    def flush(self, text: str = "") -> str:
        """At the end of generation: `text` (e.g. a decoder's tail) and everything held back."""
        out = self.push(text)
        if not self.stopped:
            out, self.pending = out + self.pending, ""
        return out
