"""The `corelm` command as a user runs it: a real subprocess."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

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
    assert info["decode_tuning"]["sparse_groups"] in (1, 4) and info["decode_tuning"]["prefetch_bytes"] >= 0
    text = corelm("info").stdout
    assert "decode:   one-row GEMVs" in text and f"streams {info['decode_tuning']['sparse_groups']} row group" in text
    assert info["huge_pages"] in ("always", "madvise", "never", "unknown")
    assert ("2 MB pages" if info["huge_pages"] in ("always", "madvise") else "4 KB pages") in text


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


def test_bench_says_each_run():
    """Long measurements say each step on stderr: `bench -r N` its warm-up and runs 1/N..N/N."""
    model = str(data_file("models", "stories260K", "stories260K.gguf"))
    r = corelm("bench", model, "-p", "16", "-n", "4", "-t", "1", "-r", "2")
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("... ")]
    assert lines == [
        f"... {test}, 1 thread(s), {run}" for test in ("pp16", "tg4") for run in ("warm-up run", "run 1/2", "run 2/2")
    ]
    quiet = corelm("bench", model, "-p", "16", "-n", "4", "-t", "1", "-r", "1", "--json")
    assert "..." not in quiet.stderr


def test_kernel_bench_and_roofline_number_their_steps(monkeypatch):
    from corelm.analysis import roofline as rl
    from corelm.analysis.kernel_bench import bench_kernels

    said: list[str] = []
    bench_kernels([1], reps=1, gemv_shape=(64, 256), gemm_shape=(8, 64, 256), progress=said.append)
    n = len(said)
    assert n > 3 and said == [s for s in said if s.startswith("[")]
    assert [s.split("]")[0] for s in said] == [f"[{i}/{n}" for i in range(1, n + 1)]
    # roofline's steps (the measurements themselves stubbed: this checks the counting)
    monkeypatch.setattr(rl, "machine_ceilings", lambda threads, progress: [progress(x) for x in "ab"] and {})
    said.clear()
    rl.roofline(None, 1, progress=said.append)
    assert said == [f"[1/{len(rl.timed_isas()) + 1}] a", f"[2/{len(rl.timed_isas()) + 1}] b"]


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


# ---- flags: every number checked by name before a model loads ----


@pytest.mark.parametrize(
    "args, option",
    [
        (["run", "-p", "hi", "-t", "0"], "-t/--threads: expected 1 to"),
        (["run", "-p", "hi", "-t", "999"], "-t/--threads: expected 1 to"),
        (["run", "-p", "hi", "-c", "0"], "-c/--ctx: expected a positive integer"),
        (["run", "-p", "hi", "--top-k", "-3"], "--top-k: expected an integer >= 0"),
        (["run", "-p", "hi", "--temp", "-1"], "--temp: expected a number >= 0"),
        (["run", "-p", "hi", "--top-p", "2"], "--top-p: expected a number above 0 and at most 1"),
        (["run", "-p", "hi", "--min-p", "1.5"], "--min-p: expected a number from 0 to 1"),
        (["run", "-p", "hi", "-n", "-1"], "-n/--n-predict: expected an integer >= 0"),
        (["run", "-p", "hi", "--seed", "-2"], "--seed: expected a seed >= 0, or -1 for a random one"),
        (["chat", "--repeat-penalty", "0"], "--repeat-penalty: expected a positive number"),
        (["bench", "m.gguf", "-r", "0"], "-r/--reps: expected a positive integer"),
        (["bench", "m.gguf", "-t", "1,0"], "-t/--threads: expected 1 to"),
        (["serve", "--port", "80000"], "--port: expected a port from 0 to 65535"),
        (["serve", "-np", "0"], "-np/--parallel: expected a positive integer"),
        (["roofline", "-t", "0"], "-t/--threads: expected 1 to"),
    ],
)
def test_bad_numbers_are_refused_by_name(args, option):
    from corelm import cli

    with pytest.raises(SystemExit) as e, contextlib.redirect_stderr(io.StringIO()) as err:
        cli.build_parser().parse_args(args)
    assert e.value.code == 2 and option in err.getvalue(), err.getvalue()


def test_a_bad_number_is_one_line_before_the_model_loads():
    r = corelm("run", "missing.gguf", "-p", "hi", "--top-p", "2")
    assert r.returncode == 2 and r.stdout == ""
    assert (
        r.stderr.splitlines()[-1]
        == "corelm run: error: argument --top-p: expected a number above 0 and at most 1, got '2'"
    )


def test_flag_values():
    from corelm import argtypes, cli

    assert argtypes.seed("-1") is None and argtypes.seed("7") == 7
    assert argtypes.escaped(r"a\nb\tc\\n\x41\u00e9\q") == "a\nb\tc\\nA\u00e9\\q"
    parse = cli.build_parser().parse_args
    assert parse(["run", "-p", "x", "-vv"]).verbose == 2 and parse(["-v", "run", "-p", "x"]).verbose == 1
    assert parse(["serve", "-v"]).verbose == 1 and parse(["info"]).verbose == 0
    assert parse(["run", "-p", "x", "--stop", r"\n\n", "--stop", "User:"]).stop == ["\n\n", "User:"]
    assert argtypes.too_many_threads(argtypes.cpus()) is None and "slower" in argtypes.too_many_threads(99)


def test_version():
    import corelm as package

    r = corelm("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"corelm {package.__version__}"


def test_serve_names_a_port_in_use():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = corelm("serve", "--port", str(port), timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip() == (
        f"corelm: error: cannot listen on 127.0.0.1 port {port}: the port is in use (another server?): "
        "--port picks another, --port 0 a free one"
    )


def test_run_reads_its_prompt_from_a_file_or_stdin_and_prints_json(tmp_path):
    model = str(data_file("models", "stories260K", "stories260K.gguf"))
    (tmp_path / "prompt.txt").write_text("Once upon a time\n")
    by_arg = corelm("run", model, "-p", "Once upon a time", "-n", "12", "--temp", "0", "--json")
    by_file = corelm("run", model, "-f", str(tmp_path / "prompt.txt"), "-n", "12", "--temp", "0", "--json")
    by_stdin = subprocess.run(
        [sys.executable, "-m", "corelm.cli", "run", model, "-p", "-", "-n", "12", "--temp", "0", "--json"],
        input="Once upon a time\n", capture_output=True, text=True, timeout=120, **subprocess_kwargs(),
    )  # fmt: skip
    results = [json.loads(r.stdout) for r in (by_arg, by_file, by_stdin)]
    assert results[0]["text"].startswith(", there was a little girl named Lily")
    assert all(x["text"] == results[0]["text"] and x["prompt"] == "Once upon a time" for x in results)
    x = results[0]
    assert x["usage"] == {"prompt_tokens": 5, "completion_tokens": 12} and x["finish_reason"] == "length"
    assert x["timings"]["decode_tokens_per_s"] > 0 and x["threads"] >= 1 and x["isa"]
    r = corelm("run", model, "-p", "x", "-f", str(tmp_path / "prompt.txt"))
    assert r.returncode == 2 and "not allowed with argument" in r.stderr


def test_run_stop_escapes_and_context_warnings():
    # The default model writes verse: greedy, its first line ends at "\n" (typed as backslash-n).
    r = corelm("run", "-p", "To be", "-n", "60", "--temp", "0", "--stop", r"\n")
    assert r.returncode == 0 and r.stdout.count("\n") == 1 and "stop: stop" in r.stderr, r.stderr
    # -c beyond the trained 256 tokens, and -n beyond the room the context has, are said.
    r = corelm("run", "-p", "To be", "-n", "600", "-c", "512", "--temp", "0")
    assert r.returncode == 0
    assert "a context of 512 tokens is beyond the 256 this model was trained on" in r.stderr
    assert "max_tokens=600: a prompt of 3 tokens leaves room for 510 in the 512-token context" in r.stderr
    r = corelm("run", "-p", "To be " * 200, "-n", "4")
    assert r.returncode == 1 and "the context holds 256 (a larger one: -c N on the command line" in r.stderr


def test_import_from_an_unbuilt_checkout_says_what_to_run():
    root = Path(__file__).resolve().parents[1]
    if list((root / "corelm").glob("_C.*.so")) or list((root / "corelm").glob("_C.*.pyd")):
        pytest.skip("this checkout is built in place")
    # -S: no site-packages, so no installed (or editable) corelm can stand in for the checkout.
    r = subprocess.run([sys.executable, "-S", "-c", "import corelm"], cwd=root, capture_output=True, text=True)
    assert r.returncode == 1
    assert "corelm's native module _C is not built in" in r.stderr and "pip install -e ." in r.stderr
