"""The small ISA devices of QEMU's tests, in-process: pc-testdev, isa-debug-exit, pvpanic, the
ib700 watchdog, ports 0x80/0xf0/0x92.

Each device is mapped in a private I/O space built like the machine's (an empty bus reads all
ones) and driven through ``AddressSpace`` accesses, as the qtest ``in``/``out`` commands do.
Expected values come from QEMU 7.2 (``/root/qemu72/build/qemu-system-x86_64 -M pc -nodefaults
-accel qtest -qtest stdio [-device X]`` fed the same commands); the ``oracle`` tests replay
some scripts against that binary when it is present and compare every reply.
"""
from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest
from port_io import PortIO

from emu.clock import VirtualClock
from emu.devices.debug_exit import ISADebugExit, exit_status
from emu.devices.ib700 import IB700, NS_PER_S, VMSTATE_IB700
from emu.devices.ioport import PORT92_A20_LINE, VMSTATE_PORT92, Port92, port80_region, portf0_region
from emu.devices.pvpanic import PVPanic
from emu.devices.testdev import IOMEM_ADDR, PCTestdev
from emu.irq import IRQ
from emu.memory import AccessRules, AddressSpace, CallbackOps, MemoryRegion
from emu.migration.vmstate import save_state, vmdesc_fields

ORACLE = "/root/qemu72/build/qemu-system-x86_64"
S = NS_PER_S


class Bus(PortIO):
    """An I/O space (and a memory space) with the pc board's unassigned behaviour."""

    def __init__(self) -> None:
        rules = AccessRules(valid_min=1, valid_max=4, impl_min=1, impl_max=4, valid_unaligned=True,
                            impl_unaligned=True)
        self.io_root = MemoryRegion.io("io", 0x10000, CallbackOps(lambda o, s: (1 << (8 * s)) - 1,
                                                                 lambda o, v, s: None, rules))
        self.mem_root = MemoryRegion.container("system", 1 << 64)
        self.io = AddressSpace("I/O", self.io_root)
        self.mem = AddressSpace("memory", self.mem_root)

    def map(self, addr: int, region: MemoryRegion) -> None:
        self.io_root.add_subregion(addr, region)


class Levels:
    """Input lines that record every level they are set to."""

    def __init__(self, count: int) -> None:
        self.log: list[tuple[int, int]] = []
        self.lines = [IRQ(lambda n, level: self.log.append((n, level)), n) for n in range(count)]


@pytest.fixture
def testdev() -> Iterator[tuple[Bus, PCTestdev, Levels]]:
    bus, dev, levels = Bus(), PCTestdev(), Levels(16)
    for addr, region in dev.io_regions():
        bus.map(addr, region)
    bus.mem_root.add_subregion(IOMEM_ADDR, dev.iomem)
    for line, target in zip(dev.irq, levels.lines):
        line.connect(target)
    yield bus, dev, levels


# ---------------------------------------------------------------- pc-testdev

def endianness_steps(write_port: int, read_port: int) -> list[tuple[str, int, int, list[tuple[str, int, int]]]]:
    """QEMU's endianness-test sequences: (write op, port offset, value, [(read op, offset, expected)])
    with the writes going to ``write_port`` + offset and the reads to ``read_port`` + offset."""
    return [
        ("l", 0, 0x87654321, [("l", 0, 0x87654321), ("w", 2, 0x8765), ("w", 0, 0x4321), ("b", 3, 0x87),
                              ("b", 2, 0x65), ("b", 1, 0x43), ("b", 0, 0x21)]),
        ("w", 2, 0x8866, [("l", 0, 0x88664321), ("w", 2, 0x8866), ("w", 0, 0x4321), ("b", 3, 0x88)]),
        ("w", 0, 0x4422, [("l", 0, 0x88664422), ("w", 0, 0x4422), ("b", 1, 0x44), ("b", 0, 0x22)]),
        ("b", 3, 0x87, [("l", 0, 0x87664422), ("w", 2, 0x8766), ("b", 3, 0x87)]),
        ("b", 2, 0x65, [("l", 0, 0x87654422), ("w", 2, 0x8765), ("w", 0, 0x4422)]),
        ("b", 1, 0x43, [("l", 0, 0x87654322), ("w", 0, 0x4322), ("b", 1, 0x43)]),
        ("b", 0, 0x21, [("l", 0, 0x87654321), ("w", 0, 0x4321), ("b", 0, 0x21)]),
    ]


@pytest.mark.parametrize("write_port, read_port", [(0xE0, 0xE0), (0xE8, 0xE0), (0xE0, 0xE8), (0xE8, 0xE8)],
                         ids=["plain", "split", "combine", "byte"])
def test_testdev_endianness_sequences(testdev, write_port, read_port):
    bus = testdev[0]
    out = {"b": bus.outb, "w": bus.outw, "l": bus.outl}
    inp = {"b": bus.inb, "w": bus.inw, "l": bus.inl}
    for wop, woff, value, reads in endianness_steps(write_port, read_port):
        out[wop](write_port + woff, value)
        for rop, roff, expected in reads:
            assert inp[rop](read_port + roff) == expected, (wop, woff, rop, roff)


def test_testdev_unaligned_and_neighbour_reads(testdev):
    bus = testdev[0]
    bus.outl(0xE0, 0x87654321)
    # QEMU 7.2: 0xe1 byte, 0xe2 word, then the flush page refuses a byte access and reads 0
    assert bus.inl(0xE1) == 0x00876543
    assert bus.inw(0xE1) == 0x6543
    assert bus.inl(0xE9) == 0xFF876543  # after the byte latch comes an empty port
    assert (bus.inl(0xE4), bus.inb(0xE4), bus.inw(0xE4)) == (0, 0, 0)
    bus.outl(0xE4, 0x1000)  # flush page: no visible effect
    assert bus.inl(0xE0) == 0x87654321


def test_testdev_irq_lines(testdev):
    bus, dev, levels = testdev
    bus.outb(0x2003, 1)
    bus.outb(0x2003, 5)
    bus.outb(0x2003, 0)
    bus.outb(0x200F, 2)
    bus.outw(0x2004, 1)  # byte-only region: two byte writes, IRQ 4 := 1 then IRQ 5 := 0
    assert levels.log == [(3, 1), (3, 1), (3, 0), (15, 1), (4, 1), (5, 0)]
    assert bus.inb(0x2000) == 0 and bus.inl(0x2016) == 0xFFFF0000
    bus.outb(0x2010, 1)  # beyond the 16 ISA IRQs: ignored (QEMU asserts)
    assert levels.log[-1] == (5, 0)


def test_testdev_iomem(testdev):
    mem = testdev[0].mem
    mem.write_uint(0xFF000000, 0x11223344, 4)
    assert mem.read_uint(0xFF000000, 4) == 0x11223344
    assert mem.read_uint(0xFF000000, 8) == 0x11223344
    assert mem.read_uint(0xFF000003, 1) == 0x11
    assert mem.read_uint(0xFF000001, 2) == 0x2233
    mem.write_uint(0xFF000008, 0x0102030405060708, 8)
    assert mem.read_uint(0xFF000008, 8) == 0x0102030405060708
    assert mem.read_uint(0xFF00000C, 4) == 0x01020304
    assert bytes(mem.read(0xFF000000, 16)).hex() == "44332211000000000807060504030201"
    mem.write(0xFF00FFF0, bytes.fromhex("ddccbbaa"))
    assert mem.read_uint(0xFF00FFF0, 4) == 0xAABBCCDD
    assert mem.read_uint(0xFF00FFFE, 4) == 0  # last word of iomem, then unassigned memory
    assert testdev[1].iomem.size == 0x10000


def test_testdev_state_survives_reset(testdev):
    bus, dev, _ = testdev
    bus.outl(0xE0, 0xCAFEF00D)
    dev.reset()
    assert bus.inl(0xE0) == 0xCAFEF00D  # QEMU's pc-testdev has no reset handler


# ---------------------------------------------------------------- isa-debug-exit

def debug_exit(**kwargs: int) -> tuple[Bus, list[int]]:
    bus, calls = Bus(), []
    dev = ISADebugExit(exit_request=calls.append, **kwargs)
    if dev.io is not None:
        bus.map(dev.iobase, dev.io)
    return bus, calls


@pytest.mark.parametrize("op, port, value, status", [
    ("b", 0x501, 3, 7), ("b", 0x501, 0xFF, 255), ("w", 0x502, 0x1234, 105), ("l", 0x501, 0x80, 1), ("b", 0x502, 0, 1),
])
def test_debug_exit_status(op, port, value, status):
    # statuses are QEMU 7.2's process exit codes for the same writes
    bus, calls = debug_exit()
    {"b": bus.outb, "w": bus.outw, "l": bus.outl}[op](port, value)
    assert calls == [status]


def test_debug_exit_reads_and_size():
    bus, calls = debug_exit()
    assert (bus.inb(0x501), bus.inw(0x501), bus.inb(0x503)) == (0, 0, 0xFF)
    bus, calls = debug_exit(iobase=0x600, iosize=1)
    bus.outb(0x601, 5)
    bus.outb(0x501, 5)
    assert calls == []
    bus.outb(0x600, 0x40)
    assert calls == [0x81]
    assert ISADebugExit(iosize=0).io is None
    assert exit_status(0x12345678) == 0xF1


# ---------------------------------------------------------------- pvpanic

def test_pvpanic_events_and_reads():
    bus, events = Bus(), []
    dev = PVPanic(panic_event=events.append)
    bus.map(dev.ioport, dev.io)
    assert bus.inb(0x505) == 3
    for value in (1, 2, 3, 4, 0):
        bus.outb(0x505, value)
    assert events == ["panicked", "crash-loaded", "panicked"]
    assert dev.fw_cfg_file() == ("etc/pvpanic-port", b"\x05\x05")
    other = PVPanic(ioport=0x600, events=0x81)
    bus.map(0x600, other.io)
    assert bus.inb(0x600) == 0x81


# ---------------------------------------------------------------- ib700

@pytest.fixture
def watchdog() -> Iterator[tuple[Bus, IB700, VirtualClock, list[int]]]:
    clock = VirtualClock(manual=True)
    clock.enable(True)
    fired: list[int] = []
    dev = IB700(clock, lambda: fired.append(clock.now()))
    bus = Bus()
    bus.map(0x441, dev.io)
    yield bus, dev, clock, fired


def test_ib700_qemu_test_sequence(watchdog):
    """wdt_ib700-test's ib700_program_and_wait, step by step."""
    bus, dev, clock, fired = watchdog
    clock.advance_to(40 * S)
    bus.outb(0x443, 14)  # 2 s
    clock.advance_to(41 * S)
    bus.outb(0x443, 14)  # ping
    clock.advance_to(42 * S)
    bus.outb(0x441, 1)  # disable
    clock.advance_to(45 * S)
    assert fired == []
    bus.outb(0x443, 13)  # 4 s
    clock.advance_to(48 * S)
    assert fired == []
    clock.advance_to(50 * S)
    assert fired == [49 * S]
    assert not dev.timer.pending
    clock.advance_to(100 * S)
    assert fired == [49 * S]  # one-shot


@pytest.mark.parametrize("op, port, value, fires_at", [
    ("b", 0x443, 0, 30 * S), ("b", 0x444, 15, 0), ("b", 0x443, 0x1E, 2 * S),
    ("w", 0x443, 0x0E0F, 2 * S),  # both bytes land on the enable pair: the second one counts
    ("w", 0x442, 0x0D00, None),  # the high byte would go to another pair: only "disable" runs
    ("l", 0x443, 14, None),  # the whole dword goes to the region, which has no dword handler
    ("b", 0x441, 0, None), ("b", 0x442, 0, None),
])
def test_ib700_port_writes(watchdog, op, port, value, fires_at):
    # each row checked against QEMU 7.2 with -watchdog-action debug and clock_step
    bus, dev, clock, fired = watchdog
    {"b": bus.outb, "w": bus.outw, "l": bus.outl}[op](port, value)
    clock.advance_to(40 * S)
    assert fired == ([] if fires_at is None else [fires_at])


def test_ib700_reads_disable_and_reset(watchdog):
    bus, dev, clock, fired = watchdog
    assert (bus.inb(0x441), bus.inb(0x443), bus.inw(0x441), bus.inl(0x441)) == (0xFF, 0xFF, 0xFFFF, 0xFFFFFFFF)
    bus.outb(0x443, 0)
    bus.outb(0x442, 0)
    clock.advance_to(40 * S)
    bus.outb(0x443, 0)
    dev.reset()
    clock.advance_to(80 * S)
    assert fired == []


def test_ib700_vmstate(watchdog):
    bus, dev, clock, fired = watchdog
    assert dev.save_vmstate() == {"timer": -1}
    assert save_state(VMSTATE_IB700, dev.save_vmstate()) == b"\xff" * 8
    clock.advance_to(5 * S)
    bus.outb(0x443, 14)
    state = dev.save_vmstate()
    assert state == {"timer": 7 * S}
    assert save_state(VMSTATE_IB700, state) == (7 * S).to_bytes(8, "big")
    assert vmdesc_fields(VMSTATE_IB700) == {"vmsd_name": "ib700_wdt", "version": 0,
                                           "fields": [{"name": "timer", "type": "timer", "size": 8}]}
    clock2 = VirtualClock(manual=True)
    clock2.enable(True)
    fired2: list[int] = []
    dest = IB700(clock2, lambda: fired2.append(clock2.now()))
    dest.load_vmstate(state)
    clock2.advance_to(10 * S)
    assert fired2 == [7 * S]
    dest.load_vmstate({"timer": -1})
    assert not dest.timer.pending


# ---------------------------------------------------------------- ports 0x80, 0xf0, 0x92

def test_port80_and_f0():
    bus, f0_writes = Bus(), []
    bus.map(0x80, port80_region())
    bus.map(0xF0, portf0_region(lambda: f0_writes.append(1)))
    bus.outb(0x80, 0x12)
    assert (bus.inb(0x80), bus.inw(0x80), bus.inl(0x80)) == (0xFF, 0xFFFF, 0xFFFFFFFF)
    bus.outb(0xF0, 0)
    assert bus.inb(0xF0) == 0xFF and f0_writes == [1]


def test_port92_a20_and_reset():
    bus, dev, a20, resets = Bus(), Port92(), Levels(1), []
    bus.map(0x92, dev.io)
    dev.gpio_out[PORT92_A20_LINE][0].connect(a20.lines[0])
    dev.reset_request = lambda: resets.append(bus.inb(0x92))
    assert bus.inb(0x92) == 0
    bus.outb(0x92, 2)
    assert bus.inb(0x92) == 2 and a20.log == [(0, 1)] and resets == []
    bus.outb(0x92, 3)
    bus.outb(0x92, 3)  # bit 0 already set: no second reset
    assert resets == [3]
    dev.reset()
    assert bus.inb(0x92) == 2  # reset clears bit 0 only
    bus.outb(0x92, 0xFD)
    assert resets == [3, 0xFD] and a20.log[-1] == (0, 0)


def test_port92_vmstate():
    dev = Port92()
    dev.io.ops.write(0, 0x02, 1)
    assert save_state(VMSTATE_PORT92, dev.save_vmstate()) == b"\x02"
    assert (VMSTATE_PORT92.name, VMSTATE_PORT92.version_id, dev.vmstate_id()) == ("port92", 1, ("port92", 0))
    other = Port92()
    other.load_vmstate({"outport": 0x03})
    assert other.io.ops.read(0, 1) == 3


# ---------------------------------------------------------------- live oracle

def oracle_replies(device_args: list[str], commands: list[str]) -> list[str]:
    """QEMU 7.2's qtest replies (``OK ...`` lines) for the commands. QEMU stays up after its
    stdin closes, so the replies are read one per command and the process is then killed."""
    proc = subprocess.Popen([ORACLE, "-M", "pc", "-nodefaults", "-display", "none", "-accel", "qtest", "-qtest",
                             "stdio", "-qtest-log", "/dev/null", "-S", *device_args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write("".join(c + "\n" for c in commands))
        proc.stdin.flush()
        replies: list[str] = []
        while len(replies) < len(commands):
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith(("OK", "FAIL")):
                replies.append(line.rstrip("\n"))
        return replies
    finally:
        proc.kill()
        proc.wait()


def local_replies(bus: Bus, commands: list[str]) -> list[str]:
    """Our replies, formatted as QEMU's qtest server formats them."""
    replies = []
    for cmd in commands:
        op, *args = cmd.split()
        addr = int(args[0], 0)
        if op.startswith("out"):
            bus.io.write_uint(addr, int(args[1], 0), {"outb": 1, "outw": 2, "outl": 4}[op])
            replies.append("OK")
        elif op.startswith("in"):
            replies.append(f"OK 0x{bus.io.read_uint(addr, {'inb': 1, 'inw': 2, 'inl': 4}[op]):04x}")
        elif op.startswith("write"):
            bus.mem.write_uint(addr, int(args[1], 0), {"writeb": 1, "writew": 2, "writel": 4, "writeq": 8}[op])
            replies.append("OK")
        else:
            value = bus.mem.read_uint(addr, {"readb": 1, "readw": 2, "readl": 4, "readq": 8}[op])
            replies.append(f"OK 0x{value:016x}")
    return replies


@pytest.mark.skipif(not os.access(ORACLE, os.X_OK), reason="QEMU 7.2 oracle not built")
def test_testdev_against_oracle(testdev):
    commands = ["outl 0xe0 0x87654321"]
    for width, step in (("b", 1), ("w", 2), ("l", 4)):
        commands += [f"in{width} 0x{port:x}" for port in range(0xE0, 0xEC, step)]
    commands += ["outw 0xea 0x1122", "outb 0xe9 0x33", "inl 0xe0", "inl 0xe8", "outb 0xe1 0x44", "inl 0xe1"]
    commands += ["writel 0xff000000 0x11223344", "readq 0xff000000", "readw 0xff000001", "writew 0xff00fffe 0xbeef",
                 "readl 0xff00fffc", "readb 0xff00ffff", "writeq 0xff000010 0x0102030405060708", "readl 0xff000014"]
    assert local_replies(testdev[0], commands) == oracle_replies(["-device", "pc-testdev"], commands)
