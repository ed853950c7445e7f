"""The `corelm` command as a user runs it: a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from support import data_file, subprocess_kwargs


def corelm(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "corelm.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        **subprocess_kwargs(),
    )


def test_help_for_every_command():
    for cmd in ([], ["info"], ["run"], ["chat"], ["bench"], ["roofline"]):
        r = corelm(*cmd, "--help")
        assert r.returncode == 0 and "usage:" in r.stdout, (cmd, r.stderr)


def test_info_json():
    r = corelm("info", "--json")
    info = json.loads(r.stdout)
    assert info["isa"] in info["supported_isas"] and "matmul_q4_0" in info["kernels"]


def test_run_prints_text_and_speed():
    model = str(data_file("models", "stories260K", "stories260K.gguf"))
    r = corelm("run", model, "-p", "Once upon a time", "-n", "24", "--temp", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Once upon a time, there was a little girl named Lily")
    assert "tok/s" in r.stderr


def test_run_bad_model_is_one_clear_line(tmp_path):
    r = corelm("run", str(tmp_path / "missing.gguf"), "-p", "hi")
    assert (
        r.returncode == 1 and r.stderr.strip() == f"corelm: error: {tmp_path / 'missing.gguf'}: no such file or folder"
    )


def test_chat_reads_stdin():
    model = str(data_file("models", "stories260K", "stories260K.gguf"))
    r = subprocess.run(
        [sys.executable, "-m", "corelm.cli", "chat", model, "-n", "12", "--temp", "0"],
        input="Hello\n/exit\n",
        capture_output=True,
        text=True,
        timeout=120,
        **subprocess_kwargs(),
    )
    assert r.returncode == 0 and r.stdout.strip() and "tok/s" in r.stderr


def test_bench_model_json():
    model = str(data_file("models", "stories260K", "stories260K.gguf"))
    r = corelm("bench", model, "-p", "32", "-n", "8", "-t", "1,2", "-r", "2", "--json")
    report = json.loads(r.stdout)
    assert {(x["test"], x["threads"]) for x in report["results"]} == {("pp32", 1), ("tg8", 1), ("pp32", 2), ("tg8", 2)}
    assert all(x["tokens_per_s"] > 0 for x in report["results"]) and report["peak_rss_mib"] > 0


@pytest.mark.slow
def test_roofline_with_model_and_png(tmp_path):
    model = str(data_file("models", "stories260K", "stories260K.gguf"))
    png = tmp_path / "roof.png"
    r = corelm("roofline", model, "-t", "2", "-p", "32", "-n", "4", "--png", str(png), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    ops = {row["op"] for row in report["phases"]["decode"]}
    assert {"matmul F32", "attention", "norm", "rope", "sampling", "outside native code"} <= ops
    assert abs(sum(row["share"] for row in report["phases"]["decode"]) - 1) < 0.05
    assert png.stat().st_size > 10_000
