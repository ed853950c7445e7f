"""Load test of `corelm serve` on loopback: N concurrent clients send M streaming requests.

    python -m benchmarks.load_test [MODEL] --clients 4 --requests 32 --max-tokens 64
    python -m benchmarks.load_test [MODEL] --curve          # 1, 2, 4, 8 clients: the tokens/s curve

Starts the server itself (`python -m corelm.server`, 127.0.0.1, a free port), so it can read
the server's resident memory (VmRSS in /proc/PID/status) before and after the load. Every
request is a streaming /v1/completions call with ignore_eos, so each one makes exactly
--max-tokens tokens. Reports the aggregate tokens/s (all completion tokens over the wall
time of the run), p50 / p99 request latency and time to first token, errors (any non-200,
broken stream or short completion; must be 0), and the largest batch the server stepped.

Bounded: at most --requests requests per run, none started after --duration seconds, and
the client count is capped at 64. The machine is shared: keep --threads small.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
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


class Server:
    """`python -m corelm.server MODEL --port 0 ...` on 127.0.0.1."""

    def __init__(self, model: str, threads: int, parallel: int, queue: int, ctx: int) -> None:
        self.log = tempfile.NamedTemporaryFile("w+", prefix="corelm-load-", suffix=".log")
        cmd = [sys.executable, "-m", "corelm.server", model, "--host", "127.0.0.1", "--port", "0"]
        cmd += ["--threads", str(threads), "--parallel", str(parallel), "--queue", str(queue), "--ctx", str(ctx)]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 60
        while not (m := re.search(r"http://127\.0\.0\.1:(\d+)", Path(self.log.name).read_text())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the server did not start:\n" + Path(self.log.name).read_text())
            time.sleep(0.05)
        self.port = int(m.group(1))

    def rss_mib(self) -> tuple[float, float]:
        """(VmRSS, VmHWM) of the server process in MiB: resident now, and its peak."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        kib = {k: int(v) for k, v in re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.M)}
        return kib["VmRSS"] / 1024, kib["VmHWM"] / 1024

    def metrics(self) -> dict[str, float]:
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


def one_request(conn: http.client.HTTPConnection, prompt: str, max_tokens: int) -> tuple[float, float, int]:
    """(latency, time to first token, completion tokens) of one streaming completion."""
    body = {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.8,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    t0 = time.perf_counter()
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
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=max(60.0, duration * 2))
        while True:
            with lock:
                i = next(next_index, None)
            if i is None or time.perf_counter() - t_start > duration:
                break
            try:
                lat, ttft, n = one_request(conn, PROMPTS[i % len(PROMPTS)], max_tokens)
            except Exception as e:  # any failure of a valid request counts as an error
                with lock:
                    errors.append(str(e))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
                continue
            with lock:
                latencies.append(lat)
                ttfts.append(ttft)
                tokens[0] += n
        conn.close()

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
        "max_batch": after["corelm_batch_sequences_max"],
        "forward_calls": after["corelm_forward_batch_calls_total"] - before["corelm_forward_batch_calls_total"],
        # the share of the wall time the scheduler spent inside forward_batch
        "model_busy": (after["corelm_busy_seconds_total"] - before["corelm_busy_seconds_total"]) / wall,
    }


def format_row(r: dict) -> str:
    return (
        f"| {r['clients']:>7} | {r['requests']:>8} | {r['tokens_per_s']:>8.0f} | {r['latency_p50_s']:>7.2f} | "
        f"{r['latency_p99_s']:>7.2f} | {r['ttft_p50_s'] * 1000:>8.0f} | {r['forward_calls']:>7.0f} | "
        f"{r['model_busy'] * 100:>5.0f}% | {r['errors']:>6} |"
    )


HEADER = (
    "| clients | requests |  tok/s   | p50 (s) | p99 (s) | TTFT p50 (ms) | steps | model busy | errors |\n"
    "|--------:|---------:|---------:|--------:|--------:|---------:|--------:|------:|-------:|"
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("model", nargs="?", default=str(DEFAULT_MODEL), help="model file (default: stories260K)")
    p.add_argument("--clients", type=int, default=4, help=f"concurrent clients (default 4, at most {MAX_CLIENTS})")
    p.add_argument("--requests", type=int, default=32, help="requests per run (default 32)")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per request (default 64)")
    p.add_argument("--duration", type=float, default=20.0, help="start no request after this many seconds")
    p.add_argument("--parallel", type=int, default=None, help="server slots (default: the most clients)")
    p.add_argument("--threads", type=int, default=1, help="server threads (default 1: the machine is shared)")
    p.add_argument("--ctx", type=int, default=512, help="context per slot (default 512)")
    p.add_argument("--curve", action="store_true", help="runs with 1, 2, 4, 8 clients (--requests per client count)")
    p.add_argument("--json", action="store_true", help="print JSON")
    args = p.parse_args(argv)
    counts = [1, 2, 4, 8] if args.curve else [min(args.clients, MAX_CLIENTS)]
    parallel = args.parallel or max(counts)
    server = Server(args.model, args.threads, parallel, queue=MAX_CLIENTS, ctx=args.ctx)
    try:
        one_request(http.client.HTTPConnection("127.0.0.1", server.port, timeout=60), PROMPTS[0], 8)  # warm up
        rss_before, _ = server.rss_mib()
        runs = [run_load(server, n, args.requests, args.max_tokens, args.duration) for n in counts]
        rss_after, rss_peak = server.rss_mib()
    finally:
        server.stop()
    report = {
        "model": Path(args.model).name,
        "server_threads": args.threads,
        "parallel": parallel,
        "max_tokens": args.max_tokens,
        "rss_before_mib": rss_before,
        "rss_after_mib": rss_after,
        "rss_peak_mib": rss_peak,
        "runs": runs,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"{report['model']}: server with {parallel} slots, {args.threads} thread(s); "
            f"{args.max_tokens} tokens per request, streaming"
        )
        print(HEADER)
        for r in runs:
            print(format_row(r))
        print(f"largest batch stepped: {max(r['max_batch'] for r in runs):.0f} sequences")
        print(f"server RSS: {rss_before:.1f} MiB before, {rss_after:.1f} MiB after (peak {rss_peak:.1f} MiB)")
        for r in runs:
            for e in r["error_samples"]:
                print(f"error ({r['clients']} clients): {e}", file=sys.stderr)
    return 1 if any(r["errors"] for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
