"""Loader for the C core ``emu._memcore`` (built by cffi at install time, never at import)."""
from __future__ import annotations

try:
    from emu._memcore import ffi, lib  # type: ignore[import-not-found]
except ImportError as exc:  # pragma: no cover - only on a broken install
    raise ImportError(
        "emu._memcore is not built; install the package with `pip install -e .` "
        "(it compiles csrc/ with cffi at install time)"
    ) from exc

__all__ = ["ffi", "lib"]
