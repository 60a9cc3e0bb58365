"""cffi builder for ``emu._memcore`` (out-of-line API mode, compiled at install time).

``setup.py`` imports :data:`ffibuilder` (``pip install -e .`` builds ``emu/_memcore.abi3.so``).
Run as a script, this file also builds a sanitized copy of the C core into a directory of its own,
never over the installed one (see docs/fuzzing.md, "Sanitized build")::

    python csrc/build_memcore.py --sanitize address,undefined --out DIR

which prints the path of the built extension; ``EMU_MEMCORE=<that path>`` makes ``emu._native`` load it.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))


#: The C core's modules: each ``NAME.c`` has a ``NAME.h`` whose declarations become the binding.
MODULES = ("memcore", "xbzrle", "multifd", "uffd", "kvm")
#: Flags of every build (the installed one and the sanitized one).
COMPILE_ARGS = ["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"]
#: Sanitizers ``--sanitize`` accepts (GCC's ``-fsanitize=`` names).
SANITIZERS = ("address", "undefined")


def _cdef_from_header(module: str) -> str:
    """A header's declarations, minus what cdef cannot parse (guards, includes, comments)."""
    with open(os.path.join(HERE, f"{module}.h"), encoding="utf-8") as f:
        text = f.read()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    lines = []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("#include") or s.startswith("#ifndef") or s.startswith("#endif"):
            continue
        if s.startswith("#define") and s.endswith("_H") and len(s.split()) == 2:
            continue  # the include guard
        if s.startswith("#define"):
            name = s.split()[1]
            lines.append(f"#define {name} ...")
            continue
        lines.append(line)
    return "\n".join(lines)


def sanitize_flags(sanitizers: Sequence[str]) -> tuple[list[str], list[str]]:
    """(compile args, link args) of a build instrumented with ``sanitizers``.

    Every finding is fatal (``-fno-sanitize-recover=all``: a UBSan report is an error, not a log
    line); ``-fno-wrapv`` undoes CPython's ``-fwrapv`` so that signed overflow is checked too.
    """
    bad = sorted(set(sanitizers) - set(SANITIZERS))
    if bad or not sanitizers:
        raise ValueError(f"--sanitize takes a comma-separated subset of {','.join(SANITIZERS)}, not {bad}")
    fsan = "-fsanitize=" + ",".join(sanitizers)
    compile_args = [fsan, "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-fno-wrapv", "-g", "-O1"]
    return compile_args, [fsan]


def make_builder(extra_compile_args: Sequence[str], extra_link_args: Sequence[str] = (), absolute: bool = False) -> FFI:
    """An FFI builder of ``emu._memcore`` with these flags. Source paths are relative to the current
    directory for setuptools, absolute (``absolute=True``) for ``FFI.compile``, which changes
    directory to its ``tmpdir`` before compiling."""
    where = os.path.abspath if absolute else os.path.relpath
    link = {"extra_link_args": list(extra_link_args)} if extra_link_args else {}
    builder = FFI()
    builder.cdef("\n".join(_cdef_from_header(m) for m in MODULES))
    builder.set_source(
        "emu._memcore",
        "".join(f'#include "{m}.h"\n' for m in MODULES),
        sources=[where(os.path.join(HERE, f"{m}.c")) for m in MODULES],
        include_dirs=[where(HERE)],
        extra_compile_args=[*extra_compile_args, *COMPILE_ARGS],
        libraries=["pthread"],
        **link,
    )
    return builder


#: The installed build's builder (``setup.py``'s ``cffi_modules``).
ffibuilder = make_builder(["-O2"])


def build_sanitized(out_dir: str, sanitizers: Sequence[str], verbose: bool = False) -> str:
    """Compiles the C core with ``sanitizers`` into ``out_dir`` (created); returns the path of the
    extension (``out_dir/emu/_memcore.<EXT_SUFFIX>``)."""
    compile_args, link_args = sanitize_flags(sanitizers)
    os.makedirs(out_dir, exist_ok=True)
    builder = make_builder(compile_args, link_args, absolute=True)
    return builder.compile(tmpdir=out_dir, verbose=verbose)


def main(argv: list[str] | None = None) -> int:
    """Without options: the installed build, in the current directory (as before). With
    ``--sanitize LIST --out DIR``: a sanitized build in DIR; prints the extension's path."""
    parser = argparse.ArgumentParser(prog="python csrc/build_memcore.py", description=main.__doc__)
    parser.add_argument("--sanitize", metavar="LIST", help="comma-separated sanitizers, e.g. address,undefined")
    parser.add_argument("--out", metavar="DIR", help="build directory of the sanitized copy (required with --sanitize)")
    parser.add_argument("--quiet", action="store_true", help="no compiler command lines")
    args = parser.parse_args(argv)
    if args.sanitize is None:
        ffibuilder.compile(verbose=not args.quiet)
        return 0
    if not args.out:
        parser.error("--sanitize needs --out DIR (the installed emu/_memcore.abi3.so is never overwritten)")
    try:
        path = build_sanitized(args.out, [s for s in args.sanitize.split(",") if s], verbose=not args.quiet)
    except ValueError as e:
        parser.error(str(e))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
