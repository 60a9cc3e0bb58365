"""PCI on the pc board: the i440FX config mechanism, config-space masks, BAR sizing and mapping,
PAM and SMRAM remapping, PIIX3 INTx routing and reset control, the PIIX4 PM block and timer, the
bus API's errors, the VMState descriptions, and the whole bus-0 config space against QEMU 7.2.

The board wiring here is the one ``build_i440fx``/``build_piix`` give the pc machine, on a bare
memory tree (no vCPU): port I/O goes through the I/O address space as a qtest ``outl`` does.
"""
from __future__ import annotations

import os
import subprocess
import threading
from dataclasses import dataclass

import pytest
from vmstate_source import ByteSource

from emu.clock import VirtualClock
from emu.devices.i440fx import I440FXHost, build_i440fx
from emu.devices.pci import PCIDevice, PCIError
from emu.devices.piix import PIIX3, PIIX3IDE, PIIX4PM, build_piix, io_port_present
from emu.irq import IRQ
from emu.memory import AccessRules, AddressSpace, CallbackOps, MemoryRegion
from emu.migration.vmstate import LoadContext, load_state, save_state

QEMU = "/root/qemu72/build/qemu-system-x86_64"
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
BIOS_SIZE = 256 * KiB


@dataclass
class Board:
    host: I440FXHost
    piix3: PIIX3
    ide: PIIX3IDE
    pm: PIIX4PM
    ram: MemoryRegion
    mem: AddressSpace
    io: AddressSpace
    clock: VirtualClock
    isa_levels: dict[int, int]
    resets: list[str]

    def outl(self, port: int, value: int, size: int = 4) -> None:
        self.io.write_uint(port, value, size)

    def inl(self, port: int, size: int = 4) -> int:
        return self.io.read_uint(port, size)

    def cfg_read(self, dev: int, fn: int, off: int, size: int = 4) -> int:
        self.outl(0xCF8, 0x80000000 | (dev << 11) | (fn << 8) | (off & ~3))
        return self.inl(0xCFC + (off & 3), size)

    def cfg_write(self, dev: int, fn: int, off: int, value: int, size: int = 4) -> None:
        self.outl(0xCF8, 0x80000000 | (dev << 11) | (fn << 8) | (off & ~3))
        self.outl(0xCFC + (off & 3), value, size)


def bios_image() -> bytes:
    return bytes((i * 7 + 3) & 0xFF for i in range(BIOS_SIZE))


def make_board(ram_size: int = 128 * MiB, vga: MemoryRegion | None = None) -> Board:
    """What the pc machine wires: RAM, pc.bios/isa-bios/pc.rom in PCI space, i440FX, PIIX."""
    sysmem = MemoryRegion.container("system", 1 << 64)
    sysio = MemoryRegion.io("io", 65536, CallbackOps(
        lambda off, size: (1 << (8 * size)) - 1, lambda off, value, size: None,
        AccessRules(valid_min=1, valid_max=4, impl_min=1, impl_max=4, valid_unaligned=True, impl_unaligned=True)))
    ram = MemoryRegion.ram("pc.ram", ram_size)
    bios = MemoryRegion.rom("pc.bios", BIOS_SIZE, bios_image())
    pci_regions = [(4 * GiB - BIOS_SIZE, bios, 0),
                   (1 * MiB - 128 * KiB, MemoryRegion.alias("isa-bios", bios, BIOS_SIZE - 128 * KiB, 128 * KiB), 1),
                   (0xC0000, MemoryRegion.rom("pc.rom", 0x20000), 1)]
    if vga is not None:
        pci_regions.append((0xA0000, vga, 1))
    host = build_i440fx(sysmem, sysio, ram, min(ram_size, 0xE0000000), 0, pci_regions)
    clock = VirtualClock(manual=True)
    clock.enable(True)
    piix3, ide, pm = build_piix(host.bus, clock)
    levels: dict[int, int] = {}
    resets: list[str] = []
    for n in range(16):
        piix3.isa_irq[n].connect(IRQ(lambda n, level: levels.__setitem__(n, level), n))
    pm.sci.connect(IRQ(lambda n, level: levels.__setitem__(9, level), 9))
    piix3.reset_request = lambda: resets.append("guest-reset")
    pm.machine_ready(lambda port: io_port_present(sysio, port))
    return Board(host, piix3, ide, pm, ram, AddressSpace("memory", sysmem), AddressSpace("I/O", sysio), clock,
                 levels, resets)


@pytest.fixture
def board() -> Board:
    return make_board()


# ---------------------------------------------------------------- config mechanism #1

def test_cf8_low_bits_select_the_offset_as_in_qemu(board):
    board.outl(0xCF8, 0x80000002)  # what libqos does for a word read at offset 2
    assert board.inl(0xCFC, 2) == 0x1237  # the device ID, not the vendor ID
    assert board.inl(0xCFE, 2) == 0x1237  # 2 | 2: same register
    board.outl(0xCF8, 0x80000000)
    assert board.inl(0xCFC) == 0x12378086
    assert board.inl(0xCFE, 1) == 0x37


def test_cf8_takes_only_full_dword_writes_and_reads_back_whole(board):
    board.outl(0xCF8, 0x80000804)
    board.outl(0xCF8, 0x12, 1)
    board.outl(0xCF8, 0x1234, 2)
    assert board.inl(0xCF8) == 0x80000804
    assert board.inl(0xCF8, 2) == 0x0804
    assert board.inl(0xCFA, 1) == 0x04  # any offset: the low bytes of config_reg


def test_disabled_mechanism_and_absent_functions_read_all_ones(board):
    board.outl(0xCF8, 0x00000000)
    assert board.inl(0xCFC) == 0xFFFFFFFF
    assert board.cfg_read(1, 2, 0) == 0xFFFFFFFF  # 00:01.2 (USB) is absent
    board.outl(0xCF8, 0x80010000)  # bus 1 does not exist
    assert board.inl(0xCFC) == 0xFFFFFFFF
    board.outl(0xCF8, 0x800000FE)  # the last two bytes of config space
    assert board.inl(0xCFC) == 0x0000


def test_config_writes_go_through_the_masks(board):
    board.cfg_write(0, 0, 0x00, 0xFFFFFFFF)  # IDs are read-only
    assert board.cfg_read(0, 0, 0x00) == 0x12378086
    board.cfg_write(0, 0, 0x04, 0xFFFFFFFF)  # command: IO|MEM|MASTER|SERR|INTX_DISABLE writable
    assert board.cfg_read(0, 0, 0x04) == 0x00000507
    board.cfg_write(1, 0, 0x3C, 0xFFFFFFFF)  # interrupt line writable, pin read-only
    assert board.cfg_read(1, 0, 0x3C) == 0x000000FF
    pm = board.pm
    pm.config[0x07] |= 0x80  # detected parity error latched: write 1 to clear
    board.cfg_write(1, 3, 0x06, 0x8000, 2)
    assert board.cfg_read(1, 3, 0x06, 2) == 0x0280


def test_bar_sizing_and_io_mapping(board):
    board.cfg_write(1, 1, 0x20, 0xFFFFFFFF)
    assert board.cfg_read(1, 1, 0x20) == 0xFFFFFFF1  # 16 ports, I/O space
    board.cfg_write(1, 1, 0x20, 0xC001)
    assert board.inl(0xC000, 1) == 0xFF  # I/O decoding still off
    board.cfg_write(1, 1, 0x04, 0x0001, 2)
    assert board.ide.bars[4].addr == 0xC000
    board.outl(0xC004, 0x12345677)
    assert board.inl(0xC004) == 0x12345674  # PRD address: dword aligned
    board.outl(0xC000, 0x01, 1)
    assert board.inl(0xC000, 1) == 0x01 and board.inl(0xC002, 1) == 0x01  # start: active bit
    assert board.inl(0xC000, 2) == 0xFFFF  # the command/status ports are byte-wide
    board.cfg_write(1, 1, 0x04, 0x0000, 2)
    assert board.ide.bars[4].addr is None and board.inl(0xC004) == 0xFFFFFFFF


# ---------------------------------------------------------------- PAM and SMRAM

def _pam(board: Board, segment: int, mode: int) -> None:
    """pam_update's layout: segment 0 is 0x59's high nibble, then odd segments low, even high."""
    reg = 0x59 + (segment + 1) // 2
    shift = 0 if segment & 1 else 4
    board.cfg_write(0, 0, reg, (board.cfg_read(0, 0, reg, 1) & ~(0xF << shift)) | (mode << shift), 1)


@pytest.mark.parametrize("segment,base,size,pci_byte", [
    (0, 0xF0000, 0x10000, None),   # BIOS segment: isa-bios from PCI space in mode 0
    (1, 0xC0000, 0x4000, 0x00),    # option ROM: pc.rom (empty)
    (9, 0xE0000, 0x4000, None),
])
def test_pam_modes(board, segment, base, size, pci_byte):
    isa_bios = bios_image()[BIOS_SIZE - 128 * KiB:]
    pci_view = bytes([pci_byte]) * 16 if pci_byte is not None else isa_bios[base - 0xE0000:][:16]
    assert bytes(board.mem.read(base, 16)) == pci_view  # reset: mode 0
    board.ram.block.write(base, b"\x11" * 16)
    _pam(board, segment, 1)  # read-only RAM: RAM reads; the ranges are read-only for the CPU
    assert bytes(board.mem.read(base, 16)) == b"\x11" * 16
    assert board.mem.lookup(base).readonly and board.mem.lookup(base + size - 1).mr is board.ram
    for mode in (2, 3):  # QEMU 7.2: both are plain RAM
        _pam(board, segment, mode)
        board.mem.write(base + size - 4, bytes([0x30 + mode]) * 4)
        assert bytes(board.ram.block.read(base + size - 4, 4)) == bytes([0x30 + mode]) * 4
        assert bytes(board.mem.read(base + size - 4, 4)) == bytes([0x30 + mode]) * 4
    _pam(board, segment, 0)
    assert bytes(board.mem.read(base, 16)) == pci_view


def test_pam_segment_register_nibbles(board):
    board.cfg_write(0, 0, 0x59, 0x30, 1)  # PAM0 high nibble: the BIOS segment
    assert board.host.device.pam[0].current == 3
    board.cfg_write(0, 0, 0x5A, 0x21, 1)  # PAM1: low nibble 0xc0000, high nibble 0xc4000
    assert [r.current for r in board.host.device.pam[1:3]] == [1, 2]
    assert board.cfg_read(0, 0, 0x58) == 0x00213000


def test_smram_shows_the_pci_window_until_opened():
    vga = MemoryRegion.rom("vga-window", 0x20000, b"\x76" * 0x20000)
    b = make_board(vga=vga)
    b.ram.block.write(0xA0000, b"\x55" * 4)
    assert b.cfg_read(0, 0, 0x72, 1) == 0x02
    assert bytes(b.mem.read(0xA0000, 4)) == b"\x76" * 4
    b.cfg_write(0, 0, 0x72, 0x4A, 1)  # D_OPEN | G_SMRAME | base segment
    assert bytes(b.mem.read(0xA0000, 4)) == b"\x55" * 4
    assert b.host.device.smram.enabled
    b.cfg_write(0, 0, 0x72, 0x0A, 1)
    assert bytes(b.mem.read(0xA0000, 4)) == b"\x76" * 4


def test_readonly_alias_flags_its_ranges_for_the_cpu_only():
    root = MemoryRegion.container("root", 1 << 64)
    ram = MemoryRegion.ram("ram", 0x2000)
    alias = MemoryRegion.alias("ro", ram, 0x1000, 0x1000)
    root.add_subregion(0, alias)
    asp = AddressSpace("t", root)
    assert not asp.ranges[0].readonly
    alias.set_readonly(True)
    assert asp.lookup(0).readonly and asp.lookup(0).mr is ram
    asp.write(0, b"\x01\x02")  # QEMU 7.2's address_space_write ignores an alias's readonly flag
    assert bytes(ram.block.read(0x1000, 2)) == b"\x01\x02" and bytes(asp.read(0, 2)) == b"\x01\x02"
    alias.set_readonly(False)
    assert not asp.lookup(0).readonly
    with pytest.raises(ValueError):
        ram.set_readonly(True)


# ---------------------------------------------------------------- PIIX3

class IntxDevice(PCIDevice):
    """A bare function with INTA, to drive the PIIX3 routing."""

    type_name = "test-intx-device"
    vendor_id, device_id = 0x1234, 0x5678

    def __init__(self) -> None:
        super().__init__()
        self.config[0x3D] = 1


def test_intx_routing_through_pirq_registers(board):
    dev = IntxDevice()
    board.host.bus.add(dev, 2 << 3)  # slot 2 INTA -> PIRQB
    dev.set_irq(1)
    assert not any(board.isa_levels.values())  # PIRQB disabled (0x80)
    board.cfg_write(1, 0, 0x61, 11, 1)
    assert board.isa_levels.get(11) == 1
    board.cfg_write(1, 0, 0x61, 10, 1)
    assert board.isa_levels.get(11) == 0 and board.isa_levels.get(10) == 1
    board.cfg_write(2, 0, 0x04, 0x0400, 2)  # INTx disable
    assert board.isa_levels.get(10) == 0 and board.cfg_read(2, 0, 0x06, 1) & 0x08
    board.cfg_write(2, 0, 0x04, 0x0000, 2)
    assert board.isa_levels.get(10) == 1
    dev.set_irq(0)
    assert board.isa_levels.get(10) == 0 and board.host.bus.irq_level(1) == 0


def test_piix3_reset_values_and_reset_control(board):
    board.cfg_write(1, 0, 0x60, 0x0A0B0C0D)
    board.piix3.reset()
    assert board.cfg_read(1, 0, 0x60) == 0x80808080
    assert board.cfg_read(1, 0, 0x04) == 0x02000000  # command cleared by the PCI reset, DEVSEL medium
    board.outl(0xCF9, 0x02, 1)
    assert board.inl(0xCF9, 1) == 0x02 and board.resets == []
    board.outl(0xCF8, 0x80000000)  # the dword at 0xcf8 is still the index register
    assert board.inl(0xCF8) == 0x80000000 and board.inl(0xCF9, 1) == 0x02
    board.outl(0xCF9, 0x06, 1)
    assert board.resets == ["guest-reset"]


# ---------------------------------------------------------------- PIIX4 PM

def _enable_pm(board: Board, base: int = 0xB000) -> None:
    board.cfg_write(1, 3, 0x40, base | 1)
    board.cfg_write(1, 3, 0x80, 0x01, 1)


def test_pm_block_follows_base_and_enable(board):
    assert board.inl(0xB008) == 0xFFFFFFFF  # disabled at reset (0x80 = 0)
    _enable_pm(board)
    assert board.pm.io_base == 0xB000 and board.inl(0xB004, 2) == 0x0000
    board.outl(0xB2, 0xF1, 1)  # ACPI enable through APM: SCI_EN
    assert board.inl(0xB004, 2) == 0x0001 and board.inl(0xB2, 1) == 0xF1
    board.cfg_write(1, 3, 0x80, 0x00, 1)
    assert board.inl(0xB004, 2) == 0xFFFF


def test_pm_timer_counts_at_3_579545_mhz(board):
    _enable_pm(board)
    assert board.inl(0xB008) == 0
    board.clock.advance_to(1_000_000_000)
    assert board.inl(0xB008) == 3579545
    board.clock.advance_to(10_000_000_000)  # 24-bit wrap
    assert board.inl(0xB008) == 35795450 & 0xFFFFFF
    assert board.inl(0xB00A, 2) == (35795450 & 0xFFFFFF) & 0xFFFF  # impl 4: offset 10 reads the low half


def test_pm_timer_overflow_raises_sci(board):
    _enable_pm(board)
    board.outl(0xB000, 0x0001, 2)  # clear TMR_STS: next overflow at 2^23 ticks
    assert board.inl(0xB000, 2) & 1 == 0
    board.outl(0xB002, 0x0001, 2)  # TMR_EN
    assert board.isa_levels.get(9) == 0 and board.pm.timer.pending
    overflow_ns = (0x800000 * 1_000_000_000) // 3579545
    board.clock.advance_to(overflow_ns - 1000)
    assert board.isa_levels.get(9) == 0
    board.clock.advance_to(overflow_ns + 1000)
    assert board.isa_levels.get(9) == 1 and board.inl(0xB000, 2) & 1
    board.outl(0xB000, 0x0001, 2)
    assert board.isa_levels.get(9) == 0


def test_pm_gpe_and_smbus_config(board):
    assert board.cfg_read(1, 3, 0x90) == 0x0000B101 and board.cfg_read(1, 3, 0xD2, 1) == 0x09
    board.pm.gpe_sts[0] = 0x02
    board.outl(0xAFE2, 0x02, 1)  # enable GPE bit 1: SCI
    assert board.isa_levels.get(9) == 1 and board.inl(0xAFE0, 1) == 0x02
    board.outl(0xAFE0, 0x02, 1)  # write 1 to clear
    assert board.isa_levels.get(9) == 0


# ---------------------------------------------------------------- the bus API

def test_occupied_slot_and_multifunction_errors(board):
    with pytest.raises(PCIError) as ei:
        board.host.bus.add(PIIX3IDE(), 1 << 3)
    assert str(ei.value) == "PCI: slot 1 function 0 not available for piix3-ide, in use by PIIX3,id=(null)"
    bus = board.host.bus
    bus.add(IntxDevice(), 3 << 3, qdev_id="a")
    with pytest.raises(PCIError) as ei:
        bus.add(IntxDevice(), (3 << 3) | 1)
    assert str(ei.value) == "PCI: single function device can't be populated in function 3.1"
    bus.add(IntxDevice(), (4 << 3) | 2)
    with pytest.raises(PCIError) as ei:
        bus.add(IntxDevice(), 4 << 3)
    assert str(ei.value) == "PCI: 4.0 indicates single function, but 4.2 is already populated."
    with pytest.raises(PCIError) as ei:
        bus.add(IntxDevice(), 3 << 3)
    assert str(ei.value).endswith("in use by test-intx-device,id=a")
    assert bus.add(IntxDevice()).devfn == 2 << 3  # auto: first free slot


# ---------------------------------------------------------------- migration

def test_vmstate_ids_and_roundtrip(board):
    assert board.piix3.vmstate_id() == ("0000:00:01.0/PIIX3", 0)
    assert board.host.device.vmstate_id() == ("0000:00:00.0/I440FX", 0)
    assert board.pm.vmstate_id() == ("0000:00:01.3/piix4_pm", 0)
    board.cfg_write(0, 0, 0x59, 0x33, 1)
    blob = save_state(board.host.device.vmsd, board.host.device.save_vmstate())
    assert len(blob) == 4 + 256 + 16 + 1 and blob[:4] == b"\0\0\0\x02"
    other = make_board()
    state: dict = {}

    ctx = LoadContext()
    assert load_state(ByteSource(blob), other.host.device.vmsd, state, 3, ctx) == 0
    other.host.device.load_vmstate(state)
    assert other.host.device.pam[0].current == 3 and other.cfg_read(0, 0, 0x58) == board.cfg_read(0, 0, 0x58)
    bad = bytearray(blob)
    bad[4] = 0x87  # vendor ID low byte differs: read-only, checked
    ctx = LoadContext()
    assert load_state(ByteSource(bytes(bad)), other.host.device.vmsd, {}, 3, ctx) < 0
    assert ctx.lines[0] == ("get_pci_config_device: Bad config data: i=0x0 read: 87 device: 86 cmask: ff "
                            "wmask: 0 w1cmask:0")
    pm_blob = save_state(board.pm.vmsd, board.pm.save_vmstate())
    # the PCIDevice struct, PM1, APM, SMBus, timer, GPE, PCI hotplug, then the memhp subsection
    assert len(pm_blob) == 276 + 6 + 2 + 48 + 16 + 4 + 2056 + (1 + 1 + len("piix4_pm/memhp") + 4 + 4) == 2432


# ---------------------------------------------------------------- QEMU 7.2 oracle

def _qemu(commands: list[str]) -> list[int | None]:
    """Runs qtest commands on QEMU 7.2 ``-M pc -nodefaults``; the value of each reply (None: OK).
    QEMU does not quit at the end of its input: it is killed once every reply is in."""
    proc = subprocess.Popen([QEMU, "-M", "pc", "-nodefaults", "-display", "none", "-qtest", "stdio",
                             "-accel", "qtest", "-S", "-qtest-log", "/dev/null"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    writer = threading.Thread(target=lambda: (proc.stdin.write("".join(c + "\n" for c in commands)),
                                              proc.stdin.flush()), daemon=True)
    writer.start()
    replies: list[int | None] = []
    try:
        while len(replies) < len(commands):
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("OK"):
                parts = line.split()
                replies.append(int(parts[1], 16) if len(parts) > 1 else None)
    finally:
        proc.kill()
        proc.wait()
        writer.join(timeout=10)
    assert len(replies) == len(commands)
    return replies


def _run_on_board(board: Board, commands: list[str]) -> list[int | None]:
    out: list[int | None] = []
    for cmd in commands:
        op, *args = cmd.split()
        size = {"b": 1, "w": 2, "l": 4}[op[-1]]
        if op.startswith("out"):
            board.outl(int(args[0], 16), int(args[1], 16), size)
            out.append(None)
        else:
            out.append(board.inl(int(args[0], 16), size))
    return out


oracle = pytest.mark.skipif(not os.path.exists(QEMU), reason="QEMU 7.2 oracle not built")


@oracle
def test_bus0_config_space_matches_qemu(board):
    """Every byte of every slot/function on bus 0 (absent ones read all-ones)."""
    commands = []
    for dfn in range(256):
        for off in range(0, 256, 4):
            commands += [f"outl 0xcf8 {0x80000000 | (dfn << 8) | off:#x}", "inl 0xcfc"]
    assert _run_on_board(board, commands) == _qemu(commands)


EDGE_CASES = """outl 0xcf8 0x80000002|inw 0xcfc|inl 0xcfc|inb 0xcfe|outl 0xcf8 0x80000001|inb 0xcfc|inw 0xcfc
|inb 0xcf8|inb 0xcf9|inw 0xcf8|inb 0xcfa|inl 0xcf8|outb 0xcf8 0x12|outw 0xcf8 0x1234|inl 0xcf8
|outl 0xcf8 0x800000fe|inl 0xcfc|outl 0xcf8 0x0|inl 0xcfc|outl 0xcf8 0x80000804|outw 0xcfc 0xffff|inl 0xcfc
|outl 0xcf8 0x80000904|outw 0xcfc 0xffff|inl 0xcfc|outl 0xcf8 0x80000920|outl 0xcfc 0xffffffff|inl 0xcfc
|outl 0xcfc 0xc001|inb 0xc000|outb 0xc000 0x1|inb 0xc002|outb 0xc002 0x66|inb 0xc002|outl 0xc004 0x12345677
|inl 0xc004|inw 0xc000|outl 0xcf8 0x80000b40|outl 0xcfc 0xb001|outl 0xcf8 0x80000b80|outb 0xcfc 0x1
|inw 0xb000|inw 0xb002|inw 0xb004|outw 0xb002 0x1|inw 0xb002|outb 0xb2 0xf1|inw 0xb004|inb 0xb3
|outl 0xcf8 0x80000860|outl 0xcfc 0x0b0a0905|inl 0xcfc|outl 0xcf8 0x80000006|outw 0xcfe 0xffff|inl 0xcfc
|outl 0xcf8 0x80000059|outb 0xcfd 0x33|outl 0xcf8 0x80000058|inl 0xcfc|outl 0xcf8 0x80000072|outb 0xcfe 0xff
|inb 0xcfe|outl 0xcf8 0x80000010|outl 0xcfc 0xffffffff|inl 0xcfc|outl 0xcf8 0x80000b3c|outl 0xcfc 0xffffffff
|inl 0xcfc|outl 0xcf8 0x81000000|inl 0xcfc|outb 0xcf9 0x2|inb 0xcf9|inl 0xcf8"""


@oracle
def test_config_mechanism_edge_cases_match_qemu(board):
    """Odd widths and offsets on 0xcf8-0xcff, masks, BAR sizing, PM and bus-master ports."""
    commands = [c.strip() for c in EDGE_CASES.replace("\n", "").split("|")]
    assert _run_on_board(board, commands) == _qemu(commands)


@oracle
def test_pam_and_smram_memory_match_qemu():
    """Guest-visible bytes in 0xa0000-0xfffff through PAM and SMRAM changes (only where the
    BIOS image, which differs from QEMU's default one, does not show)."""
    steps = ((0x59, 0x30, (0xA0000, 0xC0000, 0xC4000, 0xF0000, 0xFFFF0)),
             (0x5A, 0x11, (0xC0000, 0xC4000, 0xC8000)),
             (0x5E, 0x33, (0xE0000, 0xE4000, 0xC0000)),
             (0x72, 0x4A, (0xA0000, 0xBFFFF)),
             (0x59, 0x10, (0xF0000,)))  # read-only again: the RAM written above shows
    commands = []
    for reg, value, addrs in steps:
        commands += [f"outl 0xcf8 {0x80000000 | (reg & ~3):#x}", f"outb {0xCFC + (reg & 3):#x} {value:#x}"]
        for addr in addrs:
            commands += [f"readb {addr:#x}", f"writeb {addr:#x} 0x5a", f"readb {addr:#x}"]
    ours = make_board()
    got: list[int | None] = []
    for cmd in commands:
        op, *args = cmd.split()
        if op == "writeb":
            ours.mem.write(int(args[0], 16), bytes([int(args[1], 16)]))
            got.append(None)
        elif op == "readb":
            got.append(ours.mem.read(int(args[0], 16), 1)[0])
        else:
            got += _run_on_board(ours, [cmd])
    assert got == _qemu(commands)
