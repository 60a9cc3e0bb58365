"""DMA-pattern answers of the in-process generic fuzzer (``qtest.fuzz qtest --in-process``):
device reads of guest RAM are filled with the input's patterns just before the device reads
them, recorded as ``write`` lines ahead of the command, and the trace replays out of process."""
from __future__ import annotations

import subprocess

import pytest

from emu.memory import AddressSpace, MemoryRegion
from qtest.fuzz.generic import SEPARATOR, Decoder, FuzzSpace, Pattern, default_args, make_target
from qtest.fuzz.inprocess import FILL_CAP, DmaFiller, InProcessFuzzTarget

pytestmark = [pytest.mark.subprocess]

DESC = 0x10000  # where the fw_cfg DMA descriptor is put


@pytest.fixture(scope="module")
def target():
    t = make_target(default_args(in_process=True, args="-m 64M"))
    assert isinstance(t, InProcessFuzzTarget)
    yield t
    t.close()


def _bench() -> tuple[AddressSpace, Decoder, DmaFiller]:
    root = MemoryRegion.container("mem", 1 << 32)
    root.add_subregion(0, MemoryRegion.ram("ram", 0x20000))
    mem = AddressSpace("mem", root)
    decoder = Decoder(FuzzSpace([], []))
    filler = DmaFiller(mem, decoder)
    mem.dma_read_hook = filler
    return mem, decoder, filler


def test_fill_is_the_rendered_pattern_round_robin_and_ram_only() -> None:
    mem, decoder, filler = _bench()
    mem.dma_read(0x100, 8)
    assert filler.fills == []  # no pattern: nothing filled
    decoder.patterns += [Pattern(1, 2, b"\x00\x01\x02"), Pattern(0, 0, b"\xaa")]
    mem.dma_read(0x100, 12)
    assert bytes(mem.read(0x100, 12)) == bytes.fromhex("00 01 02 00 03 02 00 05 02 00 07 02")
    assert filler.fills == ["write 0x100 0xc 0x000102000302000502000702"]
    mem.dma_read(0x104, 4)  # overlaps a range filled since the last op: not refilled
    assert len(filler.fills) == 1
    filler.filled.clear()
    mem.dma_read(0x1FFFE, 4)  # the second pattern; only the 2 bytes of RAM are written
    assert filler.fills[-1] == "write 0x1fffe 0x2 0xaaaa"
    assert decoder.pattern_index == 0
    filler.filled.clear()
    mem.dma_read(0, 3 * FILL_CAP)
    assert filler.fills[-1].startswith(f"write 0x0 {FILL_CAP:#x} 0x")  # capped per fill
    mem.read(0x200, 4)  # not a device read: no hook
    assert len(filler.fills) == 3


def test_budget_limits_the_bytes_filled_per_input() -> None:
    mem, decoder, filler = _bench()
    decoder.patterns.append(Pattern(0, 1, b"\x00"))
    filler.budget = 5
    mem.dma_read(0x100, 16)
    assert filler.fills == ["write 0x100 0x5 0x0001020304"]
    filler.filled.clear()
    mem.dma_read(0x200, 16)
    assert len(filler.fills) == 1


def _replay(lines: list[str]) -> list[str]:
    """The replies of a fresh ``-qtest stdio`` emulator (which, like QEMU, keeps running at EOF)."""
    argv = ["emu-system-x86_64", "-M", "pc", "-m", "64M", "-display", "none", "-accel", "qtest",
            "-qtest", "stdio", "-qtest-log", "/dev/null"]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("".join(line + "\n" for line in lines))
        proc.stdin.flush()
        replies: list[str] = []
        while len(replies) < len(lines):
            line = proc.stdout.readline()
            assert line, "the emulator ended early"
            if not line.startswith("IRQ"):
                replies.append(line.rstrip("\n"))
        return replies
    finally:
        proc.kill()
        proc.wait()


def test_fw_cfg_dma_descriptor_read_is_filled_before_the_command(target: InProcessFuzzTarget) -> None:
    decoder, filler = target.decoder, target.filler
    assert decoder is not None and filler is not None
    decoder.patterns[:] = [Pattern(3, 1, b"\x00\x00\x00\x00")]
    decoder.pattern_index = 0
    filler.new_input()
    trace: list[tuple[str, str]] = []
    target._run("outl 0x514 0x0", trace)
    target._run("outl 0x518 0x100", trace)  # the big-endian register: descriptor at 0x10000
    target._run(f"readl {DESC:#x}", trace)
    fill = "write 0x10000 0x10 0x00000000000000010000000200000003"
    assert [c for c, _ in trace] == ["outl 0x514 0x0", fill, "outl 0x518 0x100", "readl 0x10000"]
    assert [r for _, r in trace] == ["OK", "OK", "OK", "OK 0x0000000000000000"]
    # fw_cfg wrote the (zero) control word back; the rest of the descriptor is the pattern
    replayed = _replay([c for c, _ in trace] + [f"read {DESC:#x} 0x10"])
    assert replayed == ["OK", "OK", "OK", "OK 0x0000000000000000", "OK 0x00000000000000010000000200000003"]
    target._reset()


def test_in_process_run_finds_nothing_and_counts_dma_fills(target: InProcessFuzzTarget) -> None:
    import random

    rng = random.Random(5)
    for _ in range(150):
        assert target.run_one(target.generate(rng)) is None
    data = SEPARATOR.join([bytes([7, 0, 0]) + b"\x11\x22", bytes([9])])  # a pattern, then clock_step
    assert target.run_one(data) is None
