"""Migration sections of the i8259 pair, the IOAPIC, the i8042 (with its PS/2 keyboard and mouse)
and the floppy controller, against QEMU 7.2's layouts (hw/intc/i8259_common.c, ioapic_common.c,
hw/input/pckbd.c, ps2.c, hw/block/fdc.c).

Each device is programmed through its ports on a small ISA bench wired like ``-M pc`` (ISA IRQ n to
PIC input n and IOAPIC pin n), saved, loaded into a fresh bench, and compared by register reads
and by a second save. The ``qemu`` test runs the same port program on QEMU 7.2 and compares our
section bytes with the sections of its migration stream.
"""
from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest
from vmstate_source import ByteSource

from emu.clock import VirtualClock
from emu.devices.fdc import VMSTATE_FDC, IsaFdc
from emu.devices.i8042 import I8042, VMSTATE_PCKBD
from emu.devices.i8257 import create_dma_pair
from emu.devices.i8259 import I8259, PIC_STATE_FIELDS, VMSTATE_I8259
from emu.devices.ioapic import IOAPIC, IOAPIC_BASE, VMSTATE_IOAPIC
from emu.irq import IRQ
from emu.memory import AddressSpace, MemoryRegion
from emu.migration.vmstate import LoadContext, VMStateDescription, load_state, save_state

QEMU72 = Path("/root/qemu72/build/qemu-system-x86_64")


def load_bytes(vmsd: VMStateDescription, blob: bytes, version: int | None = None) -> dict:
    """Parses one section body, checking it is consumed exactly."""
    src, state = ByteSource(blob), {}
    assert load_state(src, vmsd, state, vmsd.version_id if version is None else version, LoadContext()) == 0
    assert src.pos == len(blob)
    return state


class Bench:
    """The four devices on ISA I/O and memory buses, interrupts wired as on ``-M pc``."""

    def __init__(self) -> None:
        self.clock = VirtualClock(manual=True)
        self.clock.enable(True)
        io_root, mem_root = MemoryRegion.container("io", 0x10000), MemoryRegion.container("mem", 1 << 32)
        self.io, self.mem = AddressSpace("io", io_root), AddressSpace("mem", mem_root)
        self.pic, self.ioapic, self.kbd = I8259(), IOAPIC(), I8042()
        self.delivered: list[int] = []
        self.ioapic.deliver = self.delivered.append
        dma1, dma2 = create_dma_pair()
        self.fdc = IsaFdc(dma=dma1, clock=self.clock)
        for port, region in ((0x20, self.pic.master_io), (0xA0, self.pic.slave_io), (0x4D0, self.pic.master_elcr_io),
                             (0x4D1, self.pic.slave_elcr_io), (0x60, self.kbd.data_io), (0x64, self.kbd.cmd_io),
                             *dma1.io_regions, *dma2.io_regions, *self.fdc.io_regions):
            io_root.add_subregion(port, region)
        mem_root.add_subregion(IOAPIC_BASE, self.ioapic.mmio)
        self.kbd.irq_kbd.connect(self.isa_irq(1))
        self.kbd.irq_mouse.connect(self.isa_irq(12))
        self.fdc.irq.connect(self.isa_irq(6))
        self.intr: list[int] = []
        self.pic.intr.connect(IRQ(lambda n, level: self.intr.append(level), 0))

    def isa_irq(self, n: int) -> IRQ:
        def handler(_: int, level: int) -> None:
            self.pic.gpio_in[None][n].set(level)
            self.ioapic.gpio_in[None][n].set(level)
        return IRQ(handler, n)

    def run(self, program: list[str]) -> list[int]:
        """qtest-style lines (outb/inb/writel/readl); returns the values read."""
        reads = []
        for line in program:
            op, *args = line.split()
            addr = int(args[0], 16)
            if op == "outb":
                self.io.write_uint(addr, int(args[1], 16), 1)
            elif op == "inb":
                reads.append(self.io.read_uint(addr, 1))
            elif op == "writel":
                self.mem.write_uint(addr, int(args[1], 16), 4)
            else:
                reads.append(self.mem.read_uint(addr, 4))
        return reads

    def sections(self) -> dict[tuple[str, int], tuple[VMStateDescription, bytes]]:
        """Every section of the four devices, as the board would save them."""
        out = {}
        for dev in (self.pic, self.kbd):
            for idstr, instance, vmsd, state in dev.vmstate_sections():
                out[idstr, instance] = (vmsd, save_state(vmsd, state))
        for dev in (self.ioapic, self.fdc):
            assert dev.vmsd is not None
            out[dev.vmstate_id()] = (dev.vmsd, save_state(dev.vmsd, dev.save_vmstate()))
        return out

    def load_sections(self, sections: dict[tuple[str, int], tuple[VMStateDescription, bytes]]) -> None:
        """Loads section bodies through the byte parser, as the stream loader does."""
        states = {key: load_bytes(vmsd, blob) for key, (vmsd, blob) in sections.items()}
        self.pic.load_vmstate_sections(states)
        self.kbd.load_vmstate_sections(states)
        self.ioapic.load_vmstate(states[self.ioapic.vmstate_id()])
        self.fdc.load_vmstate(states[self.fdc.vmstate_id()])


def migrate(bench: Bench) -> Bench:
    """A fresh bench that loaded ``bench``'s sections; its own save is byte-identical."""
    sections = bench.sections()
    fresh = Bench()
    fresh.load_sections(sections)
    assert fresh.sections() == sections
    return fresh


# The port program, shared with the QEMU 7.2 comparison (qtest syntax).
PIC_PROGRAM = [
    "outb 0x20 0x11", "outb 0x21 0x30", "outb 0x21 0x04", "outb 0x21 0x11",  # master: SFNM
    "outb 0xa0 0x11", "outb 0xa1 0x38", "outb 0xa1 0x02", "outb 0xa1 0x03",  # slave: auto-EOI
    "outb 0x4d0 0x20", "outb 0x4d1 0x04", "outb 0x21 0xb8", "outb 0xa1 0xef",
]
IOAPIC_PROGRAM = [
    "writel 0xfec00000 0x0", "writel 0xfec00010 0x05000000",
    "writel 0xfec00000 0x12", "writel 0xfec00010 0x00000031",  # pin 1: unmasked edge, vector 0x31
    "writel 0xfec00000 0x1c", "writel 0xfec00010 0x0001a046",  # pin 6: masked level, vector 0x46
    "writel 0xfec00000 0x1d", "writel 0xfec00010 0xff000000",
]
KBD_PROGRAM = [
    "outb 0x64 0xd2", "outb 0x60 0x41",  # IRQ 1
    "outb 0x20 0x0c", "inb 0x20",  # poll: acknowledges IRQ 1 (ISR bit 1)
    "outb 0x20 0x80", "outb 0x20 0x68", "outb 0x20 0x0b",  # rotate on AEOI, special mask, read ISR
    "outb 0x64 0x60", "outb 0x60 0x43", "outb 0x60 0xed",  # translate; LED command waits for its byte
    "outb 0x64 0xd4", "outb 0x60 0xf3", "outb 0x64 0xd4", "outb 0x60 0xc8",  # mouse sample rate 200
    "outb 0x64 0xdd", "outb 0xa0 0x0c",  # A20 off; slave poll pending
]
FDC_PROGRAM = [
    "outb 0x3f2 0x1c", "outb 0x3f5 0x03", "outb 0x3f5 0xaf", "outb 0x3f5 0x02",  # motor A; SPECIFY
    "outb 0x3f5 0x13", "outb 0x3f5 0x00", "outb 0x3f5 0x57", "outb 0x3f5 0x05",  # CONFIGURE
    "outb 0x3f5 0x94", "inb 0x3f5", "outb 0x3f5 0x12", "outb 0x3f5 0x83",  # LOCK; PERPENDICULAR
    "outb 0x3f5 0x0f", "outb 0x3f5 0x00", "outb 0x3f5 0x05",  # SEEK: IRQ 6
    "outb 0x3f5 0x4a", "outb 0x3f5 0x00",  # READ ID: the 20 ms result timer
]
PROGRAM = PIC_PROGRAM + IOAPIC_PROGRAM + KBD_PROGRAM + FDC_PROGRAM


def test_i8259_sections_layout_and_round_trip() -> None:
    bench = Bench()
    bench.run(PIC_PROGRAM + KBD_PROGRAM[:4])
    assert bench.pic.master.isr == 0x02 and bench.pic.master.special_fully_nested_mode == 1
    bench.run(["outb 0x20 0x80", "outb 0x20 0x68", "outb 0x20 0x0b", "outb 0xa0 0x0c"])
    sections = bench.pic.vmstate_sections()
    assert [(s[0], s[1], s[2]) for s in sections] == [("i8259", 0, VMSTATE_I8259), ("i8259", 1, VMSTATE_I8259)]
    master = save_state(VMSTATE_I8259, sections[0][3])
    # QEMU's field order: last_irr irr imr isr priority_add irq_base read_reg_select poll
    # special_mask init_state auto_eoi rotate_on_auto_eoi special_fully_nested_mode init4 single_mode elcr
    assert master == bytes([0x02, 0x00, 0xB8, 0x02, 0, 0x30, 1, 0, 1, 0, 0, 1, 1, 1, 0, 0x20])
    slave = save_state(VMSTATE_I8259, sections[1][3])
    assert slave == bytes([0, 0, 0xEF, 0, 0, 0x38, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0x04])
    assert [f.name for f in VMSTATE_I8259.fields] == list(PIC_STATE_FIELDS)
    fresh = migrate(bench)
    assert [fresh.pic.master.read(0), fresh.pic.master.read(1)] == [0x02, 0xB8]  # ISR (OCW3), IMR
    assert fresh.run(["inb 0x4d0", "inb 0x4d1", "inb 0xa1"]) == [0x20, 0x04, 0x00]  # slave poll: nothing
    assert fresh.pic.slave.poll == 0


def test_i8259_loaded_state_drives_intr_and_acknowledge() -> None:
    bench = Bench()
    bench.run(PIC_PROGRAM + ["outb 0x21 0x00", "outb 0x64 0xd2", "outb 0x60 0x41"])
    assert bench.intr[-1] == 1
    fresh = migrate(bench)
    assert fresh.intr == [1]  # the loaded IRR raises INTR at once
    assert fresh.pic.acknowledge() == 0x31  # vector base 0x30 + IRQ 1
    assert fresh.run(["outb 0x20 0x0b", "inb 0x20"]) == [0x02]
    assert fresh.intr[-1] == 0


def test_i8259_special_fully_nested_mode_lets_the_slave_interrupt_its_cascade() -> None:
    for icw4, expected in ((0x11, 1), (0x01, 0)):
        bench = Bench()
        bench.run(["outb 0x20 0x11", "outb 0x21 0x30", "outb 0x21 0x04", f"outb 0x21 {icw4:#x}",
                   "outb 0xa0 0x11", "outb 0xa1 0x38", "outb 0xa1 0x02", "outb 0xa1 0x01",
                   "outb 0x21 0x00", "outb 0xa1 0x00"])
        bench.pic.gpio_in[None][12].pulse()
        assert bench.pic.acknowledge() == 0x3C  # slave IRQ 4; cascade now in service
        bench.pic.gpio_in[None][9].pulse()  # higher priority on the slave
        fresh = migrate(bench)
        assert (fresh.pic.master.pending_irq() == 2) == bool(expected)


def test_ioapic_section_layout_and_round_trip() -> None:
    bench = Bench()
    bench.run(IOAPIC_PROGRAM)
    bench.kbd.irq_mouse.set(1)  # pin 12 masked edge: ignored (82093AA; QEMU's ioapic_set_irq)
    bench.kbd.irq_mouse.set(0)
    bench.ioapic.gpio_in[None][6].set(1)  # pin 6 level-triggered (masked): IRR follows the line
    bench.run(["outb 0x64 0xd2", "outb 0x60 0x41"])  # pin 1 unmasked edge: delivered, not latched
    assert bench.delivered == [0x31]
    bench.run(["writel 0xfec00000 0x13"])
    blob = bench.sections()[("ioapic", 0)][1]
    assert len(blob) == 1 + 1 + 8 + 4 + 24 * 8
    assert blob[:14] == bytes([5, 0x13]) + bytes(8) + struct.pack(">I", 1 << 6)
    entries = struct.unpack(">24Q", blob[14:])
    assert entries[1] == 0x31 and entries[6] == 0xFF000000_0001A046 and entries[0] == 1 << 16
    fresh = migrate(bench)
    assert fresh.run(["readl 0xfec00000", "readl 0xfec00010", "writel 0xfec00000 0x0", "readl 0xfec00010",
                      "writel 0xfec00000 0x1c", "readl 0xfec00010", "writel 0xfec00000 0x1d",
                      "readl 0xfec00010"]) == [0x13, 0, 0x05000000, 0x1A046, 0xFF000000]
    fresh.run(["writel 0xfec00000 0x28", "writel 0xfec00010 0x00000052"])  # unmask pin 12: nothing was latched
    assert fresh.delivered == [] and fresh.ioapic.irr == 1 << 6
    fresh.kbd.irq_mouse.set(1)  # an edge on the unmasked pin goes out at once
    assert fresh.delivered == [0x52] and fresh.ioapic.irr == 1 << 6


def test_ioapic_version_1_stream_keeps_the_local_irr() -> None:
    bench = Bench()
    bench.run(["writel 0xfec00000 0x28", "writel 0xfec00010 0x18000"])  # pin 12 level-triggered, masked
    bench.ioapic.gpio_in[None][12].set(1)
    blob = bytes([3, 0x10]) + struct.pack(">24Q", *([0x1_0000] * 23 + [0x42]))  # v1: no unused bytes, no IRR
    bench.ioapic.load_vmstate(load_bytes(VMSTATE_IOAPIC, blob, version=1))
    assert (bench.ioapic.id, bench.ioapic.ioregsel, bench.ioapic.irr) == (3, 0x10, 1 << 12)
    assert bench.ioapic.redir[23] == 0x42


def kbd_reads(bench: Bench, n: int = 12) -> list[int]:
    """Status and data, alternately, as a guest drains the controller."""
    return bench.run(["inb 0x64", "inb 0x60"] * n)


def drain(bench: Bench) -> list[int]:
    """The data bytes read while the status register shows a full output buffer."""
    out = []
    while bench.run(["inb 0x64"])[0] & 0x01:
        out += bench.run(["inb 0x60"])
    return out


def test_i8042_sections_layout_and_round_trip() -> None:
    bench = Bench()
    bench.run(KBD_PROGRAM)
    names = [(s[0], s[1]) for s in bench.kbd.vmstate_sections()]
    assert names == [("ps2kbd", 0), ("ps2mouse", 0), ("pckbd", 0)]
    sections = bench.sections()
    ctrl = sections[("pckbd", 0)][1]
    # write_cmd status mode pending_tmp; "pckbd_outport" (A20 off); "pckbd/extended_state" v0
    assert ctrl[:4] == bytes([0, 0x19, 0x43, 0x04 | 0x10 | 0x20])
    rest = ctrl[4:]
    # outport: default 0xcf with OBF (0x10), A20 (0x02) off; the buffer holds the controller's
    # reply (obsrc 4), nothing read yet (obdata 0), reply byte 0x41
    assert rest == (b"\x05\x0dpckbd_outport" + struct.pack(">I", 1) + bytes([0xDD])
                    + b"\x05\x14pckbd/extended_state" + struct.pack(">I", 0)
                    + struct.pack(">II", 0, 4) + bytes([0x00, 0x41]))
    kbd = sections[("ps2kbd", 0)][1]
    write_cmd, rptr, wptr, count = struct.unpack(">iiii", kbd[:16])
    assert (write_cmd, count, kbd[16 + rptr]) == (0xED, 1, 0xFA)
    assert struct.unpack(">iii", kbd[272:284]) == (1, 1, 2)  # scan_enabled, translate, scancode set
    assert kbd[284:] == b"\x05\x1aps2kbd/command_reply_queue" + struct.pack(">Ii", 0, wptr)
    mouse = sections[("ps2mouse", 0)][1]
    assert len(mouse) == 272 + 6 + 12 + 1 and mouse[272:278] == bytes([0, 0, 200, 0, 0, 1])
    fresh = migrate(bench)
    assert kbd_reads(fresh) == kbd_reads(bench)
    for b in (bench, fresh):  # the LED byte the keyboard waited for, then an ID query
        b.run(["outb 0x60 0x05", "outb 0x60 0xf2"])
    assert kbd_reads(fresh) == kbd_reads(bench) and fresh.kbd.kbd.ledstate == 5
    assert fresh.sections() == bench.sections()


def test_i8042_mouse_type_and_controller_reply_survive() -> None:
    bench = Bench()
    for rate in (200, 100, 80):  # the IMPS/2 knock
        bench.run(["outb 0x64 0xd4", "outb 0x60 0xf3", "outb 0x64 0xd4", f"outb 0x60 {rate:#x}"])
        assert drain(bench) == [0xFA, 0xFA]
    bench.run(["outb 0x64 0xd4", "outb 0x60 0xe9", "outb 0x64 0xd0"])  # status request; outport reply
    fresh = migrate(bench)
    assert fresh.kbd.mouse.mouse_type == 3
    # the mouse's ACK already in the buffer, then the controller's reply (the output port, with
    # both OBF bits), then the mouse status, resolution and sample rate (as QEMU 7.2 answers)
    assert drain(fresh) == drain(bench) == [0xFA, 0xFF, 0x00, 0x00, 80]
    for b in (bench, fresh):
        b.run(["outb 0x64 0xd4", "outb 0x60 0xf2"])
    assert drain(fresh) == drain(bench) == [0xFA, 0x03]


def test_pckbd_without_extended_state_rebuilds_source_and_outport() -> None:
    bench = Bench()
    blob = bytes([0, 0x19 | 0x20, 0x03, 0x02])  # OBF from the mouse, AUX compat pending bit
    bench.kbd.load_vmstate_sections({("pckbd", 0): load_bytes(VMSTATE_PCKBD, blob)})
    assert bench.kbd.outport == 0xCF | 0x10 | 0x20  # the default with both OBF bits
    assert bench.kbd.pending == 0x20 and bench.kbd.obsrc == 0x02


def fdc_reads(bench: Bench) -> list[int]:
    return bench.run(["inb 0x3f1", "inb 0x3f2", "inb 0x3f3", "inb 0x3f4", "inb 0x3f7"])


def test_fdc_section_layout_and_round_trip() -> None:
    bench = Bench()
    bench.run(FDC_PROGRAM)
    blob = bench.sections()[("fdc", 0)][1]
    regs = blob[:9]  # sra srb dor tdr dsr msr status0 status1 status2
    assert regs == bytes([0xC0, 0xC1, 0x1C, 0, 0, 0x10, 0x20, 0, 0])  # READ ID executing: MSR busy
    assert blob[9:9 + 512][:2] == bytes([0x4A, 0x00])
    data_pos, data_len = struct.unpack(">II", blob[521:529])
    assert (data_pos, data_len) == (2, 2)
    tail = blob[529:]
    assert tail[:3] == bytes([0, 0, 0])  # data_state data_dir eot
    assert tail[3:9] == bytes([0x0A, 0x01, 0x05, 0x57, 1, 0])  # timer0 timer1 precomp config lock pwrd
    assert tail[9] == 2  # num_floppies
    media_rate = b"\x05\x11fdrive/media_rate" + struct.pack(">I", 1) + b"\x00"
    perpendicular = b"\x05\x14fdrive/perpendicular" + struct.pack(">I", 1) + b"\x03"
    drive0 = bytes([0, 0, 0]) + media_rate + perpendicular  # an empty slot's head never moves
    drive1 = bytes([0, 0, 0]) + media_rate
    assert tail[10:10 + len(drive0) + len(drive1)] == drive0 + drive1
    subs = tail[10 + len(drive0) + len(drive1):]
    # execution phase, as MSR implies it: no "fdc/phase" subsection
    assert subs == b"\x05\x10fdc/result_timer" + struct.pack(">Iq", 1, 20_000_000)
    fresh = migrate(bench)
    assert fdc_reads(fresh) == fdc_reads(bench)
    for b in (bench, fresh):
        b.clock.advance_to(20_000_000)
    assert fresh.run(["inb 0x3f4"] + ["inb 0x3f5"] * 7) == bench.run(["inb 0x3f4"] + ["inb 0x3f5"] * 7)
    assert fresh.sections() == bench.sections()


def test_fdc_reset_sensei_and_reconstructed_phase() -> None:
    bench = Bench()
    bench.run(["outb 0x3f2 0x08", "outb 0x3f2 0x0c"])  # leave reset: four SENSE INTERRUPTs to give
    assert bench.fdc.reset_sensei == 4
    blob = bench.sections()[("fdc", 0)][1]
    assert blob.endswith(b"\x05\x10fdc/reset_sensei" + struct.pack(">Ii", 1, 4))
    fresh = migrate(bench)
    for b in (bench, fresh):
        b.run(["outb 0x3f5 0x08"])
    assert fresh.run(["inb 0x3f5", "inb 0x3f5"]) == bench.run(["inb 0x3f5", "inb 0x3f5"]) == [0xC0, 0]
    assert fresh.fdc.reset_sensei == 3
    # a stream without the phase subsection: the phase comes from MSR as QEMU 2.3 implied it
    state = load_bytes(VMSTATE_FDC, blob)
    state["msr"] = 0xD0
    fresh.fdc.load_vmstate({k: v for k, v in state.items() if k != "phase"})
    assert fresh.fdc.phase == 3


def test_fdc_refuses_another_drive_count() -> None:
    blob = bytearray(Bench().sections()[("fdc", 0)][1])
    blob[529 + 9] = 1
    ctx = LoadContext()
    assert load_state(ByteSource(bytes(blob)), VMSTATE_FDC, {}, 2, ctx) < 0
    assert ctx.lines[0] == "2 != 1"


# ---------------------------------------------------------------- against QEMU 7.2

def _qemu_sections(stream: bytes, wanted: list[tuple[str, int]]) -> dict[tuple[str, int], bytes]:
    """The bodies of full sections ``(idstr, instance)`` of a QEMU stream (header to footer)."""
    out = {}
    for idstr, instance in wanted:
        name = idstr.encode()
        marker = bytes([len(name)]) + name + struct.pack(">I", instance)
        at = stream.index(marker)
        assert stream[at - 5] == 0x04  # QEMU_VM_SECTION_FULL, then the 4-byte section id
        section_id = stream[at - 4:at]
        body_start = at + len(marker) + 4  # the version id follows
        end = body_start
        while True:  # the footer, followed by the next section or the end of the device state
            end = stream.index(b"\x7e" + section_id, end)
            if stream[end + 5] in (0x02, 0x04, 0x08, 0x1F, 0x01, 0x06):
                break
            end += 1
        out[idstr, instance] = stream[body_start:end]
    return out


@pytest.mark.skipif(not QEMU72.exists(), reason="QEMU 7.2 build not present")
def test_sections_match_qemu_72(tmp_path: Path) -> None:
    """The same port program on QEMU 7.2 (``-M pc``) and on our devices gives the same bytes."""
    from qtest.machine import QTestMachine

    bench = Bench()
    ours_reads = bench.run(PROGRAM)
    stream = tmp_path / "stream"
    with QTestMachine(str(QEMU72), ["-M", "pc", "-nodefaults", "-S"]) as vm:
        qemu_reads = []
        for line in PROGRAM:
            op, *args = line.split()
            value = getattr(vm.qtest, op)(*(int(a, 16) for a in args))
            if op.startswith(("in", "read")):
                qemu_reads.append(value)
        vm.qmp.cmd("migrate", uri=f"exec:cat > {stream}")
        deadline = time.monotonic() + 60
        while vm.qmp.cmd("query-migrate").get("status") != "completed":  # polled, as libqtest does
            assert time.monotonic() < deadline
    assert ours_reads == qemu_reads
    ours = bench.sections()
    theirs = _qemu_sections(stream.read_bytes(), list(ours))
    assert {key: blob for key, (_, blob) in ours.items()} == theirs
    fresh = Bench()  # QEMU's bytes load, and save again identically
    fresh.load_sections({key: (ours[key][0], blob) for key, blob in theirs.items()})
    assert {key: blob for key, (_, blob) in fresh.sections().items()} == theirs
