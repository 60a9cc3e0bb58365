"""The ``pc`` board register for register: every I/O port, and the IOAPIC and HPET windows, read
right after start with ``-nodefaults -S``, byte-identical to Debian's QEMU 7.2.

``inb``, ``inw`` and ``inl`` of each port 0-0xffff, then ``readl`` over the IOAPIC (0xfec00000)
and HPET (0xfed00000) register windows, sent in pipelined batches to our binary and to QEMU at
the same time (the runner of ``test_qtest_compat``). Reads have side effects (latches, read-to-clear
flags, FIFOs), which is part of what is compared: both get the same sequence.

Wall-time dependent values are frozen: the RTC runs on the virtual clock from a fixed base
(``-rtc base=...,clock=vm``) and ``-S`` keeps the virtual clock stopped on both sides.

Left out: ports 0x5658-0x565b (vmport, the VMware backdoor). A port read there dereferences the
NULL current CPU in QEMU under qtest and kills it; we have no vmport.
"""
from __future__ import annotations

import pytest
from test_qtest_compat import PC, Emu, both, needs_qemu

EXTRA = ["-rtc", "base=2020-01-01T00:00:00,clock=vm"]
VMPORT = range(0x5658, 0x565C)
BATCH = 2048


def _sweep_commands() -> list[str]:
    cmds: list[str] = []
    for op, size in (("inb", 1), ("inw", 2), ("inl", 4)):
        # an access that would overlap the vmport ports is left out as well
        cmds += [f"{op} 0x{p:x}" for p in range(0x10000)
                 if not any(q in VMPORT for q in range(p, p + size))]
    cmds += [f"readl 0x{a:x}" for a in range(0xFEC00000, 0xFEC00100, 4)]
    cmds += [f"readl 0x{a:x}" for a in range(0xFED00000, 0xFED00400, 4)]
    return cmds


def _replies(binary: str, cmds: list[str], extra: list[str]) -> list[bytes | None]:
    with Emu(binary, PC, extra=EXTRA + extra) as emu:
        out: list[bytes | None] = []
        for i in range(0, len(cmds), BATCH):
            part = cmds[i:i + BATCH]
            emu.conn.send(("\n".join(part) + "\n").encode())
            out += [emu.conn.readline() for _ in part]
        return out


@needs_qemu
@pytest.mark.qemu
@pytest.mark.parametrize("extra", [[], ["-no-acpi"]], ids=["default", "no-acpi"])
def test_port_and_mmio_sweep_matches_qemu(extra: list[str]) -> None:
    """With ``-no-acpi`` the board has no PIIX4 PM: its APM, SMBus, GPE and hotplug ports go."""
    cmds = _sweep_commands()
    ours, qemu = both(_replies, cmds, extra)
    diffs = [f"{c}: ours {o!r}, qemu {q!r}" for c, o, q in zip(cmds, ours, qemu) if o != q]
    assert not diffs, f"{len(diffs)} of {len(cmds)} replies differ:\n" + "\n".join(diffs[:80])
