"""Loader for the C core ``emu._memcore``: the one cffi built at install time (never built at
import), or, when ``$EMU_MEMCORE`` names a file, that build of it (the sanitized core of
docs/fuzzing.md, made by ``python csrc/build_memcore.py --sanitize address,undefined --out DIR``)."""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from types import ModuleType

#: Environment variable naming the extension file to load instead of the installed one.
ENV_VAR = "EMU_MEMCORE"
MODULE = "emu._memcore"


def _sanitizer_missing(path: str) -> str | None:
    """The runtime a sanitized build at ``path`` needs but this process lacks, or None.

    An ASan-instrumented library loaded into a process whose first library is not libasan
    aborts the whole process; this turns that into an ImportError that says what to do."""
    with open(path, "rb") as f:
        needs_asan = b"libasan.so" in f.read()
    if not needs_asan:
        return None
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
        if "/libasan.so" in maps.read():
            return None
    return "libasan"


def load_from(path: str) -> ModuleType:
    """Loads the extension file ``path`` as ``emu._memcore`` (registered in ``sys.modules``);
    ImportError when it is missing, built for another module, or needs a preloaded runtime."""
    where = f"{ENV_VAR}={path!r}"
    if not os.path.isfile(path):
        raise ImportError(f"{where}: no such file (build one with "
                          "`python csrc/build_memcore.py --sanitize address,undefined --out DIR`)")
    loaded = sys.modules.get(MODULE)
    if loaded is not None:
        if os.path.realpath(getattr(loaded, "__file__", "")) == os.path.realpath(path):
            return loaded
        raise ImportError(f"{where}: {MODULE} is already loaded from {loaded.__file__}")
    if _sanitizer_missing(path):
        raise ImportError(f"{where} is a sanitized build: start Python with the runtime preloaded, "
                          "LD_PRELOAD=$(gcc -print-file-name=libasan.so) (see docs/fuzzing.md)")
    loader = importlib.machinery.ExtensionFileLoader(MODULE, path)
    spec = importlib.util.spec_from_file_location(MODULE, path, loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)  # ImportError when the file is not emu._memcore
    sys.modules[MODULE] = module
    loader.exec_module(module)
    return module


def _load() -> ModuleType:
    path = os.environ.get(ENV_VAR)
    if path:
        return load_from(path)
    try:
        import emu._memcore as module
    except ImportError as exc:  # pragma: no cover - only on a broken install
        raise ImportError(
            "emu._memcore is not built; install the package with `pip install -e .` "
            "(it compiles csrc/ with cffi at install time)"
        ) from exc
    return module


_module = _load()
ffi = _module.ffi
lib = _module.lib

__all__ = ["ENV_VAR", "ffi", "lib", "load_from"]
