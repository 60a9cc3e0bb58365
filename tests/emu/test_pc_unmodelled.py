"""The sections of QEMU's pc devices that are not modelled: only their reset state loads.

(That the reset bytes are QEMU 7.2's own is checked by tests/compat/test_pc_migration_qemu.py,
which loads a real QEMU stream.)"""
from __future__ import annotations

import struct

import pytest
from vmstate_source import ByteSource

from emu.machine import pc_unmodelled
from emu.migration.vmstate import LoadContext, load_state

RESET = {"apic": pc_unmodelled.APIC_RESET, "kvm-tpr-opt": pc_unmodelled.VAPIC_RESET,
         "vmmouse": pc_unmodelled.VMMOUSE_RESET}


def _load(name: str, body: bytes) -> tuple[int, list[str]]:
    vmsd = next(v for v in pc_unmodelled.SECTIONS if v.name == name)
    ctx = LoadContext()
    return load_state(ByteSource(body), vmsd, {}, vmsd.version_id, ctx), ctx.lines


@pytest.mark.parametrize("name", sorted(RESET))
def test_reset_state_loads_and_anything_else_fails(name: str) -> None:
    assert _load(name, RESET[name]) == (0, [])
    changed = bytearray(RESET[name])
    changed[-1] ^= 1
    ret, lines = _load(name, bytes(changed))
    assert ret == -22
    assert lines == [f"{name}: {pc_unmodelled._WHAT[name]} is not modelled by this emulator: only its reset "
                     "state can be loaded"]


def test_apic_layout_and_sipi_subsection() -> None:
    """181 bytes (6 LVTs in QEMU 7.2); an AP's apic_sipi subsection is not a reset BSP."""
    assert len(pc_unmodelled.APIC_RESET) == 181
    assert pc_unmodelled.APIC_RESET[:4] == bytes.fromhex("fee00900")
    sub = b"\x05" + bytes([9]) + b"apic_sipi" + struct.pack(">Iii", 1, 0, 1)
    ret, lines = _load("apic", pc_unmodelled.APIC_RESET + sub)
    assert ret == -22 and "not modelled" in lines[0]
    assert len(pc_unmodelled.VMMOUSE_RESET) == 4105 and len(pc_unmodelled.VAPIC_RESET) == 144
