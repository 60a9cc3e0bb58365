"""The CFI parallel flash (``emu.devices.pflash``) and the pc flash layout rules.

In-process tests drive the device through an address space as the pc board maps it (flash 0
ending at 4 GiB, backed by a file through ``FlashDrive``). The ``qemu`` tests run the same qtest
scripts through ``/root/qemu72/build/qemu-system-x86_64 -M pc -nodefaults -accel qtest -drive
if=pflash,format=raw,file=F`` (each on its own copy of the image, since QEMU writes to it) and
compare every reply and the final file bytes with ours.
"""
from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest
from vmstate_source import ByteSource

from emu.devices.pflash import (
    CFI_TABLE_SIZE,
    FlashDrive,
    PFlashCFI01,
    PflashMapError,
    drive_length,
    pc_flash_bases,
    pc_flash_layout,
)
from emu.memory import AddressSpace, MemoryRegion
from emu.migration.vmstate import LoadContext, load_state, save_state

QEMU72 = Path("/root/qemu72/build/qemu-system-x86_64")
needs_qemu72 = pytest.mark.skipif(not QEMU72.exists(), reason=f"{QEMU72} is absent")
SIZE = 64 * 1024
BASE = (1 << 32) - SIZE
_SIZES = {"b": 1, "w": 2, "l": 4, "q": 8}


def pattern(size: int = SIZE) -> bytes:
    """A recognisable image: each byte is (offset * 7 + offset // 256) & 0xff."""
    return bytes((i * 7 + i // 256) & 0xFF for i in range(size))


def make_file(tmp_path: Path, name: str = "flash.img", data: bytes | None = None) -> Path:
    path = tmp_path / name
    path.write_bytes(pattern() if data is None else data)
    return path


class Bench:
    """Flash 0 of a pc board in a bare address space, file-backed, driven by qtest command lines."""

    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.drive = FlashDrive.open(str(path), readonly)
        size = len(self.drive.image)
        base, _, _ = pc_flash_layout(size)
        self.flash = PFlashCFI01("system.flash0", self.drive.image, readonly=readonly,
                                 write_back=self.drive.write_back)
        root = MemoryRegion.container("system", 1 << 64)
        root.add_subregion(base, self.flash.region)
        self.as_ = AddressSpace("memory", root)

    def run(self, lines: list[str]) -> list[str]:
        """qtest replies ("OK" / "OK 0x...") for readX/writeX lines; "system_reset" resets."""
        replies = []
        for line in lines:
            op, *args = line.split()
            if op == "system_reset":
                self.flash.reset()
                continue
            addr = int(args[0], 0)
            size = _SIZES[op[-1]]
            if op.startswith("read"):
                replies.append(f"OK 0x{self.as_.read_uint(addr, size):016x}")
            else:
                self.as_.write_uint(addr, int(args[1], 0), size)
                replies.append("OK")
        return replies

    def close(self) -> None:
        self.drive.close()


@pytest.fixture
def bench(tmp_path: Path):  # type: ignore[no-untyped-def]
    b = Bench(make_file(tmp_path))
    yield b
    b.close()


def cmd(off: int, value: int, size: str = "b") -> str:
    return f"write{size} {BASE + off:#x} {value:#x}"


def rd(off: int, size: str = "b") -> str:
    return f"read{size} {BASE + off:#x}"


def val(reply: str) -> int:
    return int(reply.split()[1], 16)


# ---------------------------------------------------------------- in-process

def test_pc_parameters_and_region(bench: Bench) -> None:
    f = bench.flash
    assert (f.type_name, f.region.name, f.region.size, f.region.kind) == ("cfi.pflash01", "system.flash0", SIZE, "io")
    assert (f.prop("sector-length"), f.prop("num-blocks"), f.prop("width"), f.prop("device-width")) == (4096, 16, 1, 0)
    assert (f.prop("big-endian"), f.prop("secure"), [f.prop(f"id{i}") for i in range(4)]) == (False, False, [0] * 4)
    assert f.writeblock_size == 256


def test_read_array(bench: Bench) -> None:
    img = pattern()
    replies = bench.run([rd(0), rd(0x1234, "w"), rd(0xFFFC, "l"), rd(0x800, "q")])
    assert [val(r) for r in replies] == [img[0], int.from_bytes(img[0x1234:0x1236], "little"),
                                         int.from_bytes(img[0xFFFC:], "little"),
                                         int.from_bytes(img[0x800:0x808], "little")]
    assert bench.as_.read(BASE, SIZE) == img


def test_cfi_table_bytes(bench: Bench) -> None:
    expected = bytearray(CFI_TABLE_SIZE)
    expected[0x10:0x31] = bytes([0x51, 0x52, 0x59, 0x01, 0x00, 0x31, 0x00, 0x00, 0x00, 0x00, 0x00, 0x45, 0x55,
                                 0x00, 0x00, 0x07, 0x07, 0x0A, 0x00, 0x04, 0x04, 0x04, 0x00,
                                 16,  # ctz(64 KiB)
                                 0x02, 0x00, 0x08, 0x00, 0x01, 15, 0, 0x10, 0x00])
    expected[0x31:0x36] = b"PRI10"
    expected[0x3F] = 1
    assert bench.flash.cfi_table == bytes(expected)
    replies = bench.run([cmd(0, 0x98)] + [rd(i) for i in range(0x60)])
    assert bytes(val(r) for r in replies[1:]) == bytes(expected) + bytes(0x60 - CFI_TABLE_SIZE)


def test_cfi_query_widths_and_exit(bench: Bench) -> None:
    img = pattern()
    r = bench.run([cmd(0x40, 0x98), rd(0x110), rd(0x10, "w"), rd(0x10, "l"), rd(0x2F, "b"),
                   cmd(0, 0x00), rd(0x11), cmd(0, 0x50), rd(0x12), cmd(0, 0xFF), rd(0x10)])
    # the low offset byte indexes the table; a wide read returns one table byte
    assert [val(x) for x in (r[1], r[2], r[3], r[4])] == [0x51, 0x51, 0x51, 0x10]
    assert val(r[6]) == 0x52 and val(r[8]) == 0x59  # only 0xff leaves query mode
    assert val(r[10]) == img[0x10]


def test_read_id_and_status(bench: Bench) -> None:
    img = pattern()
    r = bench.run([cmd(0, 0x90), rd(0), rd(1), rd(0, "l"), cmd(0, 0x70), rd(0), rd(0, "w"), rd(0, "l"), rd(8, "q"),
                   cmd(0, 0xFF), rd(3)])
    assert [val(x) for x in (r[1], r[2], r[3])] == [0, 0, 0]  # pc leaves the ids at 0
    assert [val(x) for x in r[5:9]] == [0x80, 0x80, 0x00800080, 0x0080008000800080]
    assert val(r[10]) == img[3]


def test_legacy_ids_when_set() -> None:
    f = PFlashCFI01("f", bytes(8192), ids=(0x89, 0x18, 0x00, 0x1E))
    f.region.ops.write(0, 0x90, 1)
    assert [f.region.ops.read(off, 2) for off in (0, 1, 2, 0x100)] == [0x8918, 0x001E, 0, 0x8918]


def test_device_width_queries() -> None:
    # a 32-bit bank of two x16 parts: answers are replicated per device, offsets scaled
    f = PFlashCFI01("f", bytes(4 * 65536), sector_len=65536, width=4, device_width=2, ids=(0x89, 0x18, 0, 0))
    ops = f.region.ops
    ops.write(0, 0x98, 4)
    assert f.cfi_table[0x2F:0x31] == bytes([0x80, 0x00])  # 32 KiB per device
    assert ops.read(0x10 << 2, 4) == 0x00510051
    ops.write(0, 0x90, 4)
    assert ops.read(0x11 << 2, 4) == 0x00520052  # only 0xff leaves query mode
    ops.write(0, 0xFF, 4)
    ops.write(0, 0x90, 4)
    assert (ops.read(0, 4), ops.read(4, 4), ops.read(8, 4)) == (0x00890089, 0x00180018, 0)
    ops.write(0, 0x70, 4)
    assert ops.read(0, 4) == 0x00800080
    assert f.writeblock_size == 2 * 2048


def test_program_and_write_back(tmp_path: Path) -> None:
    calls: list[tuple[int, bytes]] = []
    f = PFlashCFI01("f", pattern(), write_back=lambda off, data: calls.append((off, data)))
    ops = f.region.ops
    ops.write(0x1234, 0x40, 1)
    ops.write(0x1234, 0xA5, 1)
    assert ops.read(0x1234, 1) == 0x80  # status until read array
    ops.write(0, 0xFF, 1)
    assert ops.read(0x1234, 1) == 0xA5
    ops.write(0x2000, 0x10, 1)
    ops.write(0x2002, 0xCAFEBABE, 4)
    assert f.image[0x2002:0x2006] == bytes.fromhex("bebafeca")
    expected = bytearray(pattern())
    expected[0x1234] = 0xA5
    expected[0x2002:0x2006] = bytes.fromhex("bebafeca")
    assert calls == [(0x1200, bytes(expected[0x1200:0x1400])), (0x2000, bytes(expected[0x2000:0x2200]))]
    assert f.status == 0x80


def test_block_erase(bench: Bench, tmp_path: Path) -> None:
    r = bench.run([cmd(0x3005, 0x20), rd(0), cmd(0x3000, 0xD0), rd(0x3000), cmd(0, 0xFF), rd(0x3000, "l"),
                   rd(0x3FFF), rd(0x4000), rd(0x2FFF)])
    img = pattern()
    assert [val(x) for x in r[1:4:2]] == [0x80, 0x80]
    assert [val(x) for x in r[5:]] == [0xFFFFFFFF, 0xFF, img[0x4000], img[0x2FFF]]
    data = (tmp_path / "flash.img").read_bytes()
    assert data == img[:0x3000] + b"\xff" * 0x1000 + img[0x4000:]


def test_erase_bad_confirm_still_erased(bench: Bench) -> None:
    # QEMU erases on the 0x20 cycle; a wrong confirmation only ends in read-array mode
    r = bench.run([cmd(0x1000, 0x20), cmd(0x1000, 0x33), rd(0x1000)])
    assert val(r[2]) == 0xFF and (bench.flash.cmd, bench.flash.wcycle) == (0, 0)


def test_write_to_buffer(bench: Bench, tmp_path: Path) -> None:
    lines = [cmd(0x5010, 0xE8), rd(0x5000), cmd(0x5010, 3)] + [cmd(0x5010 + i, 0x11 * (i + 1)) for i in range(4)]
    lines += [rd(0x5010), cmd(0x5000, 0xD0), rd(0x5010), cmd(0, 0xFF), rd(0x5010, "l")]
    r = bench.run(lines)
    assert val(r[1]) == 0x80 and val(r[7]) == 0x80 and val(r[9]) == 0x80
    assert val(r[11]) == 0x44332211
    img = bytearray(pattern())
    img[0x5010:0x5014] = bytes([0x11, 0x22, 0x33, 0x44])
    assert (tmp_path / "flash.img").read_bytes() == bytes(img)
    assert bench.flash.blk_offset == 0xFFFFFFFF


def test_write_to_buffer_outside_block_aborts(bench: Bench) -> None:
    # a program outside the 256-byte block sets the program error bit; the confirmation then aborts
    r = bench.run([cmd(0x5000, 0xE8), cmd(0x5000, 1), cmd(0x5000, 0x12), cmd(0x5100, 0x34), rd(0),
                   cmd(0x5000, 0xD0), rd(0x5000), rd(0x5100)])
    assert val(r[4]) == 0x90
    img = pattern()
    assert [val(r[6]), val(r[7])] == [img[0x5000], img[0x5100]]
    assert bench.flash.status == 0x90


def test_lock_commands_and_unknown(bench: Bench) -> None:
    img = pattern()
    r = bench.run([cmd(0, 0x60), rd(0), cmd(0, 0x01), rd(0), cmd(0, 0x60), cmd(0, 0xD0), rd(0),
                   cmd(0, 0x60), cmd(0, 0x55), rd(0), cmd(0, 0x33), rd(1), cmd(0, 0x70), cmd(0, 0x50), rd(2)])
    assert [val(r[i]) for i in (1, 3, 6)] == [0x80, 0x80, 0x80]  # status reads while locking
    assert [val(r[i]) for i in (9, 11, 14)] == [img[0], img[1], img[2]]  # back in read array
    assert bench.flash.status == 0  # 0x50 cleared it


def test_readonly_refuses_program_and_erase(tmp_path: Path) -> None:
    path = make_file(tmp_path)
    b = Bench(path, readonly=True)
    assert b.drive.write_back is None
    r = b.run([cmd(0x100, 0x40), cmd(0x100, 0x00), rd(0), cmd(0, 0x50), cmd(0x1000, 0x20), cmd(0x1000, 0xD0),
               rd(0), cmd(0, 0x50), cmd(0x200, 0xE8), cmd(0x200, 0), cmd(0x200, 0x77), rd(0), cmd(0x200, 0xD0),
               rd(0x200)])
    assert [val(r[i]) for i in (2, 6, 11)] == [0x90, 0xA0, 0x90]
    assert val(r[13]) == pattern()[0x200]
    assert b.flash.image == pattern() and path.read_bytes() == pattern()
    b.close()


def test_reset_returns_to_read_array(bench: Bench) -> None:
    bench.run([cmd(0x800, 0xE8), cmd(0x800, 5), cmd(0x800, 0x12)])
    f = bench.flash
    f.status = 0x10
    f.reset()
    assert (f.cmd, f.wcycle, f.status, f.blk_offset, f.romd) == (0, 0, 0x80, 0xFFFFFFFF, True)
    assert val(bench.run([rd(0x800)])[0]) == pattern()[0x800]


def test_vmstate_layout_and_round_trip(tmp_path: Path) -> None:
    f = PFlashCFI01("system.flash0", pattern())
    assert (f.vmsd.name, f.vmsd.version_id, f.vmsd.minimum_version_id) == ("pflash_cfi01", 1, 1)
    assert f.vmstate_id() == ("pflash_cfi01", 0)
    plain = save_state(f.vmsd, f.save_vmstate())
    assert plain == bytes([0, 0, 0x80]) + bytes(8)  # no write buffer open: no subsection
    ops = f.region.ops
    for off, v in ((0x300, 0xE8), (0x300, 2), (0x301, 0xAB)):
        ops.write(off, v, 1)
    blob = save_state(f.vmsd, f.save_vmstate())
    sub = b"pflash_cfi01_blk_write"
    head = bytes([2, 0xE8, 0x80]) + (1).to_bytes(8, "big") + bytes([5, len(sub)]) + sub + (1).to_bytes(4, "big")
    assert blob[:len(head)] == head
    assert blob[len(head):] == f.blk_bytes + (0x300).to_bytes(4, "big")
    calls: list[tuple[int, bytes]] = []
    g = PFlashCFI01("system.flash0", pattern(), write_back=lambda off, data: calls.append((off, data)))
    loaded: dict = {}
    assert load_state(ByteSource(blob), g.vmsd, loaded, 1, LoadContext()) == 0
    g.load_vmstate(loaded)
    assert calls == [(0, pattern())]  # post-load writes the whole image back
    assert g.save_vmstate() == f.save_vmstate()
    for flash in (f, g):  # both finish the buffered write identically
        for off, v in ((0x302, 0xCD), (0x303, 0xEF), (0x300, 0xD0)):
            flash.region.ops.write(off, v, 1)
    assert g.image == f.image
    assert f.image[0x300:0x304] == pattern()[0x300:0x301] + bytes([0xAB, 0xCD, 0xEF])


def test_loaded_mode_reads_array_until_first_write() -> None:
    # QEMU's ROM mode is not migrated: after an incoming status mode, reads see the data until a write
    f = PFlashCFI01("f", pattern(), readonly=True)
    f.load_vmstate({"wcycle": 0, "cmd": 0x70, "status": 0x80, "counter": 0})
    assert f.region.ops.read(4, 1) == pattern()[4]
    f.region.ops.write(0, 0x70, 1)
    assert f.region.ops.read(4, 1) == 0x80


def test_ram_backed_storage_marks_dirty() -> None:
    from emu.ram import RamBlock

    block = RamBlock("system.flash0", SIZE)
    f = PFlashCFI01("system.flash0", pattern(), ram=block)
    assert block.read(0, SIZE) == pattern()
    block.fetch_and_clear_dirty()
    f.region.ops.write(0x4000, 0x20, 1)
    assert block.read(0x4000, 4096) == b"\xff" * 4096 and block.is_dirty(4) and not block.is_dirty(3)


def test_realize_errors() -> None:
    with pytest.raises(ValueError, match='attribute "sector-length" not specified or zero.'):
        PFlashCFI01("f", bytes(4096), sector_len=0, num_blocks=1)
    with pytest.raises(ValueError, match='attribute "num-blocks" not specified or zero.'):
        PFlashCFI01("f", b"")


def test_layout_helpers() -> None:
    assert pc_flash_layout(SIZE) == (0xFFFF0000, 0, SIZE)
    assert pc_flash_layout(4 * 1024 * 1024) == (0xFFC00000, 4 * 1024 * 1024 - 128 * 1024, 128 * 1024)
    assert pc_flash_bases([("pflash0", 0x200000), ("pflash1", 0x40000)]) == [0xFFE00000, 0xFFDC0000]
    assert pc_flash_bases([None, None]) == []
    assert drive_length(4000) == 4096 and drive_length(5000) == 5120 and drive_length(0) == 0
    cases = [([("pflash0", 5120)], ["system firmware block device pflash0 has invalid size 5120",
                                    "info: its size must be a non-zero multiple of 0x1000"]),
             ([("pflash0", 0)], ["system firmware block device pflash0 has invalid size 0",
                                 "info: its size must be a non-zero multiple of 0x1000"]),
             ([("pflash0", 9 << 20)], ["combined size of system firmware exceeds 8388608 bytes"]),
             ([("pflash0", 4 << 20), ("pflash1", 5 << 20)], ["combined size of system firmware exceeds 8388608 bytes"]),
             ([None, ("pflash1", 4096)], ["pflash1 requires pflash0"])]
    for drives, lines in cases:
        with pytest.raises(PflashMapError) as e:
            pc_flash_bases(drives)
        assert e.value.lines == lines


def test_flash_drive_pads_and_writes_after_unlink(tmp_path: Path) -> None:
    path = make_file(tmp_path, data=b"\x11" * 4000)
    drive = FlashDrive.open(str(path))
    assert drive.image == b"\x11" * 4000 + bytes(96)
    with open(path, "rb") as witness:
        os.unlink(path)
        assert drive.write_back is not None
        drive.write_back(0, b"\x22")  # the open file still takes writes, as QEMU's does
        assert witness.read(2) == b"\x22\x11"
    drive.close()
    ro = FlashDrive.open(str(make_file(tmp_path, "ro.img")), readonly=True)
    assert ro.write_back is None
    ro.close()


# ---------------------------------------------------------------- against QEMU 7.2

_VALUES = (0x00, 0x01, 0x10, 0x20, 0x28, 0x40, 0x50, 0x60, 0x70, 0x90, 0x98, 0xD0, 0xE8, 0xF0, 0xFF)


def random_script(seed: int, count: int = 400) -> list[str]:
    """Commands, data and reads at a few hot offsets, in every access size."""
    rng = random.Random(seed)
    offsets = [0, 1, 2, 0x10, 0x11, 0x27, 0x2C, 0x100, 0x1FF, 0x1000, 0x10FE, SIZE - 4, SIZE - 1]
    lines = []
    for _ in range(count):
        size = rng.choice("bbbbwwlq")
        off = rng.choice(offsets) & ~(_SIZES[size] - 1)
        if rng.random() < 0.45:
            lines.append(rd(off, size))
        else:
            value = rng.choice(_VALUES) if rng.random() < 0.7 else rng.getrandbits(8 * _SIZES[size])
            lines.append(cmd(off, value, size))
    return lines


SCRIPTS: dict[str, list[str]] = {
    "query-id-status": [cmd(0, 0x98)] + [rd(i) for i in range(0, 0x60, 3)] + [rd(0x110, "w"), rd(0x20, "l"),
                        rd(0x10, "q"), cmd(0, 0x00), rd(0x10), cmd(0, 0xFF), cmd(0, 0x90), rd(0), rd(1), rd(2, "w"),
                        rd(0, "l"), cmd(0, 0x70), rd(0), rd(0, "w"), rd(0, "l"), rd(0, "q"), cmd(0, 0x50), rd(0)],
    "program-erase": [cmd(0x1234, 0x40), cmd(0x1234, 0xA5), rd(0x1234), cmd(0, 0xFF), rd(0x1234),
                      cmd(0x2000, 0x10), cmd(0x2002, 0xCAFEBABE, "l"), cmd(0x2000, 0x40), cmd(0x2007, 0x1234, "w"),
                      cmd(0, 0xFF), rd(0x2000, "q"), cmd(0x3005, 0x20), rd(0x3000), cmd(0x3000, 0xD0),
                      cmd(0, 0xFF), rd(0x3000, "l"), cmd(0x6000, 0x20), cmd(0x6000, 0x33), rd(0x6000)],
    "write-buffer": [cmd(0x5010, 0xE8), rd(0x5000), cmd(0x5010, 3)] + [cmd(0x5010 + i, 0x11 * (i + 1))
                     for i in range(4)] + [rd(0x5010), cmd(0x5000, 0xD0), rd(0x5010), cmd(0, 0xFF), rd(0x5010, "l"),
                     cmd(0x7000, 0xE8), cmd(0x7000, 1), cmd(0x7000, 0x12), cmd(0x7100, 0x34), rd(0),
                     cmd(0x7000, 0xD0), rd(0x7000), cmd(0x8000, 0xE8), cmd(0x8000, 0x0102, "w"),
                     cmd(0x8000, 0xAABBCCDD, "l"), cmd(0x8004, 0x55), rd(0x8000), cmd(0x8000, 0xD0), cmd(0, 0xFF),
                     rd(0x8000, "q")],
    "lock-reset": [cmd(0, 0x60), rd(0), cmd(0, 0x01), rd(0), cmd(0, 0x60), cmd(0, 0xD0), cmd(0, 0x60), cmd(0, 0x55),
                   rd(0), cmd(0, 0x33), rd(1), cmd(0x900, 0xE8), cmd(0x900, 7), cmd(0x900, 0x99), "system_reset",
                   rd(0x900), cmd(0x900, 0x70), rd(0x900), cmd(0x900, 0xFF)],
    "random-1": random_script(1),
    "random-2": random_script(2),
}


def run_qemu(path: Path, lines: list[str], readonly: bool = False) -> list[str]:
    """QEMU's replies to ``lines`` (``system_reset`` goes through QMP and waits for the reset)."""
    from qtest.machine import QTestMachine

    drive = f"if=pflash,format=raw,file={path}" + (",readonly=on" if readonly else "")
    replies: list[str] = []
    with QTestMachine(QEMU72, ["-M", "pc", "-nodefaults", "-S", "-drive", drive]) as qemu:
        chunk: list[str] = []
        for line in lines + ["end"]:
            if line not in ("system_reset", "end"):
                chunk.append(line)
                continue
            replies += [r.strip() for r in qemu.qtest.pipeline(chunk)]
            chunk = []
            if line == "system_reset":
                qemu.qmp.cmd("system_reset")
                qemu.qmp.wait_event("RESET")
    return replies


@pytest.mark.qemu
@needs_qemu72
@pytest.mark.parametrize("readonly", [False, True], ids=["rw", "ro"])
@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_scripts_match_qemu(name: str, readonly: bool, tmp_path: Path) -> None:
    lines = SCRIPTS[name]
    theirs_file = make_file(tmp_path, "qemu.img")
    ours_file = make_file(tmp_path, "ours.img")
    theirs = run_qemu(theirs_file, lines, readonly)
    b = Bench(ours_file, readonly)
    ours = b.run(lines)
    b.close()
    assert ours == theirs
    assert ours_file.read_bytes() == theirs_file.read_bytes()


@pytest.mark.qemu
@needs_qemu72
def test_layout_matches_qemu(tmp_path: Path) -> None:
    from qtest.machine import QTestMachine

    size = 256 * 1024
    path = make_file(tmp_path, data=pattern(size))
    base, isa_off, isa_size = pc_flash_layout(size)
    with QTestMachine(QEMU72, ["-M", "pc", "-nodefaults", "-S", "-drive", f"if=pflash,format=raw,file={path}"]) as q:
        assert q.qtest.memread(base, size) == pattern(size)
        assert q.qtest.memread(0x100000 - isa_size, isa_size) == pattern(size)[isa_off:isa_off + isa_size]


@pytest.mark.qemu
@needs_qemu72
@pytest.mark.parametrize("sizes", [[5000], [0], [9 << 20], [4096, 5000], [None, 4096], [4 << 20, 5 << 20]])
def test_size_errors_match_qemu(sizes: list[int | None], tmp_path: Path) -> None:
    args = []
    drives: list[tuple[str, int] | None] = []
    for unit, size in enumerate(sizes):
        if size is None:
            drives.append(None)
            continue
        path = tmp_path / f"f{unit}.img"
        path.write_bytes(bytes(size))
        args += ["-drive", f"if=pflash,format=raw,unit={unit},file={path}"]
        drives.append((f"pflash{unit}", drive_length(size)))
    proc = subprocess.run([str(QEMU72), "-M", "pc", "-nodefaults", "-display", "none", "-accel", "qtest",
                           "-qtest", "null", "-S", *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 1
    with pytest.raises(PflashMapError) as e:
        pc_flash_bases(drives)
    prefix = os.path.basename(str(QEMU72)) + ": "
    assert proc.stderr.splitlines() == [prefix + line for line in e.value.lines]


@pytest.mark.qemu
@needs_qemu72
def test_vmstate_matches_qemu_stream(tmp_path: Path) -> None:
    """The pflash_cfi01 sections of a QEMU 7.2 migration stream (one with an open write buffer)
    are byte for byte what this device saves after the same accesses."""
    from qtest.machine import QTestMachine

    lines = [cmd(0x300, 0xE8), cmd(0x300, 2), cmd(0x301, 0xAB)]
    images = {0: pattern(), 1: pattern(8192)}
    args = ["-M", "pc", "-nodefaults", "-S"]
    for unit, data in images.items():
        path = make_file(tmp_path, f"f{unit}.img", data)
        args += ["-drive", f"if=pflash,format=raw,unit={unit},file={path}"]
    stream = tmp_path / "stream"
    with QTestMachine(QEMU72, args) as qemu:
        qemu.qtest.pipeline(lines)
        qemu.qmp.cmd("migrate-set-capabilities", capabilities=[{"capability": "events", "state": True}])
        qemu.qmp.cmd("migrate", uri=f"exec:cat > {stream}")
        qemu.qmp.wait_event("MIGRATION", match=lambda ev: ev["data"]["status"] in ("completed", "failed"))
    data = stream.read_bytes()
    ours = {unit: PFlashCFI01(f"system.flash{unit}", image, instance_id=unit) for unit, image in images.items()}
    for off, value in (line.split()[1:] for line in lines):
        ours[0].region.ops.write(int(off, 0) - BASE, int(value, 0), 1)
    for flash in ours.values():
        idstr, instance = flash.vmstate_id()
        header = bytes([len(idstr)]) + idstr.encode() + instance.to_bytes(4, "big") + (1).to_bytes(4, "big")
        start = data.index(header) + len(header)
        blob = save_state(flash.vmsd, flash.save_vmstate())
        assert data[start:start + len(blob) + 1] == blob + b"\x7e"  # then QEMU's section footer
