"""The HTTP side: routes, authentication, bodies, server-sent events, client disconnects.

The standard library's ThreadingHTTPServer gives each connection a thread (HTTP/1.1,
keep-alive). Handler threads never touch the model: they validate a request into a Job,
hand it to the Scheduler and turn its events into a JSON response or a stream of
server-sent events (chunked transfer encoding). A client that goes away is noticed when a
write fails or, while no event is due, when its socket reads end-of-file; its job is then
cancelled and its KV slot freed before the scheduler's next step. Embeddings, classify and
tag requests go the same way as a Task (see tasks.py): one JSON response when it is done.
"""

from __future__ import annotations

import hmac
import html
import json
import logging
import queue
import select
import socket
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from corelm.engine.scheduler import Delta, Done, TokenLogprob
from corelm.server import metrics
from corelm.server.openai_api import ApiError, ApiRequest, Choice, OpenAIApi, usage
from corelm.server.scheduler import Failed, Job, QueueFull, Scheduler, Task, TaskDone
from corelm.server.tasks import ROUTE_KINDS, TaskApi, TaskRequest
from corelm.server.tools import ToolStream

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 << 20
POLL_SECONDS = 0.25  # how often a handler waiting for tokens checks that its client is still there
CHAT_PAGE = Path(__file__).with_name("chat.html")

# path -> allowed methods (HEAD is allowed wherever GET is)
ROUTES = {
    "/": ("GET",),
    "/health": ("GET",),
    "/metrics": ("GET",),
    "/v1/models": ("GET",),
    "/v1/models/{id}": ("GET",),
    "/v1/completions": ("POST",),
    "/v1/chat/completions": ("POST",),
    "/v1/embeddings": ("POST",),
    "/v1/classify": ("POST",),
    "/v1/tag": ("POST",),
    "/tokenize": ("POST",),
    "/detokenize": ("POST",),
    "/props": ("GET",),
}
PROTECTED = ("/tokenize", "/detokenize", "/props")  # besides /v1: they need the API key too


def _get(req: ApiRequest, timeout: float) -> tuple[int, Delta | Done | Failed] | None:
    """The next (choice index, event) of a request, or None after `timeout` seconds."""
    try:
        return req.events.get(timeout=timeout) if timeout > 0 else req.events.get_nowait()
    except queue.Empty:
        return None


class ClientGone(Exception):
    """The client closed its connection."""


class App:
    """What every handler thread shares."""

    def __init__(
        self, scheduler: Scheduler, api: OpenAIApi, api_key: str | None = None, tasks: TaskApi | None = None
    ) -> None:
        self.scheduler = scheduler
        self.api = api
        self.api_key = api_key
        self.tasks = tasks  # None: no /v1/embeddings, /v1/classify, /v1/tag
        self.http = metrics.HttpStats()
        self.created = int(time.time())
        self.page = CHAT_PAGE.read_bytes() if "generate" in api.capabilities else self._no_chat_page()

    def _no_chat_page(self) -> bytes:
        """What / shows for a model that cannot generate."""
        routes = "".join(f"<li><code>POST {html.escape(r)}</code></li>" for r in self.api.routes())
        name = html.escape(self.api.model_id)
        return (
            f"<!doctype html><html><head><meta charset='utf-8'><title>corelm: {name}</title></head>"
            f"<body><h1>{name}</h1><p>This model cannot generate text, so there is no chat here. "
            f"The server answers:</p><ul>{routes}</ul></body></html>"
        ).encode()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: App) -> None:
        self.app = app
        super().__init__(address, Handler)

    def handle_error(self, request, client_address) -> None:
        # A client resetting an idle keep-alive connection is routine, not worth a traceback.
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            log.debug("connection from %s ended: %s", client_address, sys.exc_info()[1])
        else:
            log.exception("error on the connection from %s", client_address)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # each server-sent event goes out at once
    server_version = "corelm"
    timeout = 60  # seconds a client may stall while sending a request or reading a response
    server: Server

    # ---- plumbing ----

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        app = self.server.app
        self._route, self._status, self._streaming, self._body_read = "unknown", 0, False, False
        self._held: tuple[int, Delta | Done | Failed] | None = None  # an event taken from the queue early (_next)
        self._checked = time.monotonic()  # when _next last looked for a closed connection
        try:
            self._dispatch(app)
        except ApiError as e:
            self._error(e)
        except ClientGone:
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        except Exception:
            log.exception("error handling %s %s", self.command, self.path)
            self._error(ApiError(500, "The server had an error while processing your request.", type="server_error"))
        finally:
            app.http.count(self._route, self._status)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's errors (malformed request line, oversized headers, ...) as JSON."""
        self.close_connection = True
        text = message or explain or self.responses.get(code, ("error",))[0]
        body = json.dumps(ApiError(code, text).body()).encode()
        self.send_response(code, message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(body)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", headers)

    def _error(self, e: ApiError) -> None:
        if self._streaming:  # headers are out: all we can do is end the stream
            self.close_connection = True
            return
        if not self._body_read and (
            self.headers.get("Content-Length", "0") != "0" or "Transfer-Encoding" in self.headers
        ):
            self.close_connection = True  # an unread body would be taken for the next request
        try:
            self._json(e.status, e.body(), e.headers)
        except OSError:
            self.close_connection = True

    def _client_gone(self) -> bool:
        """Whether the client closed its end (a pipelined next request does not count)."""
        try:
            poller = select.poll()  # not select(): no limit on the descriptor number
            poller.register(self.connection, select.POLLIN)
            if not poller.poll(0):
                return False  # nothing to read: still connected
            return self.connection.recv(1, socket.MSG_PEEK) == b""  # readable, so this does not block
        except OSError:
            return True

    # ---- routing ----

    def _dispatch(self, app: App) -> None:
        path = urlsplit(self.path).path
        path = path.rstrip("/") or "/"
        route = "/v1/models/{id}" if path.startswith("/v1/models/") else path
        methods = ROUTES.get(route)
        self._route = route if methods else "unknown"
        if (path.startswith("/v1") or route in PROTECTED) and app.api_key is not None:
            self._authorize(app.api_key)
        if methods is None:
            raise ApiError(404, f"Unknown request URL: {self.command} {path}.", code="unknown_url")
        method = "GET" if self.command == "HEAD" else self.command
        if method not in methods:
            raise ApiError(
                405,
                f"Method {self.command} is not allowed for {path}; use {', '.join(methods)}.",
                code="method_not_allowed",
                headers={"Allow": ", ".join(methods + (("HEAD",) if "GET" in methods else ()))},
            )
        if route == "/":
            self._send(200, app.page, "text/html; charset=utf-8")
        elif route == "/health":
            s = app.scheduler
            self._json(
                200,
                {
                    "status": "ok",
                    "model": app.api.model_id,
                    "capabilities": sorted(app.api.capabilities),
                    "slots_total": s.parallel,
                    "slots_busy": s.running(),
                    "queue_depth": s.queue_depth(),
                    "tasks_queued": s.tasks_queued(),
                },
            )
        elif route == "/metrics":
            text = metrics.render(app.scheduler, app.http)
            self._send(200, text.encode(), "text/plain; version=0.0.4; charset=utf-8")
        elif route == "/props":
            self._json(200, app.api.props(app.scheduler.parallel))
        elif route == "/tokenize":
            self._json(200, app.api.tokenize(self._read_json()))
        elif route == "/detokenize":
            self._json(200, app.api.detokenize(self._read_json()))
        elif route == "/v1/models":
            self._json(200, app.api.models(app.created))
        elif route == "/v1/models/{id}":
            name = path.removeprefix("/v1/models/")
            if name != app.api.model_id:
                raise ApiError(404, f"The model `{name}` does not exist.", param="model", code="model_not_found")
            self._json(200, app.api.model_card(app.created))
        elif route in ROUTE_KINDS:
            body = self._read_json()
            if app.tasks is None:
                raise ApiError(404, f"Unknown request URL: {self.command} {path}.", code="unknown_url")
            self._task(app, app.tasks.parse(ROUTE_KINDS[route], body))
        else:
            body = self._read_json()
            req = app.api.parse_chat(body) if route == "/v1/chat/completions" else app.api.parse_completion(body)
            self._generate(app, req)

    def _authorize(self, key: str) -> None:
        given = self.headers.get("Authorization", "")
        if not given:
            raise ApiError(
                401,
                "You didn't provide an API key. Send it in an Authorization header: 'Authorization: Bearer KEY'.",
                code="invalid_api_key",
            )
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")

    def _read_json(self) -> Any:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise ApiError(411, "Chunked request bodies are not supported: send a Content-Length header.")
        length = self.headers.get("Content-Length")
        if length is None:
            raise ApiError(411, "A Content-Length header is required.")
        try:
            n = int(length)
            if n < 0:
                raise ValueError
        except ValueError:
            raise ApiError(400, f"Invalid Content-Length header: {length!r}.") from None
        if n > MAX_BODY_BYTES:
            raise ApiError(
                413, f"The request body has {n} bytes; the limit is {MAX_BODY_BYTES}.", code="request_too_large"
            )
        data = self.rfile.read(n)
        self._body_read = True
        if len(data) < n:
            raise ClientGone
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as e:
            raise ApiError(
                400,
                f"We could not parse the JSON body of your request ({e}). The body must be a JSON object.",
                code="invalid_json",
            ) from None

    # ---- the scheduler ----

    @staticmethod
    def _submit(app: App, job: Job | Task) -> None:
        try:
            if isinstance(job, Task):
                app.scheduler.submit_task(job)
            else:
                app.scheduler.submit(job)
        except QueueFull as e:
            raise ApiError(
                503,
                f"The server is busy ({e}); retry shortly.",
                type="server_error",
                code="queue_full",
                headers={"Retry-After": "1"},
            ) from None

    # ---- embeddings, classification, tagging ----

    def _task(self, app: App, req: TaskRequest) -> None:
        assert app.tasks is not None  # routed here only when the server has tasks
        task = app.tasks.task(req)
        self._submit(app, task)
        try:
            ev = task.next_event(POLL_SECONDS)
            while ev is None:
                if self._client_gone():
                    raise ClientGone
                ev = task.next_event(POLL_SECONDS)
        finally:
            app.scheduler.cancel(task)  # the rest of its inputs are skipped if the client went away; else no-op
        if not isinstance(ev, TaskDone):
            raise ApiError(500, ev.message, type="server_error")
        self._json(200, app.tasks.response(req, ev.results))

    # ---- generation ----

    def _generate(self, app: App, req: ApiRequest) -> None:
        try:
            for job in req.jobs:  # n choices: n sequences of the batch
                self._submit(app, job)
            rid = ("chatcmpl-" if req.kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
            created = int(time.time())
            if req.stream:
                self._stream(app, req, rid, created)
            else:
                self._complete(app, req, rid, created)
        finally:
            for job in req.jobs:  # frees the slots of jobs still running (client gone); else no-op
                app.scheduler.cancel(job)

    def _next(self, req: ApiRequest) -> tuple[int, Delta | Done | Failed]:
        """The next event of any choice, with the choice's index; Deltas of one choice that are
        already waiting come merged into one."""
        now = time.monotonic()
        if now - self._checked > POLL_SECONDS:  # also while tokens flow: a JSON reply writes nothing until the end
            self._checked = now
            if self._client_gone():
                raise ClientGone
        item = self._held or _get(req, POLL_SECONDS)
        self._held = None
        while item is None:
            if self._client_gone():
                raise ClientGone
            item = _get(req, POLL_SECONDS)
        index, ev = item
        # A writer that falls behind the scheduler catches up with one write, not one per token.
        while isinstance(ev, Delta) and (more := _get(req, 0)) is not None:
            if more[0] != index or not isinstance(more[1], Delta):
                self._held = more
                break
            nxt = more[1]
            lps = ev.logprobs + (nxt.logprobs or []) if ev.logprobs is not None else None
            ev = Delta(ev.text + nxt.text, lps)
        return index, ev

    def _complete(self, app: App, req: ApiRequest, rid: str, created: int) -> None:
        n = len(req.jobs)
        texts: list[list[str]] = [[] for _ in range(n)]
        lps: list[list[TokenLogprob] | None] = [[] if j.request.logprobs is not None else None for j in req.jobs]
        done: dict[int, Done] = {}
        while len(done) < n:
            index, ev = self._next(req)
            if isinstance(ev, Delta):
                texts[index].append(ev.text)
                got = lps[index]
                if got is not None and ev.logprobs:
                    got += ev.logprobs
            elif isinstance(ev, Done):
                done[index] = ev
            else:
                raise ApiError(500, ev.message, type="server_error")
        choices = [Choice(i, "".join(texts[i]), lps[i], done[i].finish_reason) for i in range(n)]
        u = usage(*(done[i].stats for i in range(n)))
        self._json(200, app.api.response(req, rid, created, choices, u))

    def _stream(self, app: App, req: ApiRequest, rid: str, created: int) -> None:
        api = app.api
        self._status = 200
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("X-Accel-Buffering", "no")
        self.end_headers()
        self._streaming = True
        n = len(req.jobs)
        tools = [ToolStream() for _ in range(n)] if req.tools is not None else None
        if req.kind == "chat":
            for i in range(n):
                self._event(api.chunk(req, rid, created, "", first=True, index=i))
        done: dict[int, Done] = {}
        while len(done) < n:
            index, ev = self._next(req)
            if isinstance(ev, Delta):
                if tools is None:
                    self._event(api.chunk(req, rid, created, ev.text, ev.logprobs, index=index))
                    continue
                for delta in tools[index].push(ev.text):
                    self._event(api.chunk(req, rid, created, None, index=index, delta=delta))
            elif isinstance(ev, Done):
                done[index] = ev
                finish = ev.finish_reason
                if tools is not None and tools[index].ids and finish == "stop":
                    finish = "tool_calls"
                closing = None if req.kind == "chat" else ""
                self._event(api.chunk(req, rid, created, closing, finish=finish, index=index))
            else:
                err = ApiError(500, ev.message, type="server_error")
                self._event(err.body())
                break
        else:
            if req.include_usage:
                self._event(api.usage_chunk(req, rid, created, usage(*(done[i].stats for i in range(n)))))
        self._write_chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")

    def _event(self, obj: Any) -> None:
        self._write_chunk(b"data: " + json.dumps(obj).encode() + b"\n\n")

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
