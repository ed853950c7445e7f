"""`corelm serve`: an OpenAI-compatible HTTP server with continuous batching, and a chat page.

    corelm serve model.gguf --port 8080 --parallel 4
    curl localhost:8080/v1/chat/completions -d '{"messages": [{"role": "user", "content": "Hi"}]}'

Routes: GET / (chat page), /health, /metrics (Prometheus), /v1/models[/ID], /props (llama.cpp's:
defaults, slots, model path, chat template); POST /tokenize and /detokenize (llama.cpp's); POST
/v1/completions and /v1/chat/completions (with "stream": true for server-sent events),
/v1/embeddings (OpenAI's Embeddings API: every model, a decoder's pooled hidden states too),
/v1/classify and /v1/tag (corelm's own, for models with a sequence / token classifier):

    curl localhost:8080/v1/embeddings -d '{"input": ["first text", "second text"]}'
    curl localhost:8080/v1/classify -d '{"input": "I loved it"}'
        -> {"object": "list", "data": [{"index": 0, "label": "positive", "score": 0.98,
            "scores": {"negative": 0.01, "positive": 0.98, ...}}], "model": ..., "usage": ...}
    curl localhost:8080/v1/tag -d '{"input": ["Ada lives in Paris"]}'
        -> {"object": "list", "data": [{"index": 0, "entities": [{"label": "PER", "text": "Ada",
            "start": 0, "end": 3, "score": 0.99}, ...]}], "model": ..., "usage": ...}

(tasks.py tells the inputs each accepts). A route the model cannot serve (completions on
an encoder, /v1/classify without a classifier) is 400 "unsupported_model", naming what the
model can do. An encoder (or a decoder with no language-model head) gets no KV slots: the
server then only embeds / classifies / tags, and / says it is not a chat model.
The model id is the file's stem (a folder's name), or --alias; requests may leave out
"model", and any other name gets 404 model_not_found.

Choices:
- Standard library only (http.server's ThreadingHTTPServer, HTTP/1.1 keep-alive): no new
  dependency. Handler threads only parse, validate (and tokenize) and write; one scheduler
  thread owns the model and talks to them through queues.
- Embeddings, classification and tagging run on that same scheduler thread, as Tasks: the
  native kernels use one thread pool, and a second thread calling the model would overlap
  with the generation steps. A task is cut into units of whole inputs (at most
  --prefill-chunk tokens while something generates, a few thousand when nothing does) and
  the thread alternates one generation step with one unit (round robin over tasks), so a
  2048-text request delays each generated token by about one prefill chunk's time but never
  stops generation, nor does generation stop it. Units are LLM.embed / class_probabilities /
  tag calls on sub-lists, so results equal the Python API's. --parallel + --queue tasks may
  be held at once; more get 503.
- Continuous batching is corelm.engine's Engine (the same one LLM.generate runs a batch of
  one on): each step is one Model.forward_batch call over every active sequence and one
  native sampling call. New prompts are prefilled as segments of that same call (at most
  --prefill-chunk prompt tokens per step, a longer prompt spreads over several steps), so
  running sequences keep getting a token per step while a request joins. --parallel KV
  caches of --ctx tokens are allocated once at start; a finished or abandoned sequence frees
  its slot at once.
- Prefix cache: a slot keeps the keys and values of its last sequence. A prompt that starts
  like one a slot holds (a system prompt, a chat's earlier turns) takes that slot and skips
  prefilling the shared part (copied from a running sequence's slot when that one has more of
  it). usage.prompt_tokens_details.cached_tokens and /metrics count the tokens saved.
- Past --parallel running and --queue waiting requests: 503 with Retry-After: 1.
- max_tokens: completions default to 16 (as OpenAI), chat to the rest of the slot's context;
  an explicit value with the prompt past the context is 400 context_length_exceeded.
- A stream writer that falls behind sends the tokens that piled up as one chunk.

Layout: scheduler.py (the one thread that runs the model: the Engine's steps over a pool of
KV-cache slots, and tasks between them), openai_api.py (request validation and response
shapes), tasks.py (the same for /v1/embeddings, /v1/classify, /v1/tag), app.py (HTTP),
metrics.py (/metrics), chat.html (the page).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from corelm import argtypes
from corelm.argtypes import count, positive_int
from corelm.models import QUANT_NAMES

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        nargs="?",
        default=None,
        help="a .gguf file, a Hugging Face model folder or hf://ORG/REPO[/FILE.gguf] (default: corelm's own)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=argtypes.port, default=8080, help="port (default 8080; 0 picks a free one)")
    p.add_argument(
        "--api-key",
        default=os.environ.get("CORELM_API_KEY"),
        help="require 'Authorization: Bearer KEY' on /v1 routes (default: $CORELM_API_KEY, else none)",
    )
    p.add_argument(
        "-np", "--parallel", type=positive_int, default=4, help="sequences generated together: KV slots (default 4)"
    )
    p.add_argument(
        "--queue", type=count, default=16, help="requests that may wait for a slot; more get 503 (default 16)"
    )
    p.add_argument(
        "-c",
        "--ctx",
        type=positive_int,
        default=None,
        help="context of each slot in tokens (default: the model's, <= 4096)",
    )
    p.add_argument(
        "-t",
        "--threads",
        type=argtypes.threads,
        default=None,
        help="threads (default: physical cores; at most 4 per CPU)",
    )
    p.add_argument("--quant", choices=list(QUANT_NAMES), default=None, help="quantize weights while loading")
    p.add_argument("--kv-dtype", choices=["float32", "float16"], default="float32", help="KV-cache element type")
    p.add_argument(
        "--prefill-chunk", type=positive_int, default=512, help="most prompt tokens prefilled in one step (default 512)"
    )
    p.add_argument("--alias", default=None, help="model id to report and accept (default: the file's stem)")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add `serve` to the `corelm` command's subparsers."""
    p = subparsers.add_parser(
        "serve",
        help="OpenAI-compatible HTTP server with a chat page",
        description="Serve MODEL over HTTP: /v1/chat/completions, /v1/completions (streaming or not), "
        "/v1/embeddings (every model), /v1/classify and /v1/tag (models with a sequence / token classifier), "
        "/v1/models, /health, /metrics, and a chat page at /. Requests that arrive while others are "
        "generating join the running batch (continuous batching over --parallel KV-cache slots). "
        "An encoder (BERT, RoBERTa, DistilBERT) only embeds, classifies or tags: it has no KV slots.",
    )
    add_arguments(p)
    p.set_defaults(func=cmd_serve)
    return p


def model_id(path: str) -> str:
    p = Path(path)
    return p.name if p.is_dir() else p.stem


def _listen_error(host: str, port: int, e: OSError) -> OSError:
    """One line naming the address a server could not listen on, and what to do."""
    if e.errno == errno.EADDRINUSE:
        why = "the port is in use (another server?): --port picks another, --port 0 a free one"
    elif e.errno == errno.EACCES:
        why = "permission denied (ports below 1024 need privileges): --port picks another"
    else:
        why = e.strerror or str(e)
    return OSError(f"cannot listen on {host} port {port}: {why}")


def check_port(host: str, port: int) -> None:
    """Fail before the model loads when the address cannot be listened on (the server binds
    again once the model is ready, with the same options as http.server)."""
    if port == 0:
        return
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as e:
        raise _listen_error(host, port, e) from None


def cmd_serve(args: argparse.Namespace) -> int:
    from corelm import _C
    from corelm.llm import DEFAULT_MAX_CTX, DEFAULT_MODEL, LLM
    from corelm.models import load_model
    from corelm.server.app import App, Server
    from corelm.server.openai_api import OpenAIApi
    from corelm.server.scheduler import Scheduler
    from corelm.server.tasks import TaskApi

    check_port(args.host, args.port)
    warning = argtypes.too_many_threads(args.threads)
    if warning:
        log.warning("%s", warning)
    path = args.model
    if path is None:
        if not DEFAULT_MODEL.is_file():
            raise FileNotFoundError(f"corelm's default model is missing from this install ({DEFAULT_MODEL})")
        path = str(DEFAULT_MODEL)
    argtypes.use_threads(args.threads)
    model, tokenizer = load_model(path, quant=args.quant)
    if tokenizer is None:
        raise ValueError(f"{path}: the model has no tokenizer; the server needs one")
    ctx = args.ctx or min(model.config.ctx, DEFAULT_MAX_CTX)
    llm = LLM(model, tokenizer, ctx=ctx)  # embeds, classifies and tags (on the scheduler thread); never generates
    caps = llm.capabilities
    generate = "generate" in caps
    scheduler = Scheduler(
        model, tokenizer, args.parallel, ctx, args.queue, args.kv_dtype, args.prefill_chunk, generate=generate
    )
    name = args.alias or model_id(path)
    api = OpenAIApi(tokenizer, name, ctx, model.config.vocab_size, capabilities=caps, model_path=str(path))
    try:
        server = Server((args.host, args.port), App(scheduler, api, args.api_key, tasks=TaskApi(llm, api)))
    except OSError as e:
        raise _listen_error(args.host, args.port, e) from None
    host, port = str(server.server_address[0]), int(server.server_address[1])
    scheduler.start()

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    if not args.api_key and host not in ("127.0.0.1", "::1", "localhost"):
        log.warning("listening on %s without --api-key: anyone who can reach this port can use the model", host)
    if generate:
        serving = f"{args.parallel} slots x {ctx} tokens, KV cache {scheduler.kv_bytes / 2**20:.1f} MiB"
    else:
        serving = f"{model.config.arch}, no generation: {', '.join(api.routes())}"
    print(
        f"corelm serve: {name} on http://{host}:{port} ({serving}, queue {args.queue}, "
        f"{_C.info()['threads']} threads{', API key required' if args.api_key else ''})",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        scheduler.stop()
    return 0
