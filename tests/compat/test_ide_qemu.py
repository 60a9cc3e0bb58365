"""The PIIX3 IDE function's migration section (``0000:00:01.1/ide``) beside Debian's QEMU 7.2's.

Both binaries (``-M pc -nodefaults -S``, no drives) run the same qtest port program, one command
per round trip (QEMU performs a soft reset in a bottom half, which runs between round trips but
not inside a pipelined batch), then save with ``migrate`` to a socket the test reads. Compared: every reply
of the program, and the section's version and bytes; QEMU's section then loads into a board of
ours, which saves it again unchanged.
"""
from __future__ import annotations

import random
from pathlib import Path

import pytest
from test_pc_stream_qemu import full_section, save_stream
from test_qtest_compat import both, needs_qemu  # needs_qemu: skipped without qemu-system-x86_64
from vmstate_source import ByteSource

from emu.machine.options import BoardOptions
from emu.machine.pc import PcMachine
from emu.migration.vmstate import LoadContext, load_state, save_state
from qtest.machine import QTestMachine

ARGS = ["-M", "pc", "-nodefaults", "-S", "-m", "64M"]
SECTION = ("0000:00:01.1/ide", 0)
PCI_PART = 4 + 256 + 16  # the PCIDevice struct: version, config, irq_state
BM = 0xC000  # where the programs put BAR4 (the bus-master registers)
#: PCI command I/O space on, BAR4 programmed
SETUP = ["outl 0xcf8 0x80000920", f"outl 0xcfc 0x{BM | 1:x}", "outl 0xcf8 0x80000904", "outw 0xcfc 0x0001"]
IDE_PORTS = [*range(0x1F0, 0x1F8), 0x3F6, *range(0x170, 0x178), 0x376]

#: Task file, drive select, device control (nIEN, HOB, SRST on and off), commands on both buses
#: (IDENTIFY aborts and interrupts, SET MULTIPLE, READ VERIFY with its sector-count transform,
#: CHECK POWER MODE, a command to the missing slave), bus-master registers and config writes.
PROGRAMS: dict[str, list[str]] = {
    "fresh": [],
    "task-file": [*SETUP, "outb 0x1f1 0x11", "outb 0x1f2 0x22", "outb 0x1f3 0x33", "outb 0x1f4 0x44",
                  "outb 0x1f5 0x55", "outb 0x1f2 0x66", "outb 0x1f6 0xe5", "outb 0x3f6 0x80",
                  "outw 0x172 0x1234", "outb 0x176 0x10", "outb 0x177 0xec", "outb 0x376 0x02",
                  "inb 0x1f7", "inw 0x1f6", "inb 0x3f6"],
    "commands": [*SETUP, "outb 0x1f7 0xec", f"inb 0x{BM + 2:x}", "outb 0x1f2 0x04", "outb 0x1f7 0xc6",
                 "outb 0x1f2 0x00", "outb 0x1f7 0x40", "outb 0x1f2 0x00", "outb 0x1f2 0x01", "outb 0x1f7 0x42",
                 "outb 0x177 0xe5", "outb 0x3f6 0x02", "outb 0x1f7 0xe7", f"outb 0x{BM + 2:x} 0x04",
                 "outb 0x176 0xb0", "outb 0x177 0x90", f"inb 0x{BM + 10:x}"],
    "srst": [*SETUP, "outb 0x1f1 0x99", "outb 0x1f6 0xf0", "outb 0x3f6 0x04", "outb 0x1f2 0x77",
             "outb 0x3f6 0x00", "outb 0x176 0x1f", "outb 0x376 0x06", "outb 0x376 0x06", "outb 0x376 0x00",
             "outb 0x376 0x04"],
    "bus-master": [*SETUP, f"outb 0x{BM:x} 0x09", f"outb 0x{BM + 2:x} 0x66", f"outl 0x{BM + 4:x} 0x12345677",
                   f"outb 0x{BM + 8:x} 0x01", f"outw 0x{BM + 12:x} 0xabcd", f"outb 0x{BM + 10:x} 0x20",
                   f"outb 0x{BM:x} 0x00", "outb 0x1f7 0x00", "outl 0xcf8 0x8000093c", "outb 0xcfc 0x0b"],
}


def run_and_save(binary: str, path: Path, program: list[str], extra: list[str]) -> tuple[list[str], bytes]:
    """The replies of ``program`` (one command per round trip) and the saved stream."""
    with QTestMachine(binary, ARGS + extra, accel_qtest=False) as m:
        replies = [m.qtest.pipeline([cmd], check=True)[0] for cmd in program]
        stream = save_stream(m)
    path.write_bytes(stream)
    return replies, stream


def random_program(seed: int, count: int = 300) -> list[str]:
    """Byte, word and a few dword writes of random values over the IDE ports and the bus-master registers."""
    rng = random.Random(seed)
    ports = IDE_PORTS + list(range(BM, BM + 16))
    program = list(SETUP)
    for _ in range(count):
        port = rng.choice(ports)
        kind = rng.random()
        if kind < 0.2:
            program.append(f"outw 0x{port:x} 0x{rng.randrange(0x10000):x}")
        elif kind < 0.25:
            program.append(f"outl 0x{port:x} 0x{rng.randrange(1 << 32):x}")
        else:
            program.append(f"outb 0x{port:x} 0x{rng.randrange(0x100):x}")
        if rng.random() < 0.1:
            program.append(f"inb 0x{rng.choice(ports):x}")
        if rng.random() < 0.03:  # interrupt line, latency timer, the IDE timing registers
            offset = rng.choice([0x0D, 0x3C, *range(0x40, 0x48)])
            program += [f"outl 0xcf8 0x{0x80000900 | offset & ~3:x}",
                        f"outb 0x{0xCFC + (offset & 3):x} 0x{rng.randrange(0x100):x}"]
    return program


def reload(body: bytes, board: PcMachine | None = None) -> bytes:
    """QEMU's section loaded into ``board`` (by default a fresh, reset board of ours), then saved
    again."""
    if board is None:
        board = PcMachine(64 << 20, manual_clock=True, options=BoardOptions())
        board.reset()
    entry = next(e for e in board.migration_entries(saving=False) if (e.idstr, e.instance_id) == SECTION)
    source, ctx = ByteSource(body), LoadContext()
    assert load_state(source, entry.vmsd, entry.state, 3, ctx) == 0, ctx.lines
    assert source.pos == len(body)
    board.migration_loaded([entry])
    again = next(e for e in board.migration_entries(saving=True) if (e.idstr, e.instance_id) == SECTION)
    return save_state(again.vmsd, again.state)


def compare(tmp_path: Path, program: list[str], extra: list[str] | None = None) -> bytes:
    def save(binary: str) -> tuple[list[str], bytes]:
        return run_and_save(binary, tmp_path / Path(binary).name, program, extra or [])

    (ours_replies, ours), (qemu_replies, qemu) = both(save)
    assert ours_replies == qemu_replies
    version, body = full_section(ours, SECTION)
    assert (version, body) == full_section(qemu, SECTION)
    assert reload(body) == body
    return body


@needs_qemu
@pytest.mark.qemu
@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_ide_section_matches_qemu(tmp_path: Path, program: str) -> None:
    body = compare(tmp_path, PROGRAMS[program])
    # PCIDevice (4 + 256 + 16), two "ide bmdma" (19 each, more with a status subsection), two
    # "ide_bus" (2 each), four "ide_drive" (8 + 17 registers, nsector 4 bytes: 28 each)
    assert len(body) >= 276 + 2 * 19 + 2 * 2 + 4 * 28
    if program == "fresh":
        assert len(body) == 276 + 2 * 19 + 2 * 2 + 4 * 28


@needs_qemu
@pytest.mark.qemu
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_random_writes_match_qemu(tmp_path: Path, seed: int) -> None:
    compare(tmp_path, random_program(seed))


@needs_qemu
@pytest.mark.qemu
def test_boot_disk_before_the_guest_runs_matches_qemu(tmp_path: Path) -> None:
    """With a disk on the primary master the slot has a drive's signature (cylinder 0). Until
    guest code talks to it (ours never does: the channel's ATA ports are unmapped), its state is
    the reset state QEMU saves too."""
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    body = compare(tmp_path, [], ["-drive", f"file={image},format=raw,if=ide"])
    master = body[PCI_PART + 2 * 19 + 2 * 2:][:28]
    # after mult_sectors, identify_set, feature, error: nsector (be32) 1, sector 1, lcyl 0, hcyl 0
    assert master[10:17] == bytes([0, 0, 0, 1, 1, 0, 0])
