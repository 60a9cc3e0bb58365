"""Small units: no function over 80 lines in ``emu/``, ``qtest/`` or ``csrc/`` (issue 14's bar).

Python functions are measured by the AST (decorators excluded, docstring included); C functions
from the line of their name to the closing brace at column 0, as the C files are laid out.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 80
C_FUNCTION = re.compile(r"^(?:[A-Za-z_][\w \t*]*?[\s*])?(\w+)\s*\(")


def python_functions(path: Path) -> list[tuple[str, int, int]]:
    """(qualified name, first line, length) of each function and method."""
    out = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert child.end_lineno is not None
                out.append((prefix + child.name, child.lineno, child.end_lineno - child.lineno + 1))
                walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")
            else:
                walk(child, prefix)

    walk(ast.parse(path.read_text(), str(path)), "")
    return out


def c_functions(text: str) -> list[tuple[str, int, int]]:
    """(name, first line, length) of each function definition: a name line, then a body from a
    ``{`` to a ``}`` both at column 0."""
    out, name, start, body_open = [], None, 0, False
    for number, line in enumerate(text.splitlines(), 1):
        if not body_open:
            match = C_FUNCTION.match(line)
            if match and not line.rstrip().endswith(";") and not line.startswith(("typedef", "static const")):
                name, start = match.group(1), number
            elif line.startswith("{") and name is not None:
                body_open = True
            elif line.strip().endswith(";"):
                name = None
        elif line.startswith("}"):
            out.append((name, start, number - start + 1))
            name, body_open = None, False
    return out


def test_the_c_reader_measures_functions() -> None:
    text = ("static int\nadd(int a,\n    int b)\n{\n    return a + b;\n}\n"
            "int prototype(void);\n"
            "uint64_t mc_long(const char *s)\n{\n" + "    s++;\n" * 90 + "}\n")
    assert c_functions(text) == [("add", 2, 5), ("mc_long", 8, 93)]


def test_the_python_reader_measures_methods() -> None:
    found = dict((name, length) for name, _, length in python_functions(Path(__file__)))
    assert found["test_the_python_reader_measures_methods"] >= 3
    assert "python_functions.walk" in found


def test_no_function_over_80_lines() -> None:
    long = []
    for pkg in ("emu", "qtest"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            long += [f"{path.relative_to(ROOT)}:{line} {name}: {length} lines"
                     for name, line, length in python_functions(path) if length > MAX_LINES]
    for path in sorted((ROOT / "csrc").glob("*.c")):
        long += [f"{path.relative_to(ROOT)}:{line} {name}: {length} lines"
                 for name, line, length in c_functions(path.read_text()) if length > MAX_LINES]
    assert not long, "functions over 80 lines:\n" + "\n".join(long)


def test_every_module_has_a_docstring() -> None:
    """Each module opens by saying what it owns (and, in layered packages, what it must not import)."""
    bare = [str(path.relative_to(ROOT)) for pkg in ("emu", "qtest") for path in sorted((ROOT / pkg).rglob("*.py"))
            if not ast.get_docstring(ast.parse(path.read_text()))]
    assert not bare, "modules without a docstring: " + ", ".join(bare)
