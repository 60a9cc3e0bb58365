"""The ``pc`` board's migration stream beside Debian's QEMU 7.2's, for ``-M pc -nodefaults -S``.

Both binaries save a fresh machine with ``migrate`` to a socket the test reads. Compared:

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
from test_smbus_qemu import script as smbus_script
from wire import listen_unix, short_dir

from qtest.machine import QTestMachine

OURS = shutil.which("emu-system-x86_64")
ARGS = ["-M", "pc", "-nodefaults", "-S", "-m", "64M", "-rtc", "base=2020-01-01T00:00:00,clock=vm"]
MEM_SIZE_FLAG = 0x04
#: Sections of QEMU 7.2's pc that this emulator does not produce: the local APIC and the vapic,
#: which are not modelled, and the VMware mouse.
NOT_MODELLED = {("apic", 0), ("kvm-tpr-opt", 0), ("vmmouse", 0)}
#: The SMBus script up to the middle of a byte-by-byte block read: EEPROM 0x50 stays selected,
#: so the bus section carries saved_address 0x50.
SMBUS_MID_BLOCK = 176
#: Guest activity before the save: none, the SMBus transactions of test_smbus_qemu (the SPD
#: EEPROMs' sections appear once accessed; the bus may keep a device selected), and PCI INTx
#: routing plus PIC/IOAPIC/PIT/RTC programming.
PROGRAMS: dict[str, list[str]] = {
    "fresh": [],
    "smbus": smbus_script()[:SMBUS_MID_BLOCK],
    "devices": ["outb 0x43 0x34", "outb 0x40 0x10", "outb 0x40 0x00",  # PIT channel 0, mode 2
                "outb 0x20 0x11", "outb 0x21 0x30", "outb 0x21 0x04", "outb 0x21 0x01", "outb 0x21 0xfe",
                "outb 0x70 0x0b", "outb 0x71 0x42", "writel 0xfec00000 0x14", "writel 0xfec00010 0x31",
                "outl 0xcf8 0x80000860", "outl 0xcfc 0x0b0a0905", "outl 0xcf8 0x8000b840", "outl 0xcfc 0x601"],
}
def save_stream(m: QTestMachine, timeout: float = 60) -> bytes:
    """``migrate`` to a unix socket this test reads until the source closes it: the whole stream.
    (With ``exec:cat > FILE``, QEMU reports completed before cat is done writing the file.)"""
    sock_dir = short_dir("pcstream")
    try:
        with listen_unix(sock_dir / "m.sock") as listener:
            m.qmp.cmd("migrate", uri=f"unix:{sock_dir}/m.sock")
            listener.settimeout(timeout)
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(timeout)
                chunks = []
                while data := conn.recv(1 << 20):
                    chunks.append(data)
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)
    deadline = time.monotonic() + timeout
    while (status := m.qmp.cmd("query-migrate").get("status")) != "completed":  # polled, as libqtest does
        assert status not in ("failed", "cancelled"), status
        assert time.monotonic() < deadline
    return b"".join(chunks)


def _save(binary: str, path: Path, program: list[str]) -> bytes:
    """A fresh machine of ``binary``, ``program`` run on it, saved (also to ``path``)."""
    with QTestMachine(binary, ARGS, accel_qtest=False) as m:
        m.qtest.pipeline(program, check=True)
        stream = save_stream(m)
    path.write_bytes(stream)
    return stream


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
@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_pc_stream_matches_qemu(tmp_path: Path, program: str) -> None:
    def save(binary: str) -> bytes:
        return _save(binary, tmp_path / Path(binary).name, PROGRAMS[program])

    ours, qemu = both(save)
    assert ram_blocks(ours) == ram_blocks(qemu) == [
        ("pc.ram", 64 << 20), ("/rom@etc/acpi/tables", 0x20000), ("pc.bios", 0x40000), ("pc.rom", 0x20000),
        ("/rom@etc/table-loader", 0x1000), ("/rom@etc/acpi/rsdp", 0x1000)]
    ours_desc, qemu_desc = vmdesc(ours), vmdesc(qemu)
    assert set(qemu_desc) - set(ours_desc) == NOT_MODELLED
    assert set(ours_desc) - set(qemu_desc) == set()
    if program == "smbus":
        assert ("smbus-eeprom", 0) in ours_desc
        assert full_section(ours, ("i2c_bus", 0)) == (1, b"\x50")
    common = set(ours_desc) & set(qemu_desc) - {("ram", 0)}
    assert len(common) >= 20 and {("cpu_common", 0), ("cpu", 0)} <= common
    diffs = [key for key in sorted(common) if full_section(ours, key) != full_section(qemu, key)]
    assert not diffs, f"sections differ: {diffs}"


def test_a_selected_smbus_device_is_selected_again_after_migration(tmp_path: Path) -> None:
    """Saved in the middle of a block read, loaded into a new process: the EEPROM is re-selected
    (i2c_slave_post_load) and the rest of the script answers as in a run that never migrated."""
    assert OURS is not None
    script = smbus_script()
    stream = tmp_path / "mid.mig"
    with QTestMachine(OURS, ARGS, accel_qtest=False) as straight:
        straight.qtest.pipeline(script[:SMBUS_MID_BLOCK], check=True)
        expected = straight.qtest.pipeline(script[SMBUS_MID_BLOCK:], check=True)
    _save(OURS, stream, script[:SMBUS_MID_BLOCK])
    with QTestMachine(OURS, [*ARGS, "-incoming", f"exec:cat {stream}"], accel_qtest=False) as dst:
        deadline = time.monotonic() + 60
        while dst.qmp.cmd("query-migrate").get("status") != "completed":
            assert time.monotonic() < deadline
        assert dst.qtest.pipeline(script[SMBUS_MID_BLOCK:], check=True) == expected
