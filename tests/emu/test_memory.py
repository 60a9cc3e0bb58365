"""The memory model: flattening rules, MMIO dispatch and access sizes, and a hypothesis stateful
test that checks region maps and accesses against a plain-Python, per-byte reference model."""
from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from emu.memory import AccessRules, AddressSpace, MemoryRegion, _access_size


class Recorder:
    """An MMIO device that answers reads with a function of the offset and logs every access."""

    def __init__(self, ident: int, rules: AccessRules | None = None) -> None:
        self.ident = ident
        self.log: list[tuple[str, int, int, int]] = []
        self.rules = rules or AccessRules(valid_min=1, valid_max=8, impl_min=1, impl_max=1)

    def byte_at(self, offset: int) -> int:
        return (offset * 7 + self.ident * 13) & 0xFF

    def read(self, offset: int, size: int) -> int:
        self.log.append(("r", offset, size, 0))
        return int.from_bytes(bytes(self.byte_at(offset + i) for i in range(size)), "little")

    def write(self, offset: int, value: int, size: int) -> None:
        self.log.append(("w", offset, size, value))


def test_priority_and_tie_break_and_holes():
    root = MemoryRegion.container("root", 1 << 64)
    low = MemoryRegion.ram("low", 0x3000)
    high = MemoryRegion.ram("high", 0x1000)
    later = MemoryRegion.ram("later", 0x1000)
    root.add_subregion(0, low)
    root.add_subregion(0x1000, high, priority=1)
    root.add_subregion(0x2000, later)  # same priority as low, added later: wins the tie
    asp = AddressSpace("t", root)
    names = [(fr.start, fr.last, fr.mr.name) for fr in asp.ranges]
    assert names == [(0, 0xFFF, "low"), (0x1000, 0x1FFF, "high"), (0x2000, 0x2FFF, "later")]
    asp.write(0xFFE, b"abcd")
    assert low.block.read(0xFFE, 2) == b"ab" and high.block.read(0, 2) == b"cd"
    assert asp.read(0x2FFE, 4) == b"\0\0\0\0"  # past the end: unassigned reads zero


def test_alias_container_disable_and_rom():
    root = MemoryRegion.container("root", 1 << 64)
    ram = MemoryRegion.ram("ram", 0x4000)
    root.add_subregion(0, MemoryRegion.alias("below", ram, 0, 0x2000))
    root.add_subregion(0x10000, MemoryRegion.alias("above", ram, 0x2000, 0x2000))
    rom = MemoryRegion.rom("rom", 0x1000, b"\xee" * 0x1000)
    root.add_subregion(0x1000, rom, priority=1)
    asp = AddressSpace("t", root)
    asp.write(0x10000, b"\x11\x22")
    assert ram.block.read(0x2000, 2) == b"\x11\x22"
    assert asp.read(0x1000, 2) == b"\xee\xee"
    asp.write(0x1000, b"\0\0")  # ROM swallows writes
    assert asp.read(0x1000, 2) == b"\xee\xee"
    rom.set_enabled(False)
    assert asp.read(0x1000, 2) == b"\0\0"  # RAM underneath shows again
    asp.write(0x1000, b"\x33")
    assert ram.block.read(0x1000, 1) == b"\x33"


def test_mmio_access_sizes_follow_qemu_rules():
    root = MemoryRegion.container("root", 1 << 64)
    dev = Recorder(1, AccessRules(valid_min=1, valid_max=4, impl_min=4, impl_max=4))
    root.add_subregion(0x1000, MemoryRegion.io("dev", 0x100, dev))
    asp = AddressSpace("t", root)
    asp.read_uint(0x1000, 8)  # split into two 4-byte accesses
    assert [(k, o, s) for k, o, s, _ in dev.log] == [("r", 0, 4), ("r", 4, 4)]
    dev.log.clear()
    asp.read_uint(0x1002, 2)  # aligned 2-byte access widened to the 4-byte implementation
    assert [(k, o, s) for k, o, s, _ in dev.log] == [("r", 2, 4)]
    dev.log.clear()
    asp.write_uint(0x1001, 0xAABBCC, 4)  # unaligned: 1 + 2 + 1 bytes, each widened to 4
    assert [(o, s, v) for _, o, s, v in dev.log] == [(1, 4, 0xCC), (2, 4, 0xAABB), (4, 4, 0)]


def test_io_root_reads_all_ones_where_nothing_is_mapped():
    from emu.machine import find_machine

    machine = find_machine("none")(None, manual_clock=True)
    io = machine.address_space_io
    assert io.read_uint(0x1234, 1) == 0xFF and io.read_uint(0x1234, 2) == 0xFFFF
    assert io.read_uint(0x1234, 4) == 0xFFFFFFFF


def test_pc_layout_splits_ram_around_the_pci_hole():
    from emu.machine.pc import PcMachine, split_ram

    assert split_ram(64 << 20) == (64 << 20, 0)
    assert split_ram(0xE0000000) == (0xC0000000, 0x20000000)
    assert split_ram(0xDFFFFFFF) == (0xDFFFFFFF, 0)
    m = PcMachine(0xE0000000 + (1 << 20), manual_clock=True)
    ranges = [(fr.start, fr.last, fr.mr.name) for fr in m.address_space_memory.iter_ranges()]
    assert ranges[0] == (0, 0xBFFFF, "pc.ram")
    assert (0x100000, 0xBFFFFFFF, "pc.ram") in ranges
    assert (0x100000000, 0x100000000 + 0x20100000 - 1, "pc.ram") in ranges
    asp = m.address_space_memory
    asp.write_uint(0x100000000, 0xABCD, 2)
    assert m.ram_blocks[0].read(0xC0000000, 2) == b"\xcd\xab"
    assert asp.read_uint(0xFFFFFFF0, 1) == 0xEA  # reset vector: far jump


# ---------------------------------------------------------------- stateful model check

SPACE = 0x8000


class Model:
    """Per-byte reference: resolves an address by walking the tree with QEMU's visibility rules."""

    def __init__(self, root: MemoryRegion) -> None:
        self.root = root
        self.data: dict[int, bytearray] = {}  # id(region) -> bytes of RAM/ROM

    def backing(self, mr: MemoryRegion) -> bytearray:
        return self.data.setdefault(id(mr), bytearray(mr.block.size))

    def resolve(self, mr: MemoryRegion, base: int, addr: int) -> tuple[MemoryRegion, int] | None:
        if not mr.enabled or not base <= addr < base + mr.size:
            return None
        if mr.kind == "alias":
            return self.resolve(mr.alias_target, base - mr.alias_offset, addr)
        for sub in sorted(mr.subregions, key=lambda s: (-s.priority, -s._seq)):
            hit = self.resolve(sub, base + sub.addr, addr)
            if hit:
                return hit
        if mr.kind in ("ram", "rom", "io"):
            return mr, addr - base
        return None

    def read(self, addr: int, n: int) -> bytes:
        out = bytearray()
        a = addr
        while a < addr + n:
            hit = self.resolve(self.root, 0, a)
            if hit is not None and hit[0].kind == "io":
                # the access goes whole to the region of its first byte, even past its end
                size = _access_size(hit[0].ops.rules, hit[1], addr + n - a)
                out += bytes(hit[0].ops.byte_at(hit[1] + i) for i in range(size))
                a += size
                continue
            out.append(0 if hit is None else self.backing(hit[0])[hit[0].block_offset + hit[1]])
            a += 1
        return bytes(out)

    def write(self, addr: int, data: bytes) -> list[tuple[int, int, int]]:
        mmio: list[tuple[int, int, int]] = []
        i = 0
        while i < len(data):
            hit = self.resolve(self.root, 0, addr + i)
            if hit is not None and hit[0].kind == "io":
                size = _access_size(hit[0].ops.rules, hit[1], len(data) - i)
                mmio += [(hit[0].ops.ident, hit[1] + k, data[i + k]) for k in range(size)]
                i += size
                continue
            if hit is not None and hit[0].kind != "rom":
                self.backing(hit[0])[hit[0].block_offset + hit[1]] = data[i]
            i += 1
        return mmio


class MemoryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = MemoryRegion.container("root", 1 << 64)
        self.asp = AddressSpace("t", self.root)
        self.model = Model(self.root)
        self.containers = [self.root]
        self.terminals: list[MemoryRegion] = []
        self.placed: list[MemoryRegion] = []
        self.devices: list[Recorder] = []

    def _place(self, parent_idx: int, addr: int, mr: MemoryRegion, prio: int) -> None:
        parent = self.containers[parent_idx % len(self.containers)]
        parent.add_subregion(addr % min(parent.size, SPACE), mr, prio)
        self.placed.append(mr)

    @rule(parent=st.integers(0, 99), addr=st.integers(0, SPACE), size=st.integers(1, 0x2000), prio=st.integers(-1, 2))
    def add_ram(self, parent, addr, size, prio):
        mr = MemoryRegion.ram(f"ram{len(self.terminals)}", size)
        self.terminals.append(mr)
        self._place(parent, addr, mr, prio)

    @rule(parent=st.integers(0, 99), addr=st.integers(0, SPACE), size=st.integers(1, 0x800), prio=st.integers(-1, 2),
          fill=st.integers(0, 255))
    def add_rom(self, parent, addr, size, prio, fill):
        mr = MemoryRegion.rom(f"rom{len(self.terminals)}", size, bytes([fill]) * size)
        self.model.backing(mr)[:size] = bytes([fill]) * size
        self.terminals.append(mr)
        self._place(parent, addr, mr, prio)

    @rule(parent=st.integers(0, 99), addr=st.integers(0, SPACE), size=st.integers(1, 0x400), prio=st.integers(-1, 2))
    def add_mmio(self, parent, addr, size, prio):
        dev = Recorder(len(self.devices))
        self.devices.append(dev)
        mr = MemoryRegion.io(f"io{dev.ident}", size, dev)
        self.terminals.append(mr)
        self._place(parent, addr, mr, prio)

    @rule(parent=st.integers(0, 99), addr=st.integers(0, SPACE), size=st.integers(1, 0x4000), prio=st.integers(-1, 2))
    def add_container(self, parent, addr, size, prio):
        mr = MemoryRegion.container(f"c{len(self.containers)}", size)
        self._place(parent, addr, mr, prio)
        self.containers.append(mr)

    @precondition(lambda self: self.terminals)
    @rule(parent=st.integers(0, 99), addr=st.integers(0, SPACE), which=st.integers(0, 99), data=st.data(),
          prio=st.integers(-1, 2))
    def add_alias(self, parent, addr, which, data, prio):
        target = self.terminals[which % len(self.terminals)]
        off = data.draw(st.integers(0, target.size - 1))
        size = data.draw(st.integers(1, target.size - off))
        self._place(parent, addr, MemoryRegion.alias(f"a{len(self.placed)}", target, off, size), prio)

    @precondition(lambda self: self.placed)
    @rule(which=st.integers(0, 99))
    def toggle(self, which):
        mr = self.placed[which % len(self.placed)]
        mr.set_enabled(not mr.enabled)

    @precondition(lambda self: self.placed)
    @rule(which=st.integers(0, 99))
    def remove(self, which):
        mr = self.placed.pop(which % len(self.placed))
        mr.parent.del_subregion(mr)
        if mr in self.containers:
            self.containers.remove(mr)

    @rule(addr=st.integers(0, SPACE), data=st.binary(min_size=1, max_size=64))
    def write(self, addr, data):
        for dev in self.devices:
            dev.log.clear()
        expected = self.model.write(addr, data)
        self.asp.write(addr, data)
        got = [(d.ident, off, value) for d in self.devices for kind, off, size, value in d.log]
        assert sorted(got) == sorted(expected)

    @rule(addr=st.integers(0, SPACE), n=st.integers(1, 64))
    def read(self, addr, n):
        assert bytes(self.asp.read(addr, n)) == self.model.read(addr, n)

    @invariant()
    def flat_view_is_sorted_and_disjoint(self):
        ranges = list(self.asp.iter_ranges())
        for a, b in zip(ranges, ranges[1:]):
            assert a.last < b.start


TestMemoryModel = MemoryMachine.TestCase
TestMemoryModel.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


def test_replaced_flat_tables_are_freed_unless_a_lockfree_reader_may_hold_them():
    """A PAM toggle re-renders the view: the old C table is freed at once when every reader holds
    the machine lock, and kept for a lock-free reader (the vCPU hook) until it reclaims."""
    from emu.machine.pc import PcMachine

    m = PcMachine(64 << 20, manual_clock=True)
    mem, io = m.address_space_memory, m.address_space_io

    def toggle(times: int) -> None:
        for i in range(times):
            io.write_uint(0xCF8, 0x80000058, 4)
            io.write_uint(0xCFD, 0x30 if i % 2 else 0x00, 1)
            mem.read_uint(0xF0000, 1)  # renders the new view

    toggle(100)
    assert mem.retired_tables == 0
    mem.lockfree_readers += 1
    toggle(10)
    assert mem.retired_tables == 10
    mem.reclaim()
    assert mem.retired_tables == 0
