"""Shared test helpers: where the real data files are."""

import os
import tempfile
from pathlib import Path

import pytest

DATA = Path(os.environ.get("CORELM_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def data_file(*parts: str) -> Path:
    """A file in ../shared/data, or skip the test with the reason."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"test data not found: {path} (set CORELM_DATA to the shared data folder)")
    return path


def subprocess_kwargs() -> dict:
    """cwd and env for a child Python that must import the same corelm as the tests: installed or
    built in place. The cwd is neutral so a source checkout there cannot shadow the installed one."""
    import corelm

    env = dict(os.environ)
    root = str(Path(corelm.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return {"cwd": tempfile.gettempdir(), "env": env}


def stories260k() -> Path:
    """The real tiny model (llama2.c's stories260K) in ../shared/data."""
    return data_file("models", "stories260K", "stories260K.gguf")


def run_cli(*argv: str) -> int:
    """`corelm ARGV...` in this process (the real cli.main)."""
    from corelm import cli

    return cli.main(list(argv))
