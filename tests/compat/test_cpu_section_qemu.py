"""The vCPU in QEMU 7.2's own format (emu/devices/x86cpu_vmstate.py) against Debian's QEMU 7.2.

* A fresh ``-M pc -nodefaults -S -m 64M`` QEMU saves its ``cpu_common`` and ``cpu`` sections:
  loading them gives :func:`reset_fields`, and saving :func:`reset_fields` gives QEMU's bytes.
* QEMU accepts what we write: our section (a CPU with changed registers, segments and control
  registers; and the state of a real Unicorn vCPU in long mode, x87 and SSE in use) is put into a
  copy of QEMU's stream in place of its own, QEMU loads it with ``-incoming`` and, still paused,
  saves again: its ``cpu_common`` and ``cpu`` sections are then byte for byte what we wrote.
"""
from __future__ import annotations

import copy
import shutil
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from test_pc_stream_qemu import full_section, save_stream, vmdesc
from test_x86_cpu_qemu import load_both, save_both, vcpu_state

from emu.devices.x86cpu_vmstate import NOT_IN_STREAM, from_qemu, reset_fields, to_qemu
from qtest.machine import QTestMachine

QEMU = shutil.which("qemu-system-x86_64")
ARGS = ["-M", "pc", "-nodefaults", "-S", "-m", "64M"]

pytestmark = [pytest.mark.qemu, pytest.mark.subprocess,
              pytest.mark.skipif(QEMU is None, reason="real QEMU (qemu-system-x86_64) is not installed")]


def save_qemu(path: Path, incoming: Path | None = None) -> bytes:
    """QEMU's stream of a paused pc machine (fresh, or loaded from ``incoming`` first)."""
    assert QEMU is not None
    args = ARGS if incoming is None else [*ARGS, "-incoming", f"exec:cat {incoming}"]
    with QTestMachine(QEMU, args, accel_qtest=False) as m:
        deadline = time.monotonic() + 60
        if incoming is not None:
            while (status := m.qmp.cmd("query-migrate").get("status")) != "completed":
                assert status != "failed", f"QEMU refused the stream: {m.qmp.cmd('query-migrate')}"
                assert time.monotonic() < deadline
                time.sleep(0.02)
        stream = save_stream(m)
    path.write_bytes(stream)
    return stream


def section_span(stream: bytes, key: tuple[str, int]) -> tuple[int, int]:
    """Where the body of a full section lies (as :func:`full_section` finds it)."""
    _, body = full_section(stream, key)
    name = key[0].encode()
    marker = bytes([len(name)]) + name + struct.pack(">I", key[1])
    at = stream.index(marker)
    while stream[at - 5] != 0x04:
        at = stream.index(marker, at + 1)
    start = at + len(marker) + 4
    assert stream[start:start + len(body)] == body
    return start, start + len(body)


def replace_cpu(stream: bytes, fields: dict[str, Any]) -> bytes:
    """QEMU's stream with our ``cpu_common`` and ``cpu`` section bodies in place of its own."""
    common, cpu = save_both(fields)
    for key, body in ((("cpu", 0), cpu), (("cpu_common", 0), common)):  # the later one first
        start, end = section_span(stream, key)
        stream = stream[:start] + body + stream[end:]
    return stream


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return save_qemu(tmp_path_factory.mktemp("fresh") / "qemu.mig")


def test_qemu_sections_are_reset_fields(fresh: bytes) -> None:
    desc = vmdesc(fresh)
    keys = list(desc)
    assert keys.index(("cpu_common", 0)) + 1 == keys.index(("cpu", 0))  # cpu_common first
    assert desc[("cpu", 0)]["version"] == 12 and desc[("cpu_common", 0)]["version"] == 1
    (v_common, common), (v_cpu, cpu) = full_section(fresh, ("cpu_common", 0)), full_section(fresh, ("cpu", 0))
    assert (v_common, v_cpu) == (1, 12)
    ret, loaded, lines = load_both(common, cpu)
    assert (ret, lines) == (0, [])
    assert loaded == reset_fields()
    assert save_both(reset_fields()) == (common, cpu)


def _changed() -> dict[str, Any]:
    """Reset fields with GPRs, segments and control registers of a 32-bit protected-mode CPU."""
    f = reset_fields()
    f["regs"] = [0x1111 * (i + 1) for i in range(16)]
    f["eip"], f["eflags"] = 0x7C40, 0x46
    f["segs"] = [{"selector": 0x10, "base": 0, "limit": 0xFFFFFFFF, "flags": 0xCF9300} for _ in range(6)]
    f["segs"][1] = {"selector": 0x08, "base": 0, "limit": 0xFFFFFFFF, "flags": 0xCF9B00}
    f["gdt"] = dict(f["gdt"], base=0x7C80, limit=0x17)
    f["idt"] = dict(f["idt"], base=0x1000, limit=0x7FF)
    f["cr0"], f["cr3"], f["cr4"] = 0x60000011, 0x5000, 0x200
    f["hflags"] = 0x400000 | 0x80 | 0x30  # OSFXSR, PE, CS32, SS32
    f["xmm_regs"][2] = [0x0123456789ABCDEF, 0xFEDCBA9876543210]
    f["halted"] = 1
    return f


@pytest.mark.parametrize("what", ["changed", "unicorn-long-mode"])
def test_qemu_loads_our_section_and_saves_it_again(fresh: bytes, tmp_path: Path, assemble, what: str) -> None:
    base = load_both(full_section(fresh, ("cpu_common", 0))[1], full_section(fresh, ("cpu", 0))[1])[1]
    if what == "changed":
        fields = _changed()
    else:
        state = vcpu_state(assemble, "long")
        fields = to_qemu(state, base)
        assert from_qemu(fields)[0] == state
    ours = replace_cpu(fresh, copy.deepcopy(fields))
    (tmp_path / "in.mig").write_bytes(ours)
    again = save_qemu(tmp_path / "out.mig", incoming=tmp_path / "in.mig")
    expected = save_both(fields)
    assert expected[1] != full_section(fresh, ("cpu", 0))[1]
    assert full_section(again, ("cpu_common", 0)) == (1, expected[0])
    assert full_section(again, ("cpu", 0)) == (12, expected[1])
    ret, loaded, lines = load_both(expected[0], full_section(again, ("cpu", 0))[1])
    assert (ret, lines) == (0, [])
    assert loaded == {k: v for k, v in fields.items() if k not in NOT_IN_STREAM}
