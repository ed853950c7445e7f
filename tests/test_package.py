"""What the package ships besides code: the native module's typed stub (_C.pyi) and py.typed."""

from __future__ import annotations

import ast
from pathlib import Path

import corelm
from corelm import _C

PACKAGE = Path(corelm.__file__).resolve().parent


def test_stub_names_what_the_native_module_has():
    tree = ast.parse((PACKAGE / "_C.pyi").read_text(encoding="utf-8"))
    stubbed = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    native = {name for name in dir(_C) if not name.startswith("__")}
    assert stubbed == native, (
        f"missing from _C.pyi: {sorted(native - stubbed)}; not in _C: {sorted(stubbed - native)} "
        "(python scripts/make_c_stub.py rewrites the stub)"
    )


def test_the_package_says_it_is_typed():
    assert (PACKAGE / "py.typed").is_file()
