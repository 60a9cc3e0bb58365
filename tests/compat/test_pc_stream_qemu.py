"""The ``pc`` board's migration stream beside Debian's QEMU 7.2's, for ``-M pc -nodefaults -S``.

Both binaries save a fresh machine with ``migrate exec:cat > FILE``. Compared:

* the RAM blocks the ``ram`` section lists (names, used lengths, order: QEMU's ram_list order);
* the device sections, by the vmdesc JSON each stream ends with: every section both have is
  byte-identical, with the same version; the sections only QEMU has are exactly those of devices
  not modelled here (:data:`NOT_MODELLED`).

The RTC runs from a fixed base on the virtual clock, which ``-S`` keeps at 0.
"""
from __future__ import annotations

import json
import shutil
import struct
import time
from pathlib import Path

import pytest
from test_qtest_compat import both, needs_qemu

from qtest.machine import QTestMachine

OURS = shutil.which("emu-system-x86_64")
ARGS = ["-M", "pc", "-nodefaults", "-S", "-m", "64M", "-rtc", "base=2020-01-01T00:00:00,clock=vm"]
MEM_SIZE_FLAG = 0x04
#: Sections of QEMU 7.2's pc that this emulator does not produce: the vCPU's own state (ours
#: travels in a section of its own format), the local APIC and the vapic, which are not
#: modelled, and the VMware mouse.
NOT_MODELLED = {("cpu_common", 0), ("apic", 0), ("kvm-tpr-opt", 0), ("vmmouse", 0),
                ("PCIBUS", 0), ("i2c_bus", 0), ("0000:00:01.1/ide", 0)}
#: Ours and QEMU's share the name but not the format (emu-x86-cpu, see emu.migration.vmstate).
OWN_FORMAT = {("cpu", 0)}


def _save(binary: str, path: Path) -> bytes:
    with QTestMachine(binary, ARGS, accel_qtest=False) as m:
        m.qmp.cmd("migrate", uri=f"exec:cat > {path}")
        deadline = time.monotonic() + 60
        while m.qmp.cmd("query-migrate").get("status") != "completed":  # polled, as libqtest does
            assert time.monotonic() < deadline
    return path.read_bytes()


def ram_blocks(stream: bytes) -> list[tuple[str, int]]:
    """The MEM_SIZE record of the ``ram`` section's START: (block name, used length)."""
    at = stream.index(b"\x03ram" + struct.pack(">II", 0, 4)) + 12
    total = struct.unpack_from(">Q", stream, at)[0]
    assert total & 0xFFF == MEM_SIZE_FLAG
    total &= ~0xFFF
    at += 8
    out = []
    while total:
        n = stream[at]
        name = stream[at + 1:at + 1 + n].decode()
        length = struct.unpack_from(">Q", stream, at + 1 + n)[0]
        out.append((name, length))
        at += 1 + n + 8
        total -= length
    return out


def vmdesc(stream: bytes) -> dict[tuple[str, int], dict]:
    """The sections the stream's vmdesc JSON describes, by (name, instance)."""
    doc = json.loads(stream[stream.rindex(b'{"page_size"'):].decode())
    return {(d["name"], d["instance_id"]): d for d in doc["devices"]}


def full_section(stream: bytes, key: tuple[str, int]) -> tuple[int, bytes]:
    """A QEMU_VM_SECTION_FULL's (version, body): found by its header (type 0x04, be32 section
    id, idstr, be32 instance), ended by its footer (0x7e and the section id) before the next item."""
    name = key[0].encode()
    marker = bytes([len(name)]) + name + struct.pack(">I", key[1])
    at = stream.index(marker)
    while stream[at - 5] != 0x04:
        at = stream.index(marker, at + 1)
    section_id = stream[at - 4:at]
    version = struct.unpack_from(">I", stream, at + len(marker))[0]
    body = end = at + len(marker) + 4
    while True:
        end = stream.index(b"\x7e" + section_id, end)
        if stream[end + 5] in (0x00, 0x04):  # EOF, or the next full section
            return version, stream[body:end]
        end += 1


@needs_qemu
@pytest.mark.qemu
def test_pc_stream_matches_qemu(tmp_path: Path) -> None:
    def save(binary: str) -> bytes:
        return _save(binary, tmp_path / Path(binary).name)

    ours, qemu = both(save)
    assert ram_blocks(ours) == ram_blocks(qemu) == [
        ("pc.ram", 64 << 20), ("/rom@etc/acpi/tables", 0x20000), ("pc.bios", 0x40000), ("pc.rom", 0x20000),
        ("/rom@etc/table-loader", 0x1000), ("/rom@etc/acpi/rsdp", 0x1000)]
    ours_desc, qemu_desc = vmdesc(ours), vmdesc(qemu)
    assert set(qemu_desc) - set(ours_desc) == NOT_MODELLED
    assert set(ours_desc) - set(qemu_desc) == set()
    common = set(ours_desc) & set(qemu_desc) - OWN_FORMAT - {("ram", 0)}
    assert len(common) >= 20
    diffs = [key for key in sorted(common) if full_section(ours, key) != full_section(qemu, key)]
    assert not diffs, f"sections differ: {diffs}"
