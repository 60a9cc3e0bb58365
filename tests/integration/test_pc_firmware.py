"""Firmware on the pc board through the process: ``-bios FILE`` and ``-drive if=pflash`` both end
at 4 GiB with their last 128 KiB (at most) also below 1 MiB, as QEMU's i440fx-test checks; a flash
takes CFI commands and writes them back to its file; bad flash sizes fail with QEMU's text."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.subprocess]

BLOB = bytes(i & 0xFF for i in range(65536))


@pytest.mark.parametrize("how", ["bios", "pflash"])
def test_firmware_image_at_4g_and_below_1m(qtest_factory, tmp_path: Path, how: str) -> None:
    image = tmp_path / "fw.bin"
    image.write_bytes(BLOB)
    arg = ["-bios", str(image)] if how == "bios" else ["-drive", f"if=pflash,format=raw,file={image}"]
    q = qtest_factory(["-M", "pc", "-nodefaults", "-S", *arg]).qtest
    assert q.memread(0x100000000 - len(BLOB), len(BLOB)) == BLOB
    assert q.memread(0x100000 - len(BLOB), len(BLOB)) == BLOB


def test_pflash_program_reaches_the_file(qtest_factory, tmp_path: Path) -> None:
    image = tmp_path / "flash.bin"
    image.write_bytes(b"\xff" * 4096)
    m = qtest_factory(["-M", "pc", "-nodefaults", "-drive", f"if=pflash,format=raw,file={image}"])
    q = m.qtest
    base = 0x100000000 - 4096
    q.writeb(base + 0x10, 0x40)  # program one byte
    q.writeb(base + 0x10, 0x5A)
    assert q.readb(base) & 0x80  # status: ready
    q.writeb(base, 0xFF)  # back to read array
    assert q.readb(base + 0x10) == 0x5A
    m.quit()
    assert image.read_bytes()[0x10] == 0x5A


def test_pflash_size_error_is_qemus(tmp_path: Path) -> None:
    image = tmp_path / "odd.bin"
    image.write_bytes(bytes(5000))
    r = subprocess.run(["emu-system-x86_64", "-M", "pc", "-display", "none", "-drive",
                        f"if=pflash,format=raw,file={image}"], capture_output=True, text=True, timeout=30,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 1
    assert r.stderr == ("emu-system-x86_64: system firmware block device pflash0 has invalid size 5120\n"
                        "emu-system-x86_64: info: its size must be a non-zero multiple of 0x1000\n")
