"""Live migration of a ``pc`` machine between Debian's QEMU 7.2 and this emulator, both ways.

QEMU 7.2's ``pc`` is ``pc-i440fx-7.2``, the name its configuration section carries; ours is
started with that machine type. The source is programmed through qtest (PIT, PIC, IOAPIC, RTC,
PCI routing, SMBus, RAM contents), saved paused (``migrate`` to a socket the test reads) and loaded by
the other binary with ``-incoming "exec:cat FILE"``. Then:

* both machines answer the same probes (device registers, RAM) with the same bytes;
* the destination saves again, and every section the two streams share is byte-identical to the
  source's (the vCPU's ``cpu``/``cpu_common`` included, in QEMU's format);
* QEMU's sections of devices we do not model (local APIC, vapic, vmmouse) load at their reset
  state, which is where a qtest-driven machine leaves them.

And a running guest: QEMU's A-B guest, booted and running on our vCPU, migrates live to QEMU 7.2,
which runs it on from our ``cpu`` section and passes the guest's memory check.
"""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from test_pc_stream_qemu import PROGRAMS, full_section, ram_blocks, save_stream, vmdesc
from test_qtest_compat import needs_qemu

from qtest.machine import QTestMachine
from qtest.migration import ab_bootsect, check_guests_ram, wait_for_serial

OURS = shutil.which("emu-system-x86_64")
QEMU = shutil.which("qemu-system-x86_64")
COMMON = ["-nodefaults", "-S", "-m", "64M", "-rtc", "base=2020-01-01T00:00:00,clock=vm"]
ARGS = {"ours": ["-M", "pc-i440fx-7.2", *COMMON], "qemu": ["-M", "pc", *COMMON]}
#: RAM written before the save, read back after the load
RAM_WRITES = ["writeq 0x1000 0x0123456789abcdef", "writeq 0x3fff000 0xfeedfacecafebeef", "writeb 0x7c00 0x5a"]
#: reads whose replies must survive the migration (PIT status read-back, PIC masks, IOAPIC
#: redirection entries, CMOS, PCI config of the host bridge and PIIX3, RAM)
PROBES = ["inb 0x21", "inb 0xa1", "outb 0x70 0x0b", "inb 0x71", "outb 0x70 0x0e", "inb 0x71",
          "writel 0xfec00000 0x14", "readl 0xfec00010", "writel 0xfec00000 0x15", "readl 0xfec00010",
          "outl 0xcf8 0x80000860", "inl 0xcfc", "outl 0xcf8 0x80000858", "inl 0xcfc",
          "outl 0xcf8 0x8000b840", "inl 0xcfc",
          "readq 0x1000", "readq 0x3fff000", "readb 0x7c00"]
#: QEMU sections we never send (QEMU keeps the reset state when a stream lacks them)
NOT_SENT = {("apic", 0), ("kvm-tpr-opt", 0), ("vmmouse", 0)}
BINARIES = {"ours": OURS, "qemu": QEMU}


def _wait_completed(m: QTestMachine) -> None:
    deadline = time.monotonic() + 60
    while (status := m.qmp.cmd("query-migrate").get("status")) != "completed":  # polled, as libqtest does
        assert status not in ("failed", "cancelled"), status
        assert time.monotonic() < deadline


def _save(m: QTestMachine, path: Path) -> bytes:
    stream = save_stream(m)
    path.write_bytes(stream)
    return stream


@needs_qemu
@pytest.mark.qemu
@pytest.mark.parametrize("direction", ["qemu-to-ours", "ours-to-qemu"])
def test_pc_migrates_between_qemu_72_and_us(tmp_path: Path, direction: str) -> None:
    src_name, dst_name = direction.split("-to-")
    program = PROGRAMS["devices"] + PROGRAMS["smbus"] + RAM_WRITES
    first, second = tmp_path / "first.mig", tmp_path / "second.mig"
    with QTestMachine(BINARIES[src_name], ARGS[src_name], accel_qtest=False) as src:
        src.qtest.pipeline(program, check=True)
        sent = _save(src, first)
        expected = src.qtest.pipeline(PROBES, check=True)
    with QTestMachine(BINARIES[dst_name], [*ARGS[dst_name], "-incoming", f"exec:cat {first}"],
                      accel_qtest=False) as dst:
        _wait_completed(dst)
        # the source never ran: its global state (prelaunch) is what the destination takes on
        assert dst.qmp.cmd("query-status")["status"] == "prelaunch"
        again = _save(dst, second)
        assert dst.qtest.pipeline(PROBES, check=True) == expected
    assert expected[-3:] == ["OK 0x0123456789abcdef", "OK 0xfeedfacecafebeef", "OK 0x000000000000005a"]
    assert ram_blocks(again) == ram_blocks(sent)
    sent_desc, again_desc = vmdesc(sent), vmdesc(again)
    ours_desc, qemu_desc = (sent_desc, again_desc) if src_name == "ours" else (again_desc, sent_desc)
    assert set(qemu_desc) - set(ours_desc) == NOT_SENT
    common = (set(sent_desc) & set(again_desc)) - {("ram", 0)}
    assert {("cpu", 0), ("cpu_common", 0), ("0000:00:00.0/I440FX", 0), ("mc146818rtc", 0), ("ioapic", 0),
            ("i8254", 0), ("smbus-eeprom", 7)} <= common
    diffs = [key for key in sorted(common) if full_section(sent, key) != full_section(again, key)]
    assert not diffs, f"sections differ after the round trip: {diffs}"


@needs_qemu
@pytest.mark.qemu
def test_machine_type_must_match(tmp_path: Path) -> None:
    """Our default pc (pc-i440fx-9.1) refuses QEMU 7.2's stream with QEMU's message, and exits
    as QEMU does after a failed incoming migration."""
    assert OURS is not None and QEMU is not None
    stream = tmp_path / "q.mig"
    with QTestMachine(QEMU, ARGS["qemu"], accel_qtest=False) as src:
        _save(src, stream)
    proc = subprocess.run([OURS, "-M", "pc", *COMMON, "-display", "none", "-incoming", f"exec:cat {stream}"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "Machine type received is 'pc-i440fx-7.2' and local is 'pc-i440fx-9.1'" in proc.stderr


@needs_qemu
@pytest.mark.qemu
def test_our_running_guest_goes_on_in_qemu_72(tmp_path: Path) -> None:
    assert OURS is not None and QEMU is not None
    image = ab_bootsect(tmp_path / "bootsect")
    guest = ["-nodefaults", "-m", "150M", "-drive", f"file={image},format=raw"]
    uri = f"unix:{tmp_path}/m.sock"
    with QTestMachine(OURS, ["-M", "pc-i440fx-7.2", "-accel", "tcg", *guest, "-serial",
                             f"file:{tmp_path}/src-serial"], accel_qtest=False) as src, \
            QTestMachine(QEMU, ["-M", "pc", "-accel", "tcg", *guest, "-serial", f"file:{tmp_path}/dst-serial",
                                "-incoming", "defer"], accel_qtest=False) as dst:
        wait_for_serial(tmp_path / "src-serial", timeout=60)  # the guest runs (on our vCPU)
        # converge as QEMU's migrate_ensure_converge does: the guest dirties memory all the time
        src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 30, "downtime-limit": 30_000})
        dst.qmp.cmd("migrate-incoming", uri=uri)
        src.qmp.cmd("migrate", uri=uri)
        _wait_completed(src)
        _wait_completed(dst)
        assert dst.qmp.cmd("query-status")["status"] == "running"
        wait_for_serial(tmp_path / "dst-serial", timeout=60)  # and goes on in QEMU
        dst.qmp.cmd("stop")
        check_guests_ram(dst.qtest)
