"""``system_powerdown`` presses PIIX4 PM's ACPI power button, as on Debian's QEMU 7.2.

The script maps PM I/O at 0xb000 through PCI config, then reads PM1 status and the SCI (GSI 9,
seen through ``irq_intercept_in ioapic``) around ``system_powerdown``: with the power button
event disabled (nothing latches), enabled (PWRBTN_STS and the SCI), cleared by the guest
(write 1 to clear), and pressed again.
"""
from __future__ import annotations

import shutil
from typing import Any

import pytest

from qtest.machine import QTestMachine

QEMU = shutil.which("qemu-system-x86_64")
OURS = shutil.which("emu-system-x86_64")
PM_CONFIG = 0x80000000 | (1 << 11) | (3 << 8)  # 00:01.3
PM_BASE = 0xB000


def _pci_write(m: Any, reg: int, value: int) -> None:
    m.qtest.outl(0xCF8, PM_CONFIG | reg)
    m.qtest.outl(0xCFC, value)


def _script(binary: str) -> list[tuple[str, int, bool]]:
    with QTestMachine(binary, ["-M", "pc", "-nodefaults", "-S"], accel_qtest=False) as m:
        q = m.qtest
        q.irq_intercept_in("ioapic")
        _pci_write(m, 0x40, PM_BASE | 1)
        _pci_write(m, 0x80, 1)  # PM I/O enable
        out: list[tuple[str, int, bool]] = []

        def look(step: str) -> None:
            out.append((step, q.inw(PM_BASE), q.get_irq(9)))

        look("start")
        m.qmp.cmd("system_powerdown")
        m.qmp.wait_event("POWERDOWN")
        look("pressed, disabled")
        q.outw(PM_BASE + 2, 0x0100)  # PWRBTN_EN
        look("enabled")
        m.qmp.cmd("system_powerdown")
        m.qmp.wait_event("POWERDOWN")
        look("pressed, enabled")
        q.outw(PM_BASE, 0x0100)
        look("cleared")
        m.qmp.cmd("system_powerdown")
        m.qmp.wait_event("POWERDOWN")
        look("pressed again")
        q.outw(PM_BASE + 2, 0)
        look("disabled")
        return out


@pytest.mark.skipif(QEMU is None, reason="real QEMU (qemu-system-x86_64) is not installed")
@pytest.mark.qemu
def test_power_button_matches_qemu() -> None:
    assert QEMU is not None and OURS is not None
    theirs = _script(QEMU)
    assert _script(OURS) == theirs
    # and what the script shows: the press latches only while enabled, and drives the SCI
    assert [(s, sts & 0x100, sci) for s, sts, sci in theirs] == [
        ("start", 0, False), ("pressed, disabled", 0, False), ("enabled", 0, False),
        ("pressed, enabled", 0x100, True), ("cleared", 0, False), ("pressed again", 0x100, True),
        ("disabled", 0x100, False)]
