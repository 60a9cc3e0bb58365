"""The ISA parallel port (LPT1: I/O 0x378-0x37f, IRQ 7) against Debian's QEMU 7.2.

QEMU runs ``-M pc -nodefaults -S -display none -parallel file:PATH`` under qtest; a script of
``outb``/``outw``/``outl``/``inb``/``inw``/``inl`` on the eight ports (reset values, data and
direction bit, strobe handshakes with and without IRQ enable, INIT and SELECT, word and dword
accesses, the EPP ports) is replayed

* on :class:`emu.devices.parallel.ParallelPort` in-process (test_serial's ``IsaBench``, which
  answers like qtest, IRQ lines included), and
* on our ``emu-system-x86_64`` with the same ``-parallel file:`` option,

and every reply line (``IRQ raise/lower 7`` from ``irq_intercept_in ioapic`` included) must be
the same as QEMU's, as must the bytes written to the ``file:`` backend. QEMU's migration
stream (HMP ``migrate exec:``) also gives the ``parallel_isa`` section our VMState must match.
"""
from __future__ import annotations

import json
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest
from test_qtest_compat import OURS, PC, QEMU, assert_same, needs_qemu, transcript
from test_serial import IsaBench

from emu.devices.parallel import VMSTATE_PARALLEL_ISA, ParallelPort
from emu.migration.vmstate import save_state, vmdesc_fields

pytestmark = [pytest.mark.subprocess]

LPT1, LPT_IRQ = 0x378, 7


def _strobe(byte: int, control: int = 0x0C) -> list[str]:
    """Data, STROBE high, STROBE low, then the status reads that finish the handshake."""
    return [f"outb 0x378 0x{byte:02x}", f"outb 0x37a 0x{control | 1:02x}", f"outb 0x37a 0x{control:02x}",
            "inb 0x379", "inb 0x379", "inb 0x379"]


SCRIPT: list[str] = (
    ["irq_intercept_in ioapic"]
    # reset values at every width and port
    + [f"{op} 0x{port:x}" for op in ("inb", "inw", "inl") for port in range(LPT1, LPT1 + 8)]
    # data register and the direction bit
    + ["outb 0x378 0x5a", "inb 0x378", "outb 0x37a 0x2c", "inb 0x37a", "inb 0x378", "outb 0x37a 0x0c",
       "inb 0x378", "inb 0x379"]
    # a strobe without IRQ enable; status read while the strobe is still high
    + ["outb 0x378 0x41", "outb 0x37a 0x0d", "inb 0x379", "inb 0x379", "outb 0x37a 0x0d", "outb 0x37a 0x0c",
       "inb 0x379", "inb 0x379", "inb 0x379", "inb 0x379"]
    # with IRQ enable: the falling strobe raises IRQ 7, a status read lowers it
    + _strobe(0x42, control=0x1C) + _strobe(0x43, control=0x1C)
    # enabling IRQs together with the falling strobe is too late; a data write re-drives the line
    + ["outb 0x37a 0x0d", "outb 0x37a 0x1c", "outb 0x37a 0x0c", "outb 0x378 0x00", "inb 0x37a", "inb 0x379"]
    # a word read across status and control during the handshake, then word/dword writes
    + ["outb 0x378 0x44", "outb 0x37a 0x0d", "outb 0x37a 0x0c", "inw 0x379", "inw 0x378", "inw 0x379",
       "outw 0x378 0x1c45", "inb 0x378", "inb 0x37a", "outw 0x379 0x0d00", "outw 0x379 0x1c00", "inb 0x379",
       "outl 0x378 0x0c0d0d46", "inb 0x378", "inb 0x37a", "outw 0x37f 0x0d0d", "inb 0x37a"]
    # SELECT or INIT clear: no byte; INIT low is the printer reset
    + ["outb 0x378 0x58", "outb 0x37a 0x05", "outb 0x37a 0x04", "inb 0x379", "outb 0x37a 0x09",
       "inb 0x379", "inb 0x379", "outb 0x37a 0x08", "outb 0x37a 0x0c", "inb 0x379"]
    # the EPP and spare ports in an "EPP" control setting: nothing answers on this path
    + ["outb 0x37a 0x24", "outb 0x37b 0x12", "outb 0x37c 0x34", "outw 0x37c 0x5678", "outl 0x37c 0x12345678",
       "outb 0x379 0x01"]
    + [f"{op} 0x{port:x}" for op in ("inb", "inw", "inl") for port in range(LPT1, LPT1 + 8)]
    + ["outb 0x37a 0x0c"]
    + [line for byte in b"Hi!\n" for line in _strobe(byte)]
    + [f"inb 0x{port:x}" for port in range(LPT1, LPT1 + 8)]
)

#: What the script strobes out: A (no IRQ), B, C (IRQ enabled), C again (the late-IRQ strobe
#: precedes the data write), D, E (the word write to status/control), then "Hi!\n".
EXPECTED_OUTPUT = b"ABCCDEHi!\n"


def _run_binary(binary: str, script: list[str]) -> tuple[list[tuple[bytes, list[bytes]]], bytes]:
    """``script``'s transcript on ``binary`` with LPT1 on a fresh ``file:`` backend, and the file."""
    with tempfile.TemporaryDirectory(prefix="lpt") as tmp:
        path = Path(tmp) / "lpt.out"
        replies = transcript(binary, [*PC, "-parallel", f"file:{path}"], script)
        return replies, path.read_bytes() if path.exists() else b""


def _run_device(script: list[str]) -> tuple[list[tuple[bytes, list[bytes]]], bytes]:
    """The same script on a ParallelPort on a private ISA bus (qtest's reply lines)."""
    out: list[bytes] = []
    bench = IsaBench()
    lpt = ParallelPort(out.append)
    lpt.irq.connect(bench.irq(LPT_IRQ))
    bench.map(LPT1, lpt.io)
    replies = [(line.encode(), [r.encode() for r in bench.command(line)]) for line in script]
    return replies, b"".join(out)


@pytest.mark.qemu
@needs_qemu
def test_device_replies_and_output_match_qemu() -> None:
    assert QEMU is not None
    qemu_replies, qemu_out = _run_binary(QEMU, SCRIPT)
    assert len(qemu_replies) == len(SCRIPT)
    assert qemu_out == EXPECTED_OUTPUT
    assert [b"IRQ raise 7", b"OK"] in [r for _, r in qemu_replies]  # the script does exercise the IRQ
    ours, ours_out = _run_device(SCRIPT)
    assert_same(ours, qemu_replies)
    assert ours_out == qemu_out


@pytest.mark.qemu
@needs_qemu
@pytest.mark.skipif(OURS is None, reason="emu-system-x86_64 is not installed")
def test_emulator_replies_and_output_match_qemu() -> None:
    assert QEMU is not None and OURS is not None
    qemu_replies, qemu_out = _run_binary(QEMU, SCRIPT)
    ours, ours_out = _run_binary(OURS, SCRIPT)
    assert_same(ours, qemu_replies)
    assert ours_out == qemu_out == EXPECTED_OUTPUT


@pytest.mark.qemu
@needs_qemu
def test_vmstate_section_matches_qemu_stream() -> None:
    """QEMU's migration stream after reset: section "parallel_isa" instance 0 version 1, whose
    body is what our device saves, and vmdesc field names/types/sizes as our description's."""
    assert QEMU is not None
    with tempfile.TemporaryDirectory(prefix="lpt") as tmp:
        path = Path(tmp) / "mig.bin"
        # HMP's migrate (without -d) holds the monitor until it completes, so quit follows it
        subprocess.run([QEMU, "-M", "pc", "-nodefaults", "-S", "-display", "none", "-parallel", "null",
                        "-monitor", "stdio"], input=f'migrate "exec:cat > {path}"\nquit\n'.encode(),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60, check=False)
        stream = path.read_bytes()
    name = b"parallel_isa"
    start = stream.index(bytes([len(name)]) + name) + 1 + len(name)
    instance, version = struct.unpack(">II", stream[start:start + 8])
    body = stream[start + 8:start + 8 + 12]
    assert (instance, version) == (0, VMSTATE_PARALLEL_ISA.version_id)
    assert body == save_state(VMSTATE_PARALLEL_ISA, ParallelPort().save_vmstate())
    desc_at = stream.rindex(b'{"name": "parallel_isa"')
    desc = json.JSONDecoder().raw_decode(stream[desc_at:].decode("latin-1"))[0]
    assert desc["fields"] == vmdesc_fields(VMSTATE_PARALLEL_ISA)["fields"]
