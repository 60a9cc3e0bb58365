"""Where firmware files are looked for: ``-L`` directories, then QEMU's firmware path.

QEMU keeps a list of data directories (softmmu/datadir.c): each ``-L DIR`` in order, then the
directories it was configured with, duplicates dropped and at most 16 in all. ``-bios NAME``,
the default ``bios-256k.bin``, option ROMs and ``-boot splash=NAME`` are then found as
``qemu_find_file`` finds them: NAME itself if it is readable, else the first ``DIR/NAME``.
``-L help`` prints the list. A leaf module: it imports nothing of ``emu``.
"""
from __future__ import annotations

import os
from collections.abc import Iterable

#: Debian's qemu-system-x86 configuration (--firmwarepath, then the data directory, a duplicate)
FIRMWARE_PATH: tuple[str, ...] = ("/usr/share/qemu", "/usr/share/seabios", "/usr/lib/ipxe/qemu")
#: QEMU's data_dir[] array size: directories beyond it are dropped without a word
MAX_DATA_DIRS = 16


def data_dirs(user_dirs: Iterable[str] = ()) -> tuple[str, ...]:
    """The search list for ``-L`` directories ``user_dirs``, as qemu_add_data_dir builds it."""
    dirs: list[str] = []
    for d in (*user_dirs, *FIRMWARE_PATH):
        if len(dirs) < MAX_DATA_DIRS and d not in dirs:
            dirs.append(d)
    return tuple(dirs)


def find_file(name: str, dirs: Iterable[str]) -> str | None:
    """qemu_find_file: ``name`` if readable as given, else the first readable ``DIR/name``."""
    if os.access(name, os.R_OK):
        return name
    return next((p for p in (f"{d}/{name}" for d in dirs) if os.access(p, os.R_OK)), None)
