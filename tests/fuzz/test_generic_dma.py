"""DMA-pattern answers of the in-process generic fuzzer (``qtest.fuzz qtest --in-process``):
device reads of guest RAM are filled with the input's patterns just before the device reads
them (QEMU's ``fuzz_dma_read_cb`` rules), recorded as ``write`` lines ahead of the command, and
the trace replays out of process; plus the runner keeping the input of a worker its watchdog ended."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from emu.memory import AddressSpace, CallbackOps, MemoryRegion
from qtest.fuzz.common import dead_worker_finding, inflight_path, watchdog_path
from qtest.fuzz.generic import default_args, make_target
from qtest.fuzz.generic_ops import OUT_FMT, SEPARATOR, Decoder, FuzzSpace, Pattern
from qtest.fuzz.generic_target import replay
from qtest.fuzz.inprocess import FILL_BUDGET, FILL_CAP, DmaFiller, InProcessFuzzTarget

DESC = 0x10000  # where the fw_cfg DMA descriptor is put
ZERO_STEP = Pattern(0, 0, b"\xaa")  # renders as aa aa aa ...


def _bench(avoid_double_fetch: bool = False) -> tuple[AddressSpace, Decoder, DmaFiller]:
    """RAM [0, 0x20000), an MMIO hole [0x20000, 0x21000), a second RAM [0x21000, 0x22000)."""
    root = MemoryRegion.container("mem", 1 << 32)
    main = MemoryRegion.ram("ram", 0x20000)
    root.add_subregion(0, main)
    root.add_subregion(0x20000, MemoryRegion.io("mmio", 0x1000, CallbackOps(lambda o, s: 0, lambda o, v, s: None)))
    root.add_subregion(0x21000, MemoryRegion.ram("other", 0x1000))
    mem = AddressSpace("mem", root)
    decoder = Decoder(FuzzSpace([], []))
    filler = DmaFiller(mem, decoder, avoid_double_fetch=avoid_double_fetch)
    mem.dma_read_hook = filler
    return mem, decoder, filler


def test_fill_is_the_rendered_pattern_round_robin_and_not_refilled_within_an_op() -> None:
    mem, decoder, filler = _bench()
    mem.dma_read(0x100, 8)
    assert filler.fills == []  # no pattern: nothing filled
    decoder.patterns += [Pattern(1, 2, b"\x00\x01\x02"), ZERO_STEP]
    assert bytes(mem.dma_read(0x100, 12)) == bytes.fromhex("00 01 02 00 03 02 00 05 02 00 07 02")
    assert filler.fills == ["write 0x100 0xc 0x000102000302000502000702"]
    mem.dma_read(0x104, 16)  # overlaps a range filled since the last op: not refilled
    assert len(filler.fills) == 1 and decoder.pattern_index == 1
    filler.filled.clear()  # the next op
    assert bytes(mem.dma_read(0x104, 4)) == b"\xaa" * 4 and decoder.pattern_index == 0
    mem.read(0x200, 4)  # qtest's and the vCPU's reads are not device reads
    assert len(filler.fills) == 2


def test_fills_write_only_ram_split_per_range_and_start_in_ram() -> None:
    mem, decoder, filler = _bench()
    decoder.patterns.append(ZERO_STEP)
    mem.dma_read(0x20000 - 2, 0x1000 + 4)  # RAM, the MMIO hole, then the other RAM
    assert filler.fills == ["write 0x1fffe 0x2 0xaaaa", "write 0x21000 0x2 0xaaaa"]
    filler.filled.clear()
    mem.dma_read(0x20ffe, 4)  # starts in MMIO: QEMU fills only reads that start in RAM
    assert len(filler.fills) == 2
    filler.main_ram = mem.lookup(0).mr.block  # only the machine's main RAM, as QEMU's check
    mem.dma_read(0x21000, 4)
    assert len(filler.fills) == 2
    mem.dma_read(0x300, 4)
    assert filler.fills[-1] == "write 0x300 0x4 0xaaaaaaaa"


def test_each_fill_is_capped() -> None:
    mem, decoder, filler = _bench()
    decoder.patterns.append(Pattern(0, 1, b"\x00"))
    mem.dma_read(0, 3 * FILL_CAP)
    assert [f.split()[1:3] for f in filler.fills] == [["0x0", f"{FILL_CAP:#x}"]]
    assert bytes(mem.read(FILL_CAP - 2, 4)) == b"\xfe\xff\x00\x00"  # the cap's end; the rest untouched
    assert filler.written == FILL_CAP


def test_no_fill_takes_the_input_over_its_budget() -> None:
    mem, decoder, filler = _bench()
    decoder.patterns.append(ZERO_STEP)
    filler.written = FILL_BUDGET - 8
    mem.dma_read(0x100, 9)  # QEMU tests the uncapped length against what is left
    assert filler.fills == []
    mem.dma_read(0x100, 8)
    assert filler.fills == ["write 0x100 0x8 0xaaaaaaaaaaaaaaaa"] and filler.written == FILL_BUDGET
    filler.new_input()  # every input starts with the whole budget
    assert filler.written == 0
    mem.dma_read(0x200, 1)
    assert len(filler.fills) == 2


def test_avoid_double_fetch_fills_only_the_head_and_tail_around_a_filled_range() -> None:
    mem, decoder, filler = _bench(avoid_double_fetch=True)
    decoder.patterns += [Pattern(0, 0, b"\x11"), Pattern(0, 0, b"\x22"), Pattern(0, 0, b"\x33")]
    mem.dma_read(0x108, 8)
    assert bytes(mem.dma_read(0x100, 0x18)) == b"\x22" * 8 + b"\x11" * 8 + b"\x33" * 8
    assert filler.fills[1:] == ["write 0x100 0x8 0x" + "22" * 8, "write 0x110 0x8 0x" + "33" * 8]
    mem.dma_read(0x104, 8)  # inside what is filled: nothing
    assert len(filler.fills) == 3


@pytest.fixture(scope="module")
def target():
    t = make_target(default_args(in_process=True, args="-m 64M -device isa-debug-exit"))
    assert isinstance(t, InProcessFuzzTarget)
    yield t
    t.close()


def _replay(lines: list[str]) -> list[str]:
    """The replies of a fresh ``-qtest stdio`` emulator (which, like QEMU, keeps running at EOF)."""
    argv = ["emu-system-x86_64", "-M", "pc", "-m", "64M", "-device", "isa-debug-exit", "-display", "none",
            "-accel", "qtest", "-qtest", "stdio", "-qtest-log", "/dev/null"]
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


def _out_op(target: InProcessFuzzTarget, port: int, value: int, size: int = 2) -> bytes:
    """An OUT op (outl; ``size`` 0: outb) that the target's fuzz space decodes to ``port``."""
    assert target.space is not None
    index = next(i for i, r in enumerate(target.space.pio) if r.start <= port < r.start + r.size)
    return bytes([1]) + OUT_FMT.pack(size, index, port - target.space.pio[index].start, value)


def _fw_cfg_dma_input(target: InProcessFuzzTarget) -> bytes:
    return SEPARATOR.join([bytes([7, 3, 1]) + b"\x00\x00\x00\x00",  # ADD_DMA_PATTERN index 3, stride 1
                           _out_op(target, 0x514, 0), _out_op(target, 0x518, 0x100)])  # descriptor at 0x10000


@pytest.mark.subprocess
def test_fw_cfg_dma_input_puts_the_fill_before_its_outl_and_replays_the_same(target: InProcessFuzzTarget) -> None:
    data = _fw_cfg_dma_input(target)
    assert target.run_one(data) is None
    fill = "write 0x10000 0x10 0x00000000000000010000000200000003"
    ops = target.last_trace[len(target.setup_lines):]
    assert ops == ["outl 0x514 0x0", fill, "outl 0x518 0x100"]
    # fw_cfg wrote the (zero) control word back; the rest of the descriptor is the pattern
    ram = target.system.vm.machine.address_space_memory
    in_process = bytes(ram.read(DESC, 16))
    assert in_process == bytes.fromhex("00000000000000010000000200000003")
    replayed = _replay(target.last_trace + [f"read {DESC:#x} 0x10"])
    assert replayed[-4:] == ["OK", "OK", "OK", "OK 0x" + in_process.hex()]
    # without the pattern nothing is filled and the descriptor stays as the last input left it
    assert target.run_one(SEPARATOR.join(data.split(SEPARATOR)[1:])) is None
    assert fill not in target.last_trace


@pytest.mark.subprocess
def test_an_exception_out_of_a_device_is_a_crash_and_the_machine_is_rebuilt(target: InProcessFuzzTarget) -> None:
    def broken(addr: int, length: int) -> None:
        raise RuntimeError(f"bad DMA read at {addr:#x}")

    target.system.vm.machine.address_space_memory.dma_read_hook = broken
    data = _fw_cfg_dma_input(target)
    finding = target.run_one(data)
    assert finding is not None and finding.kind == "crash"
    assert finding.message.startswith("RuntimeError: bad DMA read at 0x10000 (at ")
    assert finding.reproducer.decode().endswith("outl 0x514 0x0\noutl 0x518 0x100\n")
    assert target.run_one(data) is None  # a new machine, with the fuzzer's hook
    assert "write 0x10000 0x10 0x00000000000000010000000200000003" in target.last_trace


@pytest.mark.subprocess
def test_an_exit_request_is_a_crash_that_replays_out_of_process(target: InProcessFuzzTarget) -> None:
    finding = target.run_one(_out_op(target, 0x501, 0x21, size=0))
    assert finding is not None and finding.kind == "crash" and "status 67" in finding.message
    lines = finding.reproducer.decode().splitlines()
    assert lines[-1] == "outb 0x501 0x21"
    assert replay(target.replay_argv(), lines, 10, 1 << 30)[0] == "crash"


@pytest.mark.subprocess
def test_qtest_reads_of_guest_memory_are_not_dma(target: InProcessFuzzTarget) -> None:
    assert target.decoder is not None and target.filler is not None
    target.decoder.patterns[:] = [ZERO_STEP]
    trace: list[tuple[str, str]] = []
    for line in ("read 0x20000 0x10", "b64read 0x20000 0x10", "readl 0x20000"):
        target._run(line, trace)
    assert [c for c, _ in trace] == ["read 0x20000 0x10", "b64read 0x20000 0x10", "readl 0x20000"]
    target.decoder.start_input()


@pytest.mark.subprocess
def test_in_process_run_of_200_inputs_finds_nothing(tmp_path: Path) -> None:
    out = tmp_path / "findings"
    proc = subprocess.run([sys.executable, "-m", "qtest.fuzz", "qtest", "--in-process", "--count", "200",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "200 execs" in proc.stderr and "0 finding(s)" in proc.stderr
    assert "in process: " in proc.stderr
    assert not out.exists() or not list(out.iterdir())  # no reproducer, no in-flight input left


def test_a_worker_its_watchdog_ended_leaves_its_input_as_a_hang(tmp_path: Path) -> None:
    args = argparse.Namespace(out=str(tmp_path), target="qtest")
    pid = 4242
    inflight = inflight_path(args, pid)
    inflight.parent.mkdir(parents=True)
    inflight.write_bytes(b"\x09FUZZ\x09")
    dump = watchdog_path(args, pid)
    hang = (f"import faulthandler, time\nf = open({str(dump)!r}, 'w')\n"
            "faulthandler.dump_traceback_later(0.2, exit=True, file=f)\ntime.sleep(30)\n")
    ended = subprocess.run([sys.executable, "-c", hang], timeout=30)
    assert ended.returncode == 1
    finding = dead_worker_finding(args, pid, ended.returncode)
    assert finding is not None and finding.kind == "hang"
    assert finding.reproducer == b"\x09FUZZ\x09" and finding.suffix == ".bin"
    assert 'File "<string>", line 4' in finding.message
    assert not inflight.exists() and not dump.exists()
    assert dead_worker_finding(args, pid + 1, 1) is None  # died before its first input
