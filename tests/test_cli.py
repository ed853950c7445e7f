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
    assert {"attention", "norm", "rope", "sampling", "outside native code"} <= ops
    assert any(op.startswith("matmul F32") for op in ops)  # F32, or F32_X16 where it is packed
    assert abs(sum(row["share"] for row in report["phases"]["decode"]) - 1) < 0.05
    assert png.stat().st_size > 10_000


# ---- corelm chat: a real subprocess reading a pipe (or a terminal) ----


def chat(*args: str, text: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "corelm.cli", "chat", *args],
        input=text,
        capture_output=True,
        text=True,
        timeout=timeout,
        **subprocess_kwargs(),
    )


def test_chat_outlives_its_context():
    # The default model has no chat template and a 256-token context: replies end at a blank line
    # (or fill the context), and the oldest turns make way for new ones, said on stderr.
    r = chat("--temp", "0", text="Hello there\nHow are you?\nTell me more\n")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("[prompt ") == 3, r.stderr
    assert "oldest messages to fit the 256-token context; -c sets a larger one" in r.stderr
    assert "ctx=" not in r.stderr and "Traceback" not in r.stderr


def test_chat_commands_give_feedback_and_never_reach_the_model(tmp_path):
    model = str(data_file("models", "stories260K", "stories260K.gguf"))
    saved = tmp_path / "chat.json"
    lines = [
        "/help", "/system Tell stories.", "/system", "/bogus", "Hello", f"/save {saved}", "/reset",
        f"/load {saved}", f"/load {tmp_path / 'missing.json'}", "//slash", "/exit", "never sent",
    ]  # fmt: skip
    r = chat(model, "-n", "6", "--temp", "0", text="\n".join(lines) + "\n")
    assert r.returncode == 0, r.stderr
    err = r.stderr
    assert "/save FILE" in err and "/load FILE" in err and "/exit" in err  # /help
    assert "system message set" in err and "system message: 'Tell stories.'" in err
    assert "unknown command /bogus" in err
    assert f"saved 3 messages to {saved}" in err and f"loaded 3 messages from {saved}" in err
    assert "conversation cleared: 2 messages forgotten (the system message stays)" in err
    assert "cannot load:" in err and "missing.json" in err
    assert err.count("[prompt ") == 2  # "Hello" and "/slash": the only messages the model saw
    messages = json.loads(saved.read_text())
    assert [m["role"] for m in messages] == ["system", "user", "assistant"] and messages[1]["content"] == "Hello"


def test_ctrl_c_stops_a_reply_and_the_chat_goes_on():
    import signal

    p = subprocess.Popen(
        [sys.executable, "-m", "corelm.cli", "chat", "--temp", "0", "-n", "100000"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **subprocess_kwargs(),
    )
    try:
        p.stdin.write("Hello\n")  # greedy, this reply runs to the end of the context (~6 s)
        p.stdin.flush()
        assert p.stdout.read(1)  # it is generating
        p.send_signal(signal.SIGINT)
        out, err = p.communicate("Hi again\n/exit\n", timeout=120)
    finally:
        p.kill()
    assert p.returncode == 0, err
    assert "[reply stopped]" in err and err.count("[prompt ") == 1, err  # the second message got its reply


def test_chat_in_a_terminal_has_line_editing_and_history():
    import os
    import pty
    import select
    import time

    model = str(data_file("models", "stories260K", "stories260K.gguf"))
    master, slave = pty.openpty()
    kwargs = subprocess_kwargs()
    kwargs["env"]["TERM"] = "xterm"
    p = subprocess.Popen(
        [sys.executable, "-m", "corelm.cli", "chat", model], stdin=slave, stdout=slave, stderr=slave, **kwargs
    )
    os.close(slave)
    screen = b""

    def read_until(text: bytes, timeout: float = 60) -> None:
        nonlocal screen
        end = time.monotonic() + timeout
        while text not in screen and time.monotonic() < end:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    screen += os.read(master, 4096)
                except OSError:
                    break
        assert text in screen, screen.decode(errors="replace")

    try:
        read_until(b"/help lists commands")
        os.write(master, b"/system abc\r")
        read_until(b"system message set (3 characters)")
        os.write(master, b"\x1b[Adef\r")  # up-arrow brings back the last line; typing appends to it
        read_until(b"system message set (6 characters)")
        os.write(master, b"/system\r")
        read_until(b"system message: 'abcdef'")
        os.write(master, b"/exit\r")
        assert p.wait(timeout=30) == 0
    finally:
        p.kill()
        os.close(master)
