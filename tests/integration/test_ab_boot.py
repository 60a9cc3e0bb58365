"""Booting the A-B guest the way QEMU's migration tests start theirs: TCG wins over KVM, the qtest
accelerator given last loses, the guest prints on -serial file:, and the memory check passes."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from guest_asm import FLAT_CODE32, FLAT_DATA32, gdt

from qtest.machine import QTestMachine
from qtest.migration import TEST_MEM_START, ab_bootsect, check_guests_ram, guest_page_bytes, wait_for_serial

BIN = shutil.which("emu-system-x86_64")


def wait_for_text(path: Path, text: bytes, start: int = 0, timeout: float = 60) -> int:
    """Offset just past the first ``text`` at or after ``start`` in a file the guest writes."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        pos = path.read_bytes().find(text, start)
        if pos >= 0:
            return pos + len(text)
        assert time.monotonic() < deadline, f"{text!r} never appeared in {path}"
        time.sleep(0.001)  # a file has nothing to wait on


def launch(tmp: Path, passes: int | None = 1, drive: str = "plain") -> QTestMachine:
    image = ab_bootsect(tmp / "bootsect", passes)
    disk = (["-drive", f"file={image},format=raw"] if drive == "plain" else
            ["-drive", f"if=none,id=d0,file={image},format=raw", "-device", "ide-hd,drive=d0,secs=1,cyls=1,heads=1"])
    args = ["-accel", "kvm", "-accel", "tcg", "-M", "pc", "-name", "source,debug-threads=on", "-m", "150M",
            "-serial", f"file:{tmp}/serial", *disk]
    return QTestMachine(BIN, args, accel_qtest=True)  # libqtest appends -accel qtest: kvm or tcg wins


@pytest.mark.parametrize("drive", ["plain", "ide-hd"])
def test_ab_guest_runs_stops_resumes_and_passes_the_memory_check(tmp, drive):
    with launch(tmp, drive=drive) as m:
        pos = wait_for_serial(tmp / "serial", timeout=60)
        assert (tmp / "serial").read_bytes().startswith(b"AB")
        assert m.qmp.cmd("query-status") == {"running": True, "status": "running"}
        m.qmp.cmd("stop")
        m.qmp.wait_event("STOP", timeout=30)
        before = guest_page_bytes(m.qtest)
        check_guests_ram(m.qtest)
        assert guest_page_bytes(m.qtest) == before  # stopped means stopped
        assert before[0] != 0
        m.qmp.cmd("cont")
        m.qmp.wait_event("RESUME", timeout=30)
        wait_for_serial(tmp / "serial", timeout=60, start=pos)
        assert m.qtest.readb(TEST_MEM_START) != before[0] or guest_page_bytes(m.qtest) != before


def test_system_reset_restarts_the_guest(tmp):
    with launch(tmp) as m:
        pos = wait_for_serial(tmp / "serial", timeout=60)
        m.qmp.cmd("system_reset")
        m.qmp.wait_event("RESET", timeout=30)
        # Bs of the old run may still precede the restart: wait for the new A, then its B
        again = wait_for_text(tmp / "serial", b"A", start=pos)
        wait_for_serial(tmp / "serial", timeout=60, start=again)
        assert (tmp / "serial").read_bytes().count(b"A") == 2
        cpus = m.qmp.cmd("query-cpus-fast")
        assert cpus[0]["thread-id"] != m.pid  # the vCPU thread, not the main thread


def test_kvm_runs_the_guest_where_usable_else_is_reported_and_tcg_used(tmp):
    """As QEMU with ``-accel kvm -accel tcg``: KVM when /dev/kvm works, else its error and TCG."""
    import os

    from emu.kvm_core import kvm_available

    why = kvm_available()
    with launch(tmp) as m:
        wait_for_serial(tmp / "serial", timeout=60)
        assert m.qmp.cmd("query-kvm") == {"enabled": why is None, "present": True}
    if why is None:
        assert "kvm" not in m.stderr_text()
    elif os.path.exists("/dev/kvm"):
        assert "emu-system-x86_64: failed to initialize kvm: " in m.stderr_text()
    else:
        assert "Could not access KVM kernel module: No such file or directory" in m.stderr_text()


QEMU_STYLE_SECTOR = r"""
# The shape of the boot sector QEMU's own migration test uses: no stack, only DS loaded after the
# switch to protected mode, a 32-bit far jump from 16-bit code, no wait on the UART, and a byte
# counter that prints B every 256 passes. Written here from that description.
.code16
start:
    cli
    lgdt gdtd
    mov $1, %eax
    mov %eax, %cr0
    data32 ljmp $8, $pm
.code32
pm:
    inb $0x92, %al
    or $2, %al
    outb %al, $0x92
    mov $16, %eax
    mov %eax, %ds
    mov $65, %ax
    mov $0x3f8, %dx
    outb %al, %dx
    mov $0, %bl
pass:
    mov $(1024*1024), %eax
page:
    incb (%eax)
    add $4096, %eax
    cmp $(100*1024*1024), %eax
    jl page
    inc %bl
    jnz pass
    mov $66, %ax
    mov $0x3f8, %dx
    outb %al, %dx
    jmp pass
""" + gdt(FLAT_CODE32, FLAT_DATA32, p2align=2) + r"""
.org 510
.byte 0x55, 0xaa
"""


def test_a_qemu_style_boot_sector_runs_and_passes_the_memory_check(tmp, assemble):
    (tmp / "bootsect").write_bytes(assemble(QEMU_STYLE_SECTOR))
    args = ["-accel", "kvm", "-accel", "tcg", "-m", "150M", "-serial", f"file:{tmp}/serial",
            "-drive", f"file={tmp}/bootsect,format=raw"]
    with QTestMachine(BIN, args, accel_qtest=True) as m:
        wait_for_serial(tmp / "serial", timeout=120)
        m.qmp.cmd("stop")
        m.qmp.wait_event("STOP", timeout=30)
        check_guests_ram(m.qtest)


def test_guest_waits_for_cont_under_dash_s(tmp):
    image = ab_bootsect(tmp / "bootsect", 1)
    args = ["-accel", "tcg", "-M", "pc", "-m", "150M", "-S", "-serial", f"file:{tmp}/serial",
            "-drive", f"file={image},format=raw"]
    with QTestMachine(BIN, args, accel_qtest=True) as m:
        assert m.qmp.cmd("query-status") == {"running": False, "status": "prelaunch"}
        assert m.qtest.readb(TEST_MEM_START) == 0 and (tmp / "serial").read_bytes() == b""
        m.qmp.cmd("cont")
        wait_for_serial(tmp / "serial", timeout=60)
        m.qmp.cmd("stop")
        check_guests_ram(m.qtest)
