"""Without -nodefaults QEMU's pc gets default devices: the COM1 and LPT1 ports and the empty
CD-ROM drive on the secondary IDE channel answer as QEMU's do; the defaults this emulator does
not create are named in one warning."""
from __future__ import annotations

import shutil
import subprocess

import pytest
from test_qtest_compat import Emu, both, needs_qemu

OURS = shutil.which("emu-system-x86_64")
ARGS = ["-M", "pc", "-m", "64M", "-S", "-display", "none"]
PROBES = ([f"inb 0x{p:x}" for p in (*range(0x3F8, 0x400), *range(0x378, 0x380), *range(0x170, 0x178), 0x376)]
          + ["inw 0x378", "inl 0x3f8", "inw 0x170"])
SECONDARY_IDE_STATUS = PROBES.index("inb 0x177")


def _replies(binary: str, extra: list[str]) -> list[bytes | None]:
    with Emu(binary, ARGS, extra=extra) as emu:
        emu.conn.send(("\n".join(PROBES) + "\n").encode())
        return [emu.conn.readline() for _ in PROBES]


@needs_qemu
@pytest.mark.qemu
@pytest.mark.parametrize("extra", [[], ["-serial", "none", "-parallel", "none"], ["-nodefaults"]],
                         ids=["defaults", "none", "nodefaults"])
def test_default_serial_and_parallel_ports_match_qemu(extra: list[str]) -> None:
    ours, qemu = both(_replies, extra)
    assert ours == qemu
    assert (b"OK 0x0060" in ours) == (extra == [])  # COM1's LSR (THRE|TEMT) only with defaults
    # the CD-ROM drive (ready, seek complete) unless -nodefaults; an empty channel reads 0
    assert ours[SECONDARY_IDE_STATUS] == (b"OK 0x0000" if "-nodefaults" in extra else b"OK 0x0050")


def _first_stderr_line(extra: list[str]) -> str:
    """The first line the emulator prints on stderr once started (the qtest socket is never
    connected, so it waits; it is killed after that line)."""
    assert OURS is not None
    proc = subprocess.Popen([OURS, *ARGS, *extra, "-qtest", "stdio", "-qtest-log", "none"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        return proc.stderr.readline()
    finally:
        proc.kill()
        proc.wait()


def test_missing_defaults_are_named_once_start_up_succeeds() -> None:
    line = _first_stderr_line(["-vga", "none", "-nic", "none"])
    assert line.endswith("warning: QEMU's default floppy drive fd0 is not created by this emulator; "
                         "-nodefaults leaves it out\n")
    line = _first_stderr_line([])
    assert line.endswith("warning: QEMU's default VGA (-vga std), e1000 network card (-nic), floppy drive fd0 are "
                         "not created by this emulator; -nodefaults leaves them out\n")
    line = _first_stderr_line(["-cdrom", "/dev/null"])
    assert line.endswith("CD-ROM media are not supported by this emulator\n")  # a start-up error, alone
