"""Write corelm/_C.pyi, the typed stub of the native module, from the signatures pybind11 puts
first in each function's docstring (as safetensors' stub.py does for its module).

    python scripts/make_c_stub.py           # rewrite corelm/_C.pyi
    python scripts/make_c_stub.py --check   # exit 1 when the stub differs from the built module

tests/test_kernels.py checks that the stub names exactly what the module has.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import textwrap
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "corelm" / "_C.pyi"

# pybind11's spelling -> the stub's
_TYPES = [
    (r"typing\.SupportsInt \| typing\.SupportsIndex", "int"),
    (r"typing\.SupportsFloat \| typing\.SupportsIndex", "float"),
    (r"numpy\.typing\.NDArray\[numpy\.(\w+)\]", r"npt.NDArray[np.\1]"),
    (r"numpy\.ndarray", "np.ndarray"),
    (r"-> dict\b", "-> dict[str, Any]"),
    (r"corelm\._C\.", ""),
    (r"collections\.abc\.Sequence", "Sequence"),
    (r": list\b", ": list[Any]"),
]
# Arguments pybind11 types as `object`: optional arrays, and the lengths of a batch's sequences.
_OBJECTS = {
    "seq_lengths": "Sequence[int] | np.ndarray | None",
    "hook": "Callable[[int, np.ndarray | None, np.ndarray, float], None] | None",
}


def stub_of(name: str, doc: str, indent: str = "") -> str:
    """A function's stub (a method's, indented, when indent is given)."""
    signature, _, rest = doc.strip().partition("\n")
    if not signature.startswith(f"{name}("):
        raise SystemExit(f"_C.{name}: no pybind11 signature in its docstring")
    signature = re.sub(r"^(\w+)\(self: [\w.]+", r"\1(self", signature)
    for pattern, repl in _TYPES:
        signature = re.sub(pattern, repl, signature)
    signature = re.sub(
        r"(\w+): object = None", lambda m: f"{m[1]}: {_OBJECTS.get(m[1], 'np.ndarray | None')} = None", signature
    )
    pad = indent + "    "
    text = textwrap.fill(" ".join(rest.split()), 112, initial_indent=pad, subsequent_indent=pad).strip()
    body = f'\n{pad}"""{text}"""\n' if text else " ...\n"
    return f"{indent}def {signature}:{body}"


def class_stub(name: str, cls: type) -> str:
    methods = [m for m in ("__init__", *sorted(vars(cls))) if m == "__init__" or not m.startswith("_")]
    doc = " ".join((cls.__doc__ or "").split())
    lines = [f"class {name}:", f'    """{doc}"""', ""]
    lines += [stub_of(m, getattr(cls, m).__doc__ or "", indent="    ") for m in dict.fromkeys(methods)]
    return "\n".join(lines)


def render() -> str:
    from corelm import _C

    names = sorted(n for n in dir(_C) if not n.startswith("__"))
    parts = [
        '"""Typed stub of corelm._C, the native core (pybind11). Written by scripts/make_c_stub.py from the',
        'built module: rerun it after changing the bindings."""',
        "",
        "from collections.abc import Callable, Sequence",
        "from typing import Any",
        "",
        "import numpy as np",
        "import numpy.typing as npt",
        "",
    ]
    for name in names:
        obj = getattr(_C, name)
        parts.append(class_stub(name, obj) if isinstance(obj, type) else stub_of(name, obj.__doc__ or ""))
    text = "\n".join(parts).rstrip() + "\n"
    # Formatted as the repository is (ruff, from the test extra).
    ruff = [sys.executable, "-m", "ruff", "format", "--stdin-filename", str(OUT), "-"]
    return subprocess.run(ruff, input=text, capture_output=True, text=True, check=True).stdout


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="compare instead of writing")
    args = p.parse_args()
    text = render()
    if args.check:
        if OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} differs from the built module: run python scripts/make_c_stub.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
