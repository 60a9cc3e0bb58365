"""cffi builder for ``emu._memcore`` (out-of-line API mode, compiled at install time)."""
import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))


def _cdef_from_header() -> str:
    """The header's declarations, minus what cdef cannot parse (guards, includes, comments)."""
    with open(os.path.join(HERE, "memcore.h"), encoding="utf-8") as f:
        text = f.read()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    lines = []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("#include") or s.startswith("#ifndef") or s.startswith("#endif"):
            continue
        if s.startswith("#define MEMCORE_H"):
            continue
        if s.startswith("#define"):
            name = s.split()[1]
            lines.append(f"#define {name} ...")
            continue
        lines.append(line)
    return "\n".join(lines)


ffibuilder = FFI()
ffibuilder.cdef(_cdef_from_header())
ffibuilder.set_source(
    "emu._memcore",
    '#include "memcore.h"',
    sources=[os.path.relpath(os.path.join(HERE, "memcore.c"))],
    include_dirs=[os.path.relpath(HERE)],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    libraries=["pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
