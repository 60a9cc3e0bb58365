"""cffi builder for ``emu._memcore`` (out-of-line API mode, compiled at install time)."""
import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))


#: The C core's modules: each ``NAME.c`` has a ``NAME.h`` whose declarations become the binding.
MODULES = ("memcore", "xbzrle", "multifd")


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


ffibuilder = FFI()
ffibuilder.cdef("\n".join(_cdef_from_header(m) for m in MODULES))
ffibuilder.set_source(
    "emu._memcore",
    "".join(f'#include "{m}.h"\n' for m in MODULES),
    sources=[os.path.relpath(os.path.join(HERE, f"{m}.c")) for m in MODULES],
    include_dirs=[os.path.relpath(HERE)],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    libraries=["pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
