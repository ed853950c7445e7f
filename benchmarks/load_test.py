"""Load test of `corelm serve` (and llama.cpp's llama-server beside it) on loopback: N
concurrent clients send M streaming requests.

    python -m benchmarks.load_test [MODEL] --clients 4 --requests 32 --max-tokens 64
    python -m benchmarks.load_test [MODEL] --curve          # 1, 2, 4, 8, 16 clients: the tokens/s curve
    python -m benchmarks.load_test MODEL --curve --runtimes corelm llama.cpp --llama-server PATH

Starts each server itself (127.0.0.1, a free port) with the same model file, threads and
number of parallel slots, so it can read the server's resident memory (VmRSS in
/proc/PID/status) before and after the load. Every request is a streaming /v1/completions
call with ignore_eos, so each one makes exactly --max-tokens tokens. Reports the aggregate
tokens/s (all completion tokens over the wall time of the run), p50 / p99 request latency and
time to first token, errors (any non-200, broken stream or short completion; must be 0), and
for corelm the largest batch the server stepped. With several runtimes the servers take turns
(one at a time, never two on the machine at once) and the ratio table compares them.

Bounded: at most --requests requests per run, none started after --duration seconds, and
the client count is capped at 64. The machine is shared: keep --threads small.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO.parent / "shared" / "data" / "models" / "stories260K" / "stories260K.gguf"
PROMPTS = [
    "Once upon a time",
    "Lily and Ben went to the park",
    "The little dog was sad because",
    "One day, a big red ball",
    "Tom had a toy car. He",
    "The sun was shining and the birds",
    "Mia wanted to bake a cake",
    "In the forest there was a tree",
]
MAX_CLIENTS = 64


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`python -m corelm.server MODEL ...` or `llama-server -m MODEL ...` on 127.0.0.1, ready."""

    def __init__(
        self, model: str, threads: int, parallel: int, queue: int, ctx: int, runtime: str = "corelm",
        llama_server: str = "",
    ) -> None:  # fmt: skip
        self.runtime = runtime
        self.log = tempfile.NamedTemporaryFile("w+", prefix=f"{runtime}-load-", suffix=".log")
        self.port = _free_port()
        if runtime == "corelm":
            cmd = [sys.executable, "-m", "corelm.server", model, "--host", "127.0.0.1", "--port", str(self.port)]
            cmd += ["--threads", str(threads), "--parallel", str(parallel), "--queue", str(queue), "--ctx", str(ctx)]
        else:  # llama.cpp: one KV pool of parallel * ctx cells shared by `parallel` slots, continuous batching
            cmd = [llama_server, "-m", model, "--host", "127.0.0.1", "--port", str(self.port), "-t", str(threads)]
            cmd += ["-tb", str(threads), "-np", str(parallel), "-c", str(parallel * ctx), "-cb", "--no-webui"]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 120
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = Path(self.log.name).read_text()[-3000:]
                self.stop()
                raise RuntimeError(f"the {runtime} server did not start (exit {self.proc.returncode}):\n{log}")
            time.sleep(0.1)

    def _ready(self) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            conn.request("GET", "/health")
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except OSError:
            return False

    def rss_mib(self) -> tuple[float, float]:
        """(VmRSS, VmHWM) of the server process in MiB: resident now, and its peak."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        kib = {k: int(v) for k, v in re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.M)}
        return kib["VmRSS"] / 1024, kib["VmHWM"] / 1024

    def metrics(self) -> dict[str, float]:
        """corelm's /metrics counters ({} for llama.cpp, whose metrics are named otherwise)."""
        if self.runtime != "corelm":
            return {}
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        return {k: float(v) for k, v in re.findall(r"^(corelm_\w+) (\S+)$", text, re.M)}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def one_request(port: int, prompt: str, max_tokens: int, timeout: float = 60.0) -> tuple[float, float, int]:
    """(latency, time to first token, completion tokens) of one streaming completion, on a
    connection of its own (servers differ in whether they keep one open after a stream)."""
    body = {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.8,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:200]!r}")
    ttft, tokens, done = None, None, False
    for line in r:
        if not line.startswith(b"data: "):
            continue
        if line.strip() == b"data: [DONE]":
            done = True
            continue
        ev = json.loads(line[6:])
        if ev.get("usage"):
            tokens = ev["usage"]["completion_tokens"]
        elif ttft is None and ev["choices"] and ev["choices"][0]["text"]:
            ttft = time.perf_counter() - t0
    latency = time.perf_counter() - t0
    conn.close()
    if not done or tokens != max_tokens:
        raise RuntimeError(f"incomplete stream: done={done}, tokens={tokens}")
    return latency, ttft or latency, tokens


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def run_load(server: Server, clients: int, requests: int, max_tokens: int, duration: float) -> dict:
    clients = min(clients, MAX_CLIENTS, requests)
    before = server.metrics()
    lock = threading.Lock()
    next_index = iter(range(requests))
    latencies: list[float] = []
    ttfts: list[float] = []
    errors: list[str] = []
    tokens = [0]
    t_start = time.perf_counter()

    def client() -> None:
        while True:
            with lock:
                i = next(next_index, None)
            if i is None or time.perf_counter() - t_start > duration:
                break
            try:
                lat, ttft, n = one_request(server.port, PROMPTS[i % len(PROMPTS)], max_tokens, max(60.0, duration * 2))
            except Exception as e:  # any failure of a valid request counts as an error
                with lock:
                    errors.append(str(e))
                continue
            with lock:
                latencies.append(lat)
                ttfts.append(ttft)
                tokens[0] += n

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t_start
    after = server.metrics()
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": len(errors),
        "error_samples": errors[:3],
        "wall_s": wall,
        "completion_tokens": tokens[0],
        "tokens_per_s": tokens[0] / wall if wall else 0.0,
        "latency_p50_s": percentile(latencies, 50),
        "latency_p99_s": percentile(latencies, 99),
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p99_s": percentile(ttfts, 99),
        # corelm's own counters: the largest batch, the steps, the share of the wall time in forward_batch
        "max_batch": after.get("corelm_batch_sequences_max", float("nan")),
        "forward_calls": after.get("corelm_forward_batch_calls_total", 0)
        - before.get("corelm_forward_batch_calls_total", 0),
        "model_busy": (after.get("corelm_busy_seconds_total", 0) - before.get("corelm_busy_seconds_total", 0)) / wall,
    }


def format_row(runtime: str, r: dict, one_client: float) -> str:
    return (
        f"| {runtime} | {r['clients']} | {r['requests']} | {r['tokens_per_s']:.0f} | "
        f"{r['tokens_per_s'] / one_client:.2f}x | {r['latency_p50_s']:.2f} / {r['latency_p99_s']:.2f} | "
        f"{r['ttft_p50_s'] * 1000:.0f} / {r['ttft_p99_s'] * 1000:.0f} | {r['errors']} |"
    )


HEADER = (
    "| runtime | clients | requests | tok/s (aggregate) | vs 1 client | latency p50 / p99 (s) | TTFT p50 / p99 (ms) "
    "| errors |\n|---|---:|---:|---:|---:|---:|---:|---:|"
)


def median_run(runs: list[dict]) -> dict:
    """The repetition with the median aggregate tokens/s (its latencies and errors as they were)."""
    ranked = sorted(runs, key=lambda r: r["tokens_per_s"])
    return ranked[len(ranked) // 2] | {"errors": sum(r["errors"] for r in runs)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("model", nargs="?", default=str(DEFAULT_MODEL), help="model file (default: stories260K)")
    p.add_argument("--clients", type=int, default=4, help=f"concurrent clients (default 4, at most {MAX_CLIENTS})")
    p.add_argument("--requests", type=int, default=32, help="requests per run (default 32; at least 2 per client)")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per request (default 64)")
    p.add_argument("--duration", type=float, default=60.0, help="start no request after this many seconds")
    p.add_argument("--parallel", type=int, default=None, help="server slots (default: the most clients)")
    p.add_argument("--threads", type=int, default=1, help="server threads (default 1: the machine is shared)")
    p.add_argument("--ctx", type=int, default=512, help="context per slot (default 512)")
    p.add_argument("--curve", action="store_true", help="runs with 1, 2, 4, 8, 16 clients")
    p.add_argument("--reps", type=int, default=1, help="repetitions per point (the median run is reported)")
    p.add_argument("--runtimes", nargs="+", default=["corelm"], choices=["corelm", "llama.cpp"])
    p.add_argument("--llama-server", default="", help="llama.cpp's llama-server binary (for --runtimes llama.cpp)")
    p.add_argument("--json", action="store_true", help="print JSON")
    args = p.parse_args(argv)
    if "llama.cpp" in args.runtimes and not Path(args.llama_server).is_file():
        p.error("--runtimes llama.cpp needs --llama-server PATH (llama.cpp's server binary)")
    counts = [1, 2, 4, 8, 16] if args.curve else [min(args.clients, MAX_CLIENTS)]
    parallel = args.parallel or max(counts)
    report: dict = {"model": Path(args.model).name, "threads": args.threads, "parallel": parallel,
                    "max_tokens": args.max_tokens, "runtimes": {}}  # fmt: skip
    for runtime in args.runtimes:  # one server at a time: never two on the machine at once
        server = Server(args.model, args.threads, parallel, MAX_CLIENTS, args.ctx, runtime, args.llama_server)
        try:
            one_request(server.port, PROMPTS[0], 8)  # warm up
            rss_before, _ = server.rss_mib()
            runs = []
            for n in counts:
                requests = max(args.requests, 2 * n)
                reps = [run_load(server, n, requests, args.max_tokens, args.duration) for _ in range(args.reps)]
                runs.append(median_run(reps))
            rss_after, rss_peak = server.rss_mib()
        finally:
            server.stop()
        report["runtimes"][runtime] = {"rss_before_mib": rss_before, "rss_after_mib": rss_after,
                                       "rss_peak_mib": rss_peak, "runs": runs}  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"{report['model']}: {parallel} slots, {args.threads} thread(s); {args.max_tokens} tokens per request, "
            f"streaming; median of {args.reps}"
        )
        print(HEADER)
        for runtime, r in report["runtimes"].items():
            for run in r["runs"]:
                print(format_row(runtime, run, r["runs"][0]["tokens_per_s"]))
        if len(report["runtimes"]) > 1:
            first, *others = report["runtimes"]
            for other in others:
                pairs = zip(report["runtimes"][first]["runs"], report["runtimes"][other]["runs"], strict=True)
                ratios = ", ".join(f"{a['clients']}: {a['tokens_per_s'] / b['tokens_per_s']:.2f}x" for a, b in pairs)
                print(f"{first} / {other} aggregate tokens/s by clients: {ratios}")
        for runtime, r in report["runtimes"].items():
            batch = max(run["max_batch"] for run in r["runs"])
            largest = "" if batch != batch else f"; largest batch {batch:.0f}"  # NaN: llama.cpp does not say
            rss = f"RSS {r['rss_before_mib']:.0f} MiB before, {r['rss_after_mib']:.0f} after"
            rss += f" (peak {r['rss_peak_mib']:.0f})"
            print(f"{runtime}: {rss}{largest}")
            for run in r["runs"]:
                for e in run["error_samples"]:
                    print(f"error ({runtime}, {run['clients']} clients): {e}", file=sys.stderr)
    return 1 if any(run["errors"] for r in report["runtimes"].values() for run in r["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
