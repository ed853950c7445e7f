"""hf://ORG/REPO[/FILE] model names (corelm/hub.py) against a real HTTP endpoint: a small
http.server in this file answers the Hub's file API (resolve, model info, tree) for one
repository, and `corelm run` in a child process (HF_ENDPOINT pointed at it, HF_HOME at a temporary
cache) downloads through huggingface_hub, then runs from the cache offline."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from support import subprocess_kwargs

from corelm import hub
from corelm.llm import DEFAULT_MODEL

pytest.importorskip("huggingface_hub")

REPO = "corelm-test/shakespeare"
SHA = "0123456789abcdef0123456789abcdef01234567"


class Hub(ThreadingHTTPServer):
    """One repository's files over the Hub's HTTP API; counts the bytes of file content sent."""

    daemon_threads = True

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.files = files
        self.sent = 0
        self.requests: list[str] = []
        self.cut = 0  # > 0: the next file download stops after this many bytes (the connection drops)
        self.ranges: list[int] = []  # the start of each ranged download
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class HubHandler(BaseHTTPRequestHandler):
    server: Hub

    def log_message(self, *args) -> None:
        pass

    def _json(self, obj) -> None:
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _missing(self, code: str) -> None:
        self.send_response(404)
        self.send_header("X-Error-Code", code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self) -> None:
        self.do_GET(head=True)

    def do_GET(self, head: bool = False) -> None:
        path = self.path.split("?")[0]
        self.server.requests.append(f"{self.command} {path}")
        files = self.server.files
        if m := re.fullmatch(rf"/api/models/{REPO}(?:/revision/[^/]+)?", path):
            self._json({"id": REPO, "sha": SHA, "siblings": [{"rfilename": f} for f in files]})
        elif m := re.fullmatch(rf"/api/models/{REPO}/tree/[^/]+/?(.*)", path):
            self._json(
                [
                    {"type": "file", "path": f, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                    for f, b in files.items()
                ]
            )
        elif m := re.fullmatch(rf"/{REPO}/resolve/[^/]+/(.+)", path):
            data = files.get(m.group(1))
            if data is None:
                return self._missing("EntryNotFound")
            start = 0
            if r := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "")):
                start = int(r.group(1))
                self.server.ranges.append(start)
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", SHA)
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Content-Length", str(len(data) - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if not head:
                end = len(data)
                if self.server.cut:
                    end, self.server.cut = start + self.server.cut, 0
                    self.close_connection = True
                self.wfile.write(data[start:end])
                self.server.sent += end - start
        elif path.startswith("/api/models/") or "/resolve/" in path:
            self._missing("RepoNotFound")
        else:
            self._missing("EntryNotFound")


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "hf-home"


def corelm(args: list[str], cache: Path, endpoint: str, **env: str) -> subprocess.CompletedProcess:
    kw = subprocess_kwargs()
    kw["env"] = {**kw["env"], "HF_HOME": str(cache), "HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_TELEMETRY": "1", **env}
    kw["env"].pop("HF_HUB_OFFLINE", None)
    kw["env"].update(env)
    return subprocess.run([sys.executable, "-m", "corelm", *args], capture_output=True, text=True, timeout=120, **kw)


RUN = ["-p", "ROMEO:", "-n", "8", "--temp", "0", "-t", "1"]


def test_parse_names():
    assert hub.parse("hf://a/b") == ("a/b", None, None)
    assert hub.parse("hf://a/b/sub/x.gguf@v1") == ("a/b", "sub/x.gguf", "v1")
    for bad in ("hf://a", "hf://", "hf://a/b@", "hf://a b/c"):
        with pytest.raises(ValueError, match="hf://"):
            hub.parse(bad)
    assert hub.resolve("model.gguf") == Path("model.gguf")


def test_choose_file():
    assert hub._choose("n", ["README.md", "m.Q8_0.gguf"]) == "m.Q8_0.gguf"
    assert hub._choose("n", ["m.Q8_0.gguf", "m.Q4_K_M.gguf"]) == "m.Q4_K_M.gguf"
    assert hub._choose("n", ["config.json", "model.safetensors", "tokenizer.json"]) is None
    with pytest.raises(ValueError, match="2 GGUF files; name one"):
        hub._choose("n", ["a.Q8_0.gguf", "a.Q5_0.gguf"])
    with pytest.raises(ValueError, match="no .gguf file"):
        hub._choose("n", ["README.md"])


def test_download_then_offline(cache):
    data = DEFAULT_MODEL.read_bytes()
    local = corelm(["run", str(DEFAULT_MODEL), *RUN], cache, "http://127.0.0.1:9")
    assert local.returncode == 0, local.stderr
    server = Hub({"default.gguf": data, "README.md": b"# test\n"})
    try:
        got = corelm(["run", f"hf://{REPO}/default.gguf", *RUN], cache, server.url)
        assert got.returncode == 0, got.stderr
        assert got.stdout == local.stdout
        assert server.sent == len(data)
        blobs = list((cache / "hub").rglob("default.gguf"))
        assert blobs and blobs[0].read_bytes() == data
        # again, online: from the cache (huggingface_hub checks the ETag; no content is sent)
        again = corelm(["run", f"hf://{REPO}", *RUN], cache, server.url)  # no file: the repo's only GGUF
        assert again.returncode == 0, again.stderr
        assert again.stdout == local.stdout and server.sent == len(data)
    finally:
        server.close()
    # the Hub is gone: offline by the variable, and unreachable without it
    for env in ({"HF_HUB_OFFLINE": "1"}, {}):
        for name in (f"hf://{REPO}/default.gguf", f"hf://{REPO}"):
            off = corelm(["run", name, *RUN], cache, server.url, **env)
            assert off.returncode == 0, (env, name, off.stderr)
            assert off.stdout == local.stdout


def test_not_cached_and_unreachable_is_one_line(cache):
    server = Hub({})
    url = server.url
    server.close()  # nothing listens there now
    for env in ({"HF_HUB_OFFLINE": "1"}, {}):
        for name in (f"hf://{REPO}/default.gguf", f"hf://{REPO}"):
            r = corelm(["run", name, *RUN], cache, url, **env)
            assert r.returncode == 1
            errors = [line for line in r.stderr.splitlines() if line.startswith("corelm: error:")]
            assert len(errors) == 1 and name in errors[0] and "Traceback" not in r.stderr, r.stderr
            assert "not in the local cache" in errors[0]


def test_missing_repo_and_file(cache):
    server = Hub({"default.gguf": b"GGUF"})
    try:
        r = corelm(["run", f"hf://{REPO}/nope.gguf", *RUN], cache, server.url)
        assert r.returncode == 1 and "has no file nope.gguf" in r.stderr and "Traceback" not in r.stderr
        r = corelm(["run", "hf://someone/else", *RUN], cache, server.url)
        assert r.returncode == 1 and "no repository someone/else" in r.stderr and "Traceback" not in r.stderr
    finally:
        server.close()


def test_resume_after_a_dropped_connection(cache):
    """The connection drops 12 MiB into the file: the download goes on from what was written (a
    Range request for the rest: huggingface_hub writes 10 MiB chunks), not from the start. The
    model is padded past that size (bytes after the tensors are never read)."""
    data = DEFAULT_MODEL.read_bytes() + bytes(16 << 20)
    server = Hub({"default.gguf": data})
    server.cut = 12 << 20
    try:
        r = corelm(["run", f"hf://{REPO}/default.gguf", *RUN], cache, server.url)
        assert r.returncode == 0, r.stderr
        (start,) = server.ranges
        assert 0 < start <= 12 << 20 and server.sent == (12 << 20) + len(data) - start
        (blob,) = (cache / "hub").rglob("blobs/*")
        assert blob.read_bytes() == data
    finally:
        server.close()


def test_progress_bar_on_download(cache):
    """huggingface_hub's bar (on a terminal; TQDM_POSITION=-1 forces it here, without one)."""
    server = Hub({"default.gguf": DEFAULT_MODEL.read_bytes()})
    try:
        r = corelm(["run", f"hf://{REPO}/default.gguf", *RUN], cache, server.url, TQDM_POSITION="-1")
        assert r.returncode == 0
        assert "default.gguf" in r.stderr and "100%" in r.stderr, r.stderr
    finally:
        server.close()
