"""The default empty CD-ROM drive (``-drive if=ide,index=2,media=cdrom``: ide-cd, no medium, on
the secondary master) beside Debian's QEMU 7.2.

Both sides run the same qtest port programs (one command per round trip: QEMU soft-resets in a
bottom half between round trips) and are compared reply by reply, then the PIIX IDE section
(``0000:00:01.1/ide``) byte for byte. The programs cover the reset signature and registers
(master and slave selected), IDENTIFY PACKET DEVICE read word by word, the ATA commands a packet
device aborts or runs, PACKET commands with their interrupt reason, byte count, status, error
and sense (TEST UNIT READY, REQUEST SENSE, INQUIRY, GET CONFIGURATION, GET EVENT STATUS
NOTIFICATION, MODE SENSE, READ CAPACITY, READ(10), START STOP UNIT, PREVENT ALLOW MEDIUM REMOVAL,
MECHANISM STATUS, unknown opcodes), replies split by a small byte count limit, DMA-flagged and
overlapped packets, SRST and DEVICE RESET, and a migration taken in the middle of a transfer.

Our side is our binary with the same ``-drive``. Random programs take their seeds from
``CDROM_SEEDS`` (default "1 2 3 4 5 6"). Also compared: the slots ``-drive if=ide`` gives a CD,
and the errors of bad IDE drives.
"""
from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest
from test_ide_qemu import BM, SECTION, SETUP, run_and_save
from test_ide_qemu import reload as reload_into
from test_pc_stream_qemu import full_section
from test_qtest_compat import OURS, QEMU, needs_qemu  # needs_qemu: skipped without qemu-system-x86_64

from emu.devices.ide_ports import ide_serial
from emu.devices.piix import PIIX3IDE
from emu.machine.options import BoardOptions
from emu.machine.pc import PcMachine
from emu.migration.vmstate import save_state

CDROM = ["-drive", "if=ide,index=2,media=cdrom"]
BM_STATUS = f"0x{BM + 10:x}"  # the secondary channel's bus-master status (interrupt bit 0x04)
#: every register of the secondary channel, the alternate status first (it keeps the interrupt)
REGS = ["inb 0x376", "inb 0x171", "inb 0x172", "inb 0x173", "inb 0x174", "inb 0x175", "inb 0x176",
        f"inb {BM_STATUS}", "inb 0x177", f"outb {BM_STATUS} 0x04"]


def packet(cdb: list[int], reads: int = 0, bcl: int = 0x100, feature: int = 0) -> list[str]:
    """PACKET with ``cdb`` (zero padded to 12 bytes) through the data port, the registers, then
    ``reads`` data words and the registers again."""
    cdb = (cdb + [0] * 12)[:12]
    prog = [f"outb 0x171 0x{feature:x}", f"outb 0x174 0x{bcl & 0xFF:x}", f"outb 0x175 0x{bcl >> 8:x}",
            "outb 0x177 0xa0", "inb 0x376", "inb 0x172", "inb 0x174"]
    prog += [f"outw 0x170 0x{cdb[i] | cdb[i + 1] << 8:x}" for i in range(0, 12, 2)]
    return prog + REGS + ["inw 0x170"] * reads + (REGS if reads else [])


def request_sense() -> list[str]:
    return packet([0x03, 0, 0, 0, 18], reads=9)


PROGRAMS: dict[str, list[str]] = {
    "reset": [*SETUP, *REGS, "inw 0x170", "inl 0x170", "inb 0x170", "inw 0x376", "inw 0x176", "inw 0x177",
              "outb 0x176 0x10", *REGS, "inw 0x170", "outb 0x177 0xa1", *REGS, "outb 0x177 0xec", *REGS,
              "outb 0x176 0x00", *REGS],
    "identify": [*SETUP, "outb 0x177 0xa1", *REGS, *["inw 0x170"] * 256, *REGS, "outb 0x177 0xa1",
                 *["inl 0x170"] * 64, "inb 0x170", "inb 0x170", *REGS, *["inw 0x170"] * 200],
    "ata": [*SETUP, "outb 0x177 0xec", *REGS, "outb 0x172 0x55", "outb 0x177 0x20", *REGS, "outb 0x177 0x90",
            *REGS, "outb 0x177 0xe7", *REGS, "outb 0x171 0x03", "outb 0x172 0x22", "outb 0x177 0xef", *REGS,
            "outb 0x171 0x02", "outb 0x177 0xef", *REGS, "outb 0x171 0x82", "outb 0x177 0xef", *REGS,
            "outb 0x171 0x99", "outb 0x177 0xef", *REGS, "outb 0x177 0xa1", *["inw 0x170"] * 256,
            "outb 0x177 0xc8", *REGS, "outb 0x177 0x40", *REGS, "outb 0x177 0xb0", *REGS,
            "outb 0x177 0x00", *REGS, "outb 0x376 0x02", "outb 0x177 0xec", *REGS, "outb 0x376 0x00",
            "outb 0x177 0xa1", *["inw 0x170"] * 3, "outb 0x177 0xec", "outb 0x177 0x08", *REGS,
            "outb 0x176 0x10", "outb 0x177 0xec", "outb 0x177 0x08", *REGS],
    "sense": [*SETUP, *packet([0x00]), *request_sense(), *packet([0x25]), *packet([0x28, 0, 0, 0, 0, 0, 0, 0, 1]),
              *request_sense(), *packet([0xFF]), *request_sense(), *packet([0x43]), *packet([0x51]),
              *packet([0x2B]), *packet([0xA8]), *packet([0xAD]), *packet([0xBE]), *packet([0x03, 0, 0, 0, 0]),
              *packet([0x03, 0, 0, 0, 7], reads=4), *packet([0x03, 0, 0, 0, 18], bcl=0), *packet([0x00], bcl=0)],
    "inquiry": [*SETUP, *packet([0x12, 0, 0, 0, 36], reads=18), *packet([0x12, 0, 0, 0, 96], reads=20),
                *packet([0x12, 1, 0, 0, 96], reads=4), *packet([0x12, 1, 0x83, 0, 96], reads=48),
                *packet([0x12, 1, 0x83, 0, 40], reads=20), *packet([0x12, 1, 0x83, 0, 20]),
                *request_sense(), *packet([0x12, 1, 0x80, 0, 96]), *packet([0x12, 0, 0, 0, 36], bcl=8, reads=18),
                *packet([0x12, 0, 0, 0, 36], bcl=7, reads=18), *packet([0x12, 0, 0, 0, 5], reads=3)],
    "config-events": [*SETUP, *packet([0x46, 0, 0, 0, 0, 0, 0, 0, 0x20], reads=12),
                      *packet([0x46, 0, 0, 0, 0, 0, 0, 0, 0x08], reads=5), *packet([0x46, 0, 0, 1]),
                      *packet([0x4A, 1, 0, 0, 0x10, 0, 0, 0, 8], reads=5),
                      *packet([0x4A, 1, 0, 0, 0x02, 0, 0, 0, 8], reads=3), *packet([0x4A, 0, 0, 0, 0x10, 0, 0, 0, 8]),
                      *packet([0xBD, 0, 0, 0, 0, 0, 0, 0, 0, 8], reads=5), *packet([0xBB])],
    "mode-sense": [*SETUP, *packet([0x5A, 0, 0x01, 0, 0, 0, 0, 0, 0x40], reads=9),
                   *packet([0x5A, 0, 0x0E, 0, 0, 0, 0, 0, 0x40, 0, 0xAB, 0xCD], reads=13),
                   *packet([0x5A, 0, 0x2A, 0, 0, 0, 0, 0, 0x40], reads=16), *packet([0x5A, 0, 0x3F]),
                   *packet([0x5A, 0, 0x41]), *packet([0x5A, 0, 0xC1]), *request_sense()],
    "tray": [*SETUP, *packet([0x1E, 0, 0, 0, 1]), *packet([0x5A, 0, 0x2A, 0, 0, 0, 0, 0, 0x40], reads=16),
             *packet([0x1B, 0, 0, 0, 2]), *request_sense(), *packet([0x1E, 0, 0, 0, 0]), *packet([0x1B, 0, 0, 0, 2]),
             *packet([0x4A, 1, 0, 0, 0x10, 0, 0, 0, 8], reads=5), *packet([0x00]), *request_sense(),
             *packet([0x1B, 0, 0, 0, 0x12]), *packet([0x1E, 0, 0, 0, 1])],
    "dma-and-overlap": [*SETUP, *packet([0x00], feature=1), *packet([0x12, 0, 0, 0, 36], feature=2),
                        *packet([0x12, 0, 0, 0, 36], feature=1, reads=2), "outb 0x177 0xec", *REGS,
                        "outb 0x177 0x08", *REGS],
    "srst": [*SETUP, "outb 0x177 0xa1", "inw 0x170", "outb 0x376 0x04", *REGS, "outb 0x376 0x00", *REGS,
             "inw 0x170", "outb 0x176 0x10", "outb 0x376 0x06", "outb 0x376 0x02", *REGS, "outb 0x176 0x00",
             *REGS, "outb 0x177 0x08", *REGS],
    "mid-transfer": [*SETUP, *packet([0x12, 0, 0, 0, 36], reads=5)],
    "mid-identify": [*SETUP, "outb 0x177 0xa1", *["inw 0x170"] * 17],
    "mid-packet": [*SETUP, "outb 0x171 0x00", "outb 0x174 0x00", "outb 0x175 0x02", "outb 0x177 0xa0",
                   "outw 0x170 0x0012", "outw 0x170 0x0000"],
    "locked": [*SETUP, *packet([0x1E, 0, 0, 0, 1])],
}


def cd_board(unit: int = 0) -> PcMachine:
    """A pc board of ours with the CD attached to the secondary bus, reset."""
    board = PcMachine(64 << 20, manual_clock=True, options=BoardOptions())
    ide = next(d for d in board.devices if isinstance(d, PIIX3IDE))
    ide.buses[1].attach_cdrom(unit, ide_serial(1, unit))
    board.reset()
    return board


def ours_in_process(tmp_path: Path, program: list[str], unit: int = 0) -> tuple[list[str], tuple[int, bytes]]:
    """A pc board of ours with the CD attached to its secondary master, the program run on its
    I/O address space with qtest's replies; then its IDE section (version, body)."""
    board = cd_board(unit)
    replies = []
    for line in program:
        op, port, *rest = line.split()
        size = {"b": 1, "w": 2, "l": 4}[op[-1]]
        if op.startswith("out"):
            board.address_space_io.write_uint(int(port, 16), int(rest[0], 16), size)
            replies.append("OK")
        else:
            replies.append(f"OK 0x{board.address_space_io.read_uint(int(port, 16), size):04x}")
    entry = next(e for e in board.migration_entries(True) if (e.idstr, e.instance_id) == SECTION)
    return replies, (entry.vmsd.version_id, save_state(entry.vmsd, entry.state))


def binary(path: str, tmp_path: Path, program: list[str], drive: list[str] = CDROM) -> tuple[list[str], tuple[int, bytes]]:
    """The program on a binary (``-M pc -nodefaults`` and the CD), then its saved IDE section."""
    replies, stream = run_and_save(path, tmp_path / Path(path).name, program, drive)
    return replies, full_section(stream, SECTION)


def ours(tmp_path: Path, program: list[str], unit: int = 0) -> tuple[list[str], tuple[int, bytes]]:
    """Our side of a comparison: our binary with the CD on the secondary bus's ``unit``."""
    assert OURS is not None
    return binary(OURS, tmp_path, program, ["-drive", f"if=ide,index={2 + unit},media=cdrom"])


def reload(body: bytes, unit: int = 0) -> bytes:
    """QEMU's section loaded into a fresh board of ours with the CD, then saved again."""
    return reload_into(body, cd_board(unit))


PCI_PART = 4 + 256 + 16
#: each "ide bmdma"'s migration_retry_* (sector, count, unit): QEMU's post_load takes them only
#: for a bus with a retry pending, so a target saves them as it had them before the load
RETRY_BYTES = [*range(PCI_PART + 6, PCI_PART + 19), *range(PCI_PART + 25, PCI_PART + 38)]


def without_retry(body: bytes) -> bytes:
    return bytes(0 if i in RETRY_BYTES else b for i, b in enumerate(body))


def assert_reloads(body: bytes, unit: int = 0) -> None:
    """A target of ours saves what a QEMU target would (the retry registers only if pending)."""
    again = reload(body, unit)
    assert again == body or (b"ide_bus/error" not in body and without_retry(again) == without_retry(body))


def assert_same(program: list[str], ours_result: tuple[list[str], tuple[int, bytes]],
                qemu_result: tuple[list[str], tuple[int, bytes]]) -> None:
    (our_replies, our_section), (qemu_replies, qemu_section) = ours_result, qemu_result
    diffs = [(i, cmd, o, q) for i, (cmd, o, q) in enumerate(zip(program, our_replies, qemu_replies)) if o != q]
    assert not diffs, diffs[:10]
    assert len(our_replies) == len(qemu_replies) == len(program)
    assert our_section[0] == qemu_section[0]
    body_o, body_q = our_section[1], qemu_section[1]
    first = next((i for i, (a, b) in enumerate(zip(body_o, body_q)) if a != b), None)
    assert (len(body_o), first) == (len(body_q), None), (body_o[first or 0:][:64].hex(), body_q[first or 0:][:64].hex())


@needs_qemu
@pytest.mark.qemu
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_cdrom_matches_qemu(tmp_path: Path, name: str) -> None:
    program = PROGRAMS[name]
    assert QEMU is not None
    qemu_result = binary(QEMU, tmp_path, program)
    assert_same(program, ours(tmp_path, program), qemu_result)
    assert_reloads(qemu_result[1][1])


#: a CD on the secondary slave (index=3): the master slot has no drive but answers, as the
#: slave's registers now do; the slave's serial is QM00004
SLAVE_PROGRAM = [*SETUP, *REGS, "outb 0x177 0xec", *REGS, "outb 0x177 0xa1", *REGS, "outb 0x176 0x10", *REGS,
                 "outb 0x177 0xa1", *["inw 0x170"] * 256, *REGS, *packet([0x12, 1, 0x83, 0, 96], reads=48),
                 *packet([0x00]), "outb 0x376 0x04", "outb 0x376 0x00", *REGS, "outb 0x176 0x00", *REGS,
                 "outb 0x177 0xe7", *REGS, "outb 0x176 0x10", *packet([0x12, 0, 0, 0, 36], reads=3)]


@needs_qemu
@pytest.mark.qemu
def test_slave_cdrom_matches_qemu(tmp_path: Path) -> None:
    assert QEMU is not None
    qemu_result = binary(QEMU, tmp_path, SLAVE_PROGRAM, ["-drive", "if=ide,index=3,media=cdrom"])
    assert_same(SLAVE_PROGRAM, ours(tmp_path, SLAVE_PROGRAM, unit=1), qemu_result)
    assert_reloads(qemu_result[1][1], unit=1)


def test_reset_signature_is_qemus() -> None:
    """The values a qtest user sees without touching anything (QEMU: 1, 1, 0x14, 0xeb, 0x50)."""
    replies, _ = ours_in_process(Path("."), ["inb 0x172", "inb 0x173", "inb 0x174", "inb 0x175", "inb 0x177"])
    assert replies == ["OK 0x0001", "OK 0x0001", "OK 0x0014", "OK 0x00eb", "OK 0x0050"]


SEEDS = [int(s) for s in os.environ.get("CDROM_SEEDS", "1 2 3 4 5 6").split()]


def random_program(seed: int, count: int = 400) -> list[str]:
    """Random register, data-port and control writes and reads on the secondary channel, biased
    towards the packet-device commands and packets of known and random opcodes."""
    rng = random.Random(seed)
    program = list(SETUP)
    opcodes = [0x00, 0x03, 0x12, 0x1B, 0x1E, 0x25, 0x28, 0x46, 0x4A, 0x5A, 0xBB, 0xBD, 0xBE]
    for _ in range(count):
        kind = rng.random()
        if kind < 0.15:
            cdb = [rng.choice(opcodes)] + [rng.choice([0, 1, 2, 0x10, 0x2A, 0x83, rng.randrange(256)])
                                           for _ in range(11)]
            program += packet(cdb, reads=rng.choice([0, 1, 4, 20]), bcl=rng.choice([0, 7, 8, 0x100, 0xFFFF]),
                              feature=rng.choice([0, 0, 0, 1, 2]))
        elif kind < 0.25:
            program.append(f"outb 0x177 0x{rng.choice([0x08, 0x20, 0x90, 0xA0, 0xA1, 0xE7, 0xEC, 0xEF, 0xC8]):x}")
        elif kind < 0.35:
            program.append(rng.choice(["inw 0x170", "inl 0x170", "inb 0x170", "inw 0x177", "inw 0x376"]))
        elif kind < 0.45:
            program.append(f"outw 0x170 0x{rng.randrange(0x10000):x}")
        elif kind < 0.5:
            program.append(f"outb 0x376 0x{rng.choice([0, 2, 4, 6, 0x80]):x}")
        elif kind < 0.8:
            program.append(f"outb 0x{rng.randrange(0x171, 0x177):x} 0x{rng.randrange(256):x}")
        else:
            program.append(f"inb 0x{rng.choice([*range(0x171, 0x178), 0x376]):x}")
    return program


@needs_qemu
@pytest.mark.qemu
@pytest.mark.parametrize("seed", SEEDS)
def test_random_programs_match_qemu(tmp_path: Path, seed: int) -> None:
    assert QEMU is not None
    program = random_program(seed)
    qemu_result = binary(QEMU, tmp_path, program)
    assert_same(program, ours(tmp_path, program), qemu_result)
    assert_reloads(qemu_result[1][1])


#: the primary channel with a CD as master (``-drive if=ide,media=cdrom`` takes the first free
#: slot): its registers, IDENTIFY PACKET DEVICE's first words, INQUIRY
PRIMARY = ["inb 0x3f6", *[f"inb 0x{p:x}" for p in range(0x1f1, 0x1f8)], "outb 0x1f7 0xa1", "inb 0x1f7",
           *["inw 0x1f0"] * 32, "inb 0x1f7"]


@needs_qemu
@pytest.mark.qemu
@pytest.mark.parametrize("drives", [["-drive", "if=ide,media=cdrom"], ["-drive", "if=ide,bus=0,unit=1,media=cdrom"],
                                    ["-drive", "if=ide,media=cdrom"] * 2],
                         ids=["first-free", "bus-unit", "two"])
def test_cdrom_slots_match_qemu(tmp_path: Path, drives: list[str]) -> None:
    assert OURS is not None and QEMU is not None
    program = PRIMARY + ["outb 0x1f6 0x10", *PRIMARY]
    (ours_replies, ours_stream), (qemu_replies, qemu_stream) = (
        run_and_save(b, tmp_path / Path(b).name, program, drives) for b in (OURS, QEMU))
    assert ours_replies == qemu_replies
    assert "OK 0x0050" in ours_replies  # a drive answers: ready, seek complete
    assert full_section(ours_stream, SECTION) == full_section(qemu_stream, SECTION)


@needs_qemu
@pytest.mark.qemu
@pytest.mark.parametrize("drives", [
    ["-drive", "if=ide,index=1"], ["-drive", "if=ide,media=disk"], ["-drive", "if=ide,index=5,media=cdrom"],
    ["-drive", "if=ide,bus=2,media=cdrom"], ["-drive", "if=ide,unit=2,media=cdrom"],
    ["-drive", "if=ide,index=1,bus=1,media=cdrom"], ["-drive", "if=ide,index=x,media=cdrom"],
    ["-drive", "if=ide,media=cdrom,unit=1", "-drive", "if=ide,media=cdrom,unit=1"],
    ["-drive", "if=ide,index=3,media=cdrom", "-drive", "if=ide,index=3,media=cdrom"],
    ["-M", "none", "-drive", "if=ide,media=cdrom"],
], ids=lambda d: " ".join(d))
def test_bad_ide_drives_fail_as_in_qemu(drives: list[str]) -> None:
    """Slot errors and an empty disk: the same message (after the program name), exit status 1."""
    def run(binary: str) -> tuple[int, str]:
        proc = subprocess.run([binary, "-M", "pc", "-nodefaults", "-display", "none", "-S", *drives],
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        return proc.returncode, proc.stderr.split(": ", 1)[1]

    assert OURS is not None and QEMU is not None
    assert run(OURS) == run(QEMU)
