"""The ISA floppy disk controller of the ``pc`` machine with no floppy drives (QOM type ``isa-fdc``).

QEMU 7.2's i440FX board always creates an ``isa-fdc`` (``pc_basic_device_init(..., create_fdctrl
=true)``), ``-nodefaults`` or not, at 0x3f0 (ports 0x3f1-0x3f5 and 0x3f7: 0x3f0 is not decoded,
0x3f6 belongs to IDE), IRQ 6, DMA channel 2. This module owns that controller as QEMU's
hw/block/fdc.c behaves with both drive slots empty: SRB, DOR, TDR, MSR/DSR, the command FIFO
with every command's parameter count and result bytes, DIR/CCR, resets (DOR, DSR, power-down),
the post-reset SENSE INTERRUPT sequence, the IRQ, READ ID's 20 ms result timer, and the DMA
channel handler QEMU registers.

Not modelled: drives and media (no ``-drive if=floppy``). Every data command (READ, WRITE,
VERIFY, SCAN, READ/WRITE DELETED, READ TRACK) therefore ends at once in an abnormal-termination
result, exactly as QEMU's empty drives make it; no sector is ever read or written.

Migration: QEMU 7.2's ``fdc`` section (version 2; the ISA wrapper's ``state`` struct laid out in
place): registers, the 512-byte FIFO and its position, the SPECIFY/CONFIGURE/LOCK/POWERDOWN
values, the drive count (must be 2), each drive's head/track/sector with its ``fdrive/*``
subsections, then the ``fdc/reset_sensei``, ``fdc/result_timer`` and ``fdc/phase`` subsections.
``status1``, ``status2`` and ``eot`` travel as QEMU has them but are never used without media (our
controller does not keep them: they save as 0). As in QEMU, a load revalidates the empty drives,
so a sector count set by FORMAT TRACK does not survive migration.
"""
from __future__ import annotations

import errno
from typing import Any

from emu.clock import VirtualClock
from emu.devices.base import Device
from emu.devices.i8257 import I8257, portio_regions
from emu.migration.vmstate import Field, LoadContext, VMStateDescription, load_state, save_state

SECTOR_LEN = 512
SEL_MASK, DOR_NRESET, DOR_DMAEN = 0x01, 0x04, 0x08  # two drives (QEMU's MAX_FD)
DOR_MOTEN0, DOR_MOTEN1 = 0x10, 0x20
TDR_BOOTSEL = 0x04
SRA_NDRV2, SRA_INTPEND = 0x40, 0x80
SRB_MTR0, SRB_MTR1, SRB_DR0 = 0x01, 0x02, 0x20
DSR_DRATEMASK, DSR_PWRDOWN, DSR_SWRESET = 0x03, 0x40, 0x80
MSR_CMDBUSY, MSR_NONDMA, MSR_DIO, MSR_RQM = 0x10, 0x20, 0x40, 0x80
SR0_DS0, SR0_DS1, SR0_HEAD, SR0_SEEK, SR0_ABNTERM, SR0_INVCMD, SR0_RDYCHG = 0x01, 0x02, 0x04, 0x20, 0x40, 0x80, 0xC0
SR1_MA, SR1_EC = 0x01, 0x80
DIR_DSKCHG = 0x80
SECTOR_SC = 2  # the "sector size code" QEMU reports
RESET_SENSEI_COUNT = 4
PHASE_COMMAND, PHASE_EXECUTION, PHASE_RESULT = 1, 2, 3
READ_ID_NS = 1_000_000_000 // 50
MAX_FD = 2


class FloppyDrive:
    """A drive slot with nothing connected: bounds 0, read-only, media changed."""

    def __init__(self) -> None:
        self.head = self.track = self.sect = 0
        self.perpendicular = 0
        self.last_sect = self.max_track = 0  # FORMAT TRACK may change last_sect, as in QEMU
        self.ro = True
        self.media_changed = 1
        self.media_rate = 0

    def seek(self, head: int, track: int, sect: int) -> int:
        """QEMU's ``fd_seek`` on a single-sided drive without medium: moves the head when the
        target is within bounds and differs, and returns 2 (no medium) or 3 (sector too big)."""
        head, track, sect = head & 0xFF, track & 0xFF, sect & 0xFF
        if track > self.max_track or head != 0:
            return 2
        if sect > self.last_sect:
            return 3
        if track * self.last_sect + sect != self.track * self.last_sect + self.head * self.last_sect + self.sect:
            self.head, self.track, self.sect = head, track, sect
        return 2


# (value, mask, parameter bytes, handler name): QEMU's table; the first match wins.
COMMANDS: tuple[tuple[int, int, int, str], ...] = (
    (0x06, 0x1F, 8, "transfer"), (0x05, 0x3F, 8, "transfer"), (0x0F, 0xFF, 2, "seek"),
    (0x08, 0xFF, 0, "sense_interrupt_status"), (0x07, 0xFF, 1, "recalibrate"), (0x0D, 0xBF, 5, "format_track"),
    (0x02, 0xBF, 8, "transfer"), (0x4E, 0xFF, 17, "restore"), (0x2E, 0xFF, 0, "save"),
    (0x0C, 0x1F, 8, "transfer_del"), (0x11, 0x1F, 8, "transfer"), (0x16, 0x1F, 8, "transfer"),
    (0x19, 0x1F, 8, "transfer"), (0x1D, 0x1F, 8, "transfer"), (0x09, 0x3F, 8, "transfer_del"),
    (0x0A, 0xBF, 1, "read_id"), (0x03, 0xFF, 2, "specify"), (0x04, 0xFF, 1, "sense_drive_status"),
    (0x12, 0xFF, 1, "perpendicular_mode"), (0x13, 0xFF, 3, "configure"), (0x17, 0xFF, 2, "powerdown_mode"),
    (0x33, 0xFF, 1, "option"), (0x8E, 0xFF, 5, "drive_specification"), (0x8F, 0xFF, 2, "relative_seek_out"),
    (0xCD, 0xFF, 10, "unimplemented"), (0xCF, 0xFF, 2, "relative_seek_in"), (0x14, 0x7F, 0, "lock"),
    (0x0E, 0xFF, 0, "dumpreg"), (0x10, 0xFF, 0, "version"), (0x18, 0xFF, 0, "part_id"),
    (0x05, 0x1F, 8, "transfer"),
)


def get_command(cmd: int) -> tuple[int, str]:
    """(parameter count, handler name) of a command byte."""
    for value, mask, params, name in COMMANDS:
        if cmd & mask == value:
            return params, name
    return 0, "unimplemented"


#: QEMU's ``vmstate_fdrive`` (a drive slot; its subsections follow each drive's fields in place)
VMSTATE_FDRIVE = VMStateDescription(
    name="fdrive", version_id=1, minimum_version_id=1,
    fields=[Field("head", "uint8"), Field("track", "uint8"), Field("sect", "uint8")],
    subsections=[
        # only for a drive with a block backend: never here
        VMStateDescription("fdrive/media_changed", 1, 1, [Field("media_changed", "uint8")], needed=lambda s: False),
        VMStateDescription("fdrive/media_rate", 1, 1, [Field("media_rate", "uint8")], needed=lambda s: True),
        VMStateDescription("fdrive/perpendicular", 1, 1, [Field("perpendicular", "uint8")],
                           needed=lambda s: bool(s.get("perpendicular"))),
    ],
)

_FDC_REGS = ("sra", "srb", "dor_vmstate", "tdr", "dsr", "msr", "status0", "status1", "status2")
_FDC_FIFO_STATE = (("data_pos", "uint32"), ("data_len", "uint32"), ("data_state", "uint8"), ("data_dir", "uint8"),
                   ("eot", "uint8"), ("timer0", "uint8"), ("timer1", "uint8"), ("precomp_trk", "uint8"),
                   ("config", "uint8"), ("lock", "uint8"), ("pwrd", "uint8"))
_DRIVE_KEYS = ("head", "track", "sect", "media_rate", "perpendicular")


def _reconstruct_phase(state: dict) -> int:
    """QEMU's ``reconstruct_phase``: the phase QEMU 2.3 implied from MSR (migration ABI)."""
    msr = int(state.get("msr", 0))
    if msr & MSR_NONDMA or not msr & MSR_RQM:
        return PHASE_EXECUTION
    return PHASE_RESULT if msr & MSR_DIO else PHASE_COMMAND


def _put_drive(index: int) -> Any:
    def put(state: dict) -> bytes:
        prefix = f"drives[{index}]."
        return save_state(VMSTATE_FDRIVE, {k: state.get(prefix + k, 0) for k in _DRIVE_KEYS})
    return put


def _get_drive(index: int) -> Any:
    def get(f: Any, state: dict, ctx: LoadContext) -> int:
        drive: dict = {}
        ret = load_state(f, VMSTATE_FDRIVE, drive, VMSTATE_FDRIVE.version_id, ctx)
        state.update({f"drives[{index}].{k}": v for k, v in drive.items()})
        return ret
    return get


def _get_num_floppies(f: Any, state: dict, ctx: LoadContext) -> int:
    """``VMSTATE_UINT8_EQUAL``: the stream must have QEMU's two drive slots."""
    value = f.get(1)[0]
    if value != MAX_FD:
        ctx.error(f"{MAX_FD:x} != {value:x}")
        return -errno.EINVAL
    state["num_floppies"] = value
    return 0


#: QEMU 7.2's ``vmstate_isa_fdc`` ("fdc" version 2) with its ``vmstate_fdc`` struct inlined
VMSTATE_FDC = VMStateDescription(
    name="fdc", version_id=2, minimum_version_id=2,
    fields=[Field(name, "uint8") for name in _FDC_REGS]
    + [Field("fifo", "buffer", SECTOR_LEN, vmdesc_type="uint8")]
    + [Field(name, kind) for name, kind in _FDC_FIFO_STATE]
    + [Field("num_floppies", "uint8", get=_get_num_floppies, vmdesc_type="uint8 equal")]
    + [Field(f"drives[{i}]", "struct", put=_put_drive(i), get=_get_drive(i)) for i in range(MAX_FD)],
    subsections=[
        VMStateDescription("fdc/reset_sensei", 1, 1, [Field("reset_sensei", "int32")],
                           needed=lambda s: bool(s.get("reset_sensei"))),
        VMStateDescription("fdc/result_timer", 1, 1, [Field("result_timer", "int64", vmdesc_type="timer")],
                           needed=lambda s: int(s.get("result_timer", -1)) != -1),
        VMStateDescription("fdc/phase", 1, 1, [Field("phase", "uint8")],
                           needed=lambda s: _reconstruct_phase(s) != s.get("phase")),
    ],
)


class IsaFdc(Device):
    """The controller. ``irq`` is its output (ISA IRQ 6); ``io_regions`` are (port, region)
    pairs to map; ``dma`` (the 8-bit i8257) gets the channel-2 handler; ``clock`` times READ ID."""

    type_name = "isa-fdc"
    type_parent = "isa-device"
    vmsd = VMSTATE_FDC

    def __init__(self, iobase: int = 0x3F0, dma: I8257 | None = None, dma_chann: int = 2,
                 clock: VirtualClock | None = None) -> None:
        super().__init__()
        self.irq = self.init_gpio_out(1)[0]
        self.dma, self.dma_chann = dma, (dma_chann if dma is not None else -1)
        self.clock = clock if clock is not None else VirtualClock(manual=True)
        self.result_timer = self.clock.new_timer(self._result_timer)
        self.io_regions = portio_regions("fdc", iobase, ((1, 5), (7, 1)), self._read, self._write, self)
        if dma is not None:
            dma.register_channel(dma_chann, self._transfer_handler)
        self.drives = [FloppyDrive(), FloppyDrive()]
        self.fifo = bytearray(SECTOR_LEN)
        self.version, self.config = 0x90, 0x60  # Intel 82078; implied seek and FIFO enabled
        self.sra = self.srb = self.dor = self.tdr = self.dsr = self.msr = self.status0 = 0
        self.cur_drv = self.data_pos = self.data_len = self.data_state = self.data_dir = 0
        self.phase, self.reset_sensei = PHASE_COMMAND, 0
        self.timer0 = self.timer1 = self.precomp_trk = self.lock = self.pwrd = 0
        self.reset()

    def reset(self) -> None:
        """System reset: the controller reset without the interrupt."""
        self._reset(do_irq=False)

    # ---------------------------------------------------------------- state helpers
    def _drive(self, unit: int) -> FloppyDrive:
        """Unit 0/1 as the boot-select bit of TDR maps them."""
        swapped = bool(self.tdr & TDR_BOOTSEL)
        return self.drives[unit ^ 1 if swapped else unit]

    def _cur(self) -> FloppyDrive:
        return self._drive(self.cur_drv)

    def _raise_irq(self) -> None:
        if not self.sra & SRA_INTPEND:
            self.irq.set(1)
            self.sra |= SRA_INTPEND
        self.reset_sensei = 0

    def _reset_irq(self) -> None:
        self.status0 = 0
        if self.sra & SRA_INTPEND:
            self.irq.set(0)
            self.sra &= ~SRA_INTPEND

    def _reset(self, do_irq: bool) -> None:
        self._reset_irq()
        self.sra = SRA_NDRV2  # no second drive
        self.srb = 0xC0
        self.cur_drv = 0
        self.dor = DOR_NRESET | (DOR_DMAEN if self.dma_chann != -1 else 0)
        self.msr = MSR_RQM
        self.reset_sensei = 0
        self.result_timer.cancel()
        self.data_pos = self.data_len = self.data_state = self.data_dir = 0
        for drive in self.drives:
            drive.seek(0, 0, 1)  # recalibrate
        self._to_command_phase()
        if do_irq:
            self.status0 |= SR0_RDYCHG
            self._raise_irq()
            self.reset_sensei = RESET_SENSEI_COUNT

    def _to_command_phase(self) -> None:
        self.phase = PHASE_COMMAND
        self.data_dir = 0
        self.data_pos, self.data_len = 0, 1
        self.msr = (self.msr & ~(MSR_CMDBUSY | MSR_DIO)) | MSR_RQM

    def _to_result_phase(self, length: int) -> None:
        self.phase = PHASE_RESULT
        self.data_dir = 1
        self.data_len, self.data_pos = length, 0
        self.msr |= MSR_CMDBUSY | MSR_RQM | MSR_DIO

    def _stop_transfer(self, status0: int, status1: int, status2: int) -> None:
        drive = self._cur()
        self.status0 = (self.status0 & ~(SR0_DS0 | SR0_DS1 | SR0_HEAD)) | self.cur_drv
        self.status0 |= (SR0_HEAD if drive.head else 0) | status0
        self.fifo[0:7] = bytes([self.status0 & 0xFF, status1, status2, drive.track, drive.head, drive.sect,
                                SECTOR_SC])
        self.data_dir = 1
        if self.dma is not None and not self.msr & MSR_NONDMA:
            self.dma.release_dreq(self.dma_chann)
        self.msr = (self.msr | MSR_RQM | MSR_DIO) & ~MSR_NONDMA
        self._to_result_phase(7)
        self._raise_irq()

    # ---------------------------------------------------------------- ports
    def _read(self, port: int) -> int:
        reg = port & 7
        if reg == 1:
            return self.srb
        if reg == 2:
            return self.dor | self.cur_drv
        if reg == 3:
            return self.tdr
        if reg == 4:
            self.dsr &= ~DSR_PWRDOWN
            self.dor |= DOR_NRESET  # reading MSR takes the controller out of reset, as in QEMU
            return self.msr
        if reg == 5:
            return self._read_data()
        if reg == 7:
            return DIR_DSKCHG if self._cur().media_changed else 0
        return self.sra

    def _write(self, port: int, value: int) -> None:
        reg = port & 7
        if reg == 2:
            self._write_dor(value)
        elif not self.dor & DOR_NRESET:
            return  # in reset, only DOR is written
        elif reg == 3:
            self.tdr = value & TDR_BOOTSEL
        elif reg == 4:
            self._write_dsr(value)
        elif reg == 5:
            self._write_data(value)
        elif reg == 7:
            self.dsr = (self.dsr & ~DSR_DRATEMASK) | (value & DSR_DRATEMASK)

    def _write_dor(self, value: int) -> None:
        self.srb &= ~(SRB_MTR0 | SRB_MTR1 | SRB_DR0)
        self.srb |= (SRB_MTR0 if value & DOR_MOTEN0 else 0) | (SRB_MTR1 if value & DOR_MOTEN1 else 0)
        self.srb |= SRB_DR0 if value & 1 else 0
        if value & DOR_NRESET and not self.dor & DOR_NRESET:
            self._reset(do_irq=True)  # leaving reset
            self.dsr &= ~DSR_PWRDOWN
        self.cur_drv = value & SEL_MASK
        self.dor = value

    def _write_dsr(self, value: int) -> None:
        if value & DSR_SWRESET:
            self.dor &= ~DOR_NRESET
            self._reset(do_irq=True)
            self.dor |= DOR_NRESET
        if value & DSR_PWRDOWN:
            self._reset(do_irq=True)
        self.dsr = value

    def _read_data(self) -> int:
        self.dsr &= ~DSR_PWRDOWN
        if not self.msr & MSR_RQM or not self.msr & MSR_DIO:
            return 0
        pos = self.data_pos % SECTOR_LEN
        self.data_pos += 1
        if self.data_pos == self.data_len:  # the last result byte
            self.msr &= ~MSR_RQM
            self._to_command_phase()
            self._reset_irq()
        return self.fifo[pos]

    def _write_data(self, value: int) -> None:
        if not self.msr & MSR_RQM or self.msr & MSR_DIO:
            return
        self.dsr &= ~DSR_PWRDOWN
        pos = self.data_pos % SECTOR_LEN
        self.data_pos += 1
        self.fifo[pos] = value
        if self.data_pos == self.data_len:
            self.msr &= ~MSR_RQM
        if pos == 0:
            params, _ = get_command(value)
            self.data_len = params + 1
            if params:
                self.msr |= MSR_RQM
            self.msr |= MSR_CMDBUSY
        if self.data_pos == self.data_len:
            self.phase = PHASE_EXECUTION
            getattr(self, "_cmd_" + get_command(self.fifo[0])[1])()

    def _transfer_handler(self, nchan: int, dma_pos: int, dma_len: int) -> int:
        # No transfer ever starts without media; QEMU answers 0 while RQM is set (always here).
        return 0 if self.msr & MSR_RQM else dma_pos

    def _result_timer(self) -> None:
        drive = self._cur()
        if drive.last_sect:
            drive.sect = drive.sect % drive.last_sect + 1
        if self.dsr & DSR_DRATEMASK != drive.media_rate:
            self._stop_transfer(SR0_ABNTERM, SR1_MA, 0)
        else:
            self._stop_transfer(0, 0, 0)

    # ---------------------------------------------------------------- commands (QEMU's handlers)
    def _select(self) -> FloppyDrive:
        self.cur_drv = self.fifo[1] & SEL_MASK
        return self._cur()

    def _cmd_transfer(self) -> None:
        kt, kh, ks = self.fifo[2], self.fifo[3], self.fifo[4]
        ret = self._select().seek(kh, kt, ks)
        self._stop_transfer(SR0_ABNTERM, SR1_EC if ret == 3 else 0, 0)
        self.fifo[3:6] = bytes([kt, kh, ks])

    def _cmd_transfer_del(self) -> None:
        self._stop_transfer(SR0_ABNTERM | SR0_SEEK, 0, 0)

    def _seek_done(self) -> None:
        self._to_command_phase()
        self.status0 |= SR0_SEEK
        self._raise_irq()

    def _cmd_seek(self) -> None:
        drive = self._select()
        self._to_command_phase()
        drive.seek(drive.head, self.fifo[2], drive.sect)
        self.status0 |= SR0_SEEK
        self._raise_irq()

    def _cmd_recalibrate(self) -> None:
        self._select().seek(0, 0, 1)
        self._seek_done()

    def _cmd_relative_seek_in(self) -> None:
        drive = self._select()
        target = drive.max_track - 1 if self.fifo[2] + drive.track >= drive.max_track else drive.track + self.fifo[2]
        drive.seek(drive.head, target, drive.sect)
        self._seek_done()

    def _cmd_relative_seek_out(self) -> None:
        drive = self._select()
        target = 0 if self.fifo[2] > drive.track else drive.track - self.fifo[2]
        drive.seek(drive.head, target, drive.sect)
        self._seek_done()

    def _cmd_sense_interrupt_status(self) -> None:
        drive = self._cur()
        if self.reset_sensei > 0:
            self.fifo[0] = SR0_RDYCHG + RESET_SENSEI_COUNT - self.reset_sensei
            self.reset_sensei -= 1
        elif not self.sra & SRA_INTPEND:
            self.fifo[0] = SR0_INVCMD
            self._to_result_phase(1)
            return
        else:
            self.fifo[0] = (self.status0 & ~(SR0_HEAD | SR0_DS1 | SR0_DS0) | self.cur_drv) & 0xFF
        self.fifo[1] = drive.track
        self._to_result_phase(2)
        self._reset_irq()
        self.status0 = SR0_RDYCHG

    def _cmd_format_track(self) -> None:
        drive = self._select()
        drive.last_sect = self.fifo[3]  # QEMU keeps the sector count; nothing is formatted
        self._stop_transfer(0, 0, 0)

    def _cmd_read_id(self) -> None:
        self._cur().head = (self.fifo[1] >> 2) & 1
        self.result_timer.mod(self.clock.now() + READ_ID_NS)

    def _cmd_specify(self) -> None:
        self.timer0 = (self.fifo[1] >> 4) & 0x0F
        self.timer1 = self.fifo[2] >> 1
        self.dor = self.dor & ~DOR_DMAEN if self.fifo[2] & 1 else self.dor | DOR_DMAEN
        self._to_command_phase()

    def _cmd_sense_drive_status(self) -> None:
        drive = self._select()
        drive.head = (self.fifo[1] >> 2) & 1
        self.fifo[0] = (drive.ro << 6) | (0x10 if drive.track == 0 else 0) | (drive.head << 2) | self.cur_drv | 0x28
        self._to_result_phase(1)

    def _cmd_perpendicular_mode(self) -> None:
        if self.fifo[1] & 0x80:
            self._cur().perpendicular = self.fifo[1] & 7
        self._to_command_phase()

    def _cmd_configure(self) -> None:
        self.config, self.precomp_trk = self.fifo[2], self.fifo[3]
        self._to_command_phase()

    def _cmd_powerdown_mode(self) -> None:
        self.pwrd = self.fifo[0] = self.fifo[1]
        self._to_result_phase(1)

    def _cmd_option(self) -> None:
        self._to_command_phase()

    def _cmd_drive_specification(self) -> None:
        last = self.fifo[(self.data_pos - 1) % SECTOR_LEN]
        if last & 0x80:
            if last & 0x40:
                self.fifo[0], self.fifo[2], self.fifo[3] = self.fifo[1], 0, 0
                self._to_result_phase(4)
            else:
                self._to_command_phase()
        # otherwise QEMU waits for more parameter bytes it can no longer accept (RQM stays clear)

    def _cmd_unimplemented(self) -> None:
        self.fifo[0] = SR0_INVCMD
        self._to_result_phase(1)

    def _cmd_lock(self) -> None:
        self.lock = 1 if self.fifo[0] & 0x80 else 0
        self.fifo[0] = self.lock << 4
        self._to_result_phase(1)

    def _cmd_dumpreg(self) -> None:
        cur = self._cur()
        self.fifo[0:10] = bytes([self._drive(0).track, self._drive(1).track, 0, 0, self.timer0,
                                 ((self.timer1 << 1) | (1 if self.dor & DOR_DMAEN else 0)) & 0xFF,
                                 cur.last_sect, (self.lock << 7) | (cur.perpendicular << 2), self.config,
                                 self.precomp_trk])
        self._to_result_phase(10)

    def _cmd_save(self) -> None:
        cur = self._cur()
        self.fifo[0:15] = bytes([0, 0, self._drive(0).track, self._drive(1).track, 0, 0, self.timer0, self.timer1,
                                 cur.last_sect, (self.lock << 7) | (cur.perpendicular << 2), self.config,
                                 self.precomp_trk, self.pwrd, 0, 0])
        self._to_result_phase(15)

    def _cmd_restore(self) -> None:
        cur = self._cur()
        self._drive(0).track, self._drive(1).track = self.fifo[3], self.fifo[4]
        self.timer0, self.timer1 = self.fifo[7], self.fifo[8]
        cur.last_sect = self.fifo[9]
        self.lock, cur.perpendicular = self.fifo[10] >> 7, (self.fifo[10] >> 2) & 0x0F
        self.config, self.precomp_trk, self.pwrd = self.fifo[11], self.fifo[12], self.fifo[13]
        self._to_command_phase()

    def _cmd_version(self) -> None:
        self.fifo[0] = self.version
        self._to_result_phase(1)

    def _cmd_part_id(self) -> None:
        self.fifo[0] = 0x41  # stepping 1
        self._to_result_phase(1)

    # ---------------------------------------------------------------- migration
    def save_vmstate(self) -> dict:
        state: dict = {name: getattr(self, name, 0) for name in _FDC_REGS if name != "dor_vmstate"}
        state["dor_vmstate"] = self.dor | self.cur_drv  # QEMU's pre_save
        state.update({name: getattr(self, name, 0) for name, _ in _FDC_FIFO_STATE})
        state.update(fifo=bytes(self.fifo), num_floppies=MAX_FD, reset_sensei=self.reset_sensei, phase=self.phase,
                     result_timer=self.result_timer.expire if self.result_timer.pending else -1)
        for i, drive in enumerate(self.drives):
            state.update({f"drives[{i}].{k}": getattr(drive, k) for k in _DRIVE_KEYS})
        return state

    def load_vmstate(self, state: dict) -> None:
        for name in (*(n for n in _FDC_REGS if n != "dor_vmstate"), *(n for n, _ in _FDC_FIFO_STATE)):
            if name in state and hasattr(self, name):
                setattr(self, name, int(state[name]))  # status1/status2/eot: not kept (see module doc)
        self.fifo = bytearray(bytes(state.get("fifo", self.fifo)).ljust(SECTOR_LEN, b"\0")[:SECTOR_LEN])
        dor = int(state.get("dor_vmstate", self.dor | self.cur_drv))  # QEMU's post_load
        self.cur_drv, self.dor = dor & SEL_MASK, dor & ~SEL_MASK
        self.reset_sensei = int(state.get("reset_sensei", 0))  # absent subsection: 0
        self.phase = int(state["phase"]) if "phase" in state else _reconstruct_phase(state)
        for i, drive in enumerate(self.drives):
            for k in _DRIVE_KEYS:
                if f"drives[{i}].{k}" in state:
                    setattr(drive, k, int(state[f"drives[{i}].{k}"]))
            drive.last_sect = drive.max_track = 0  # fd_revalidate of a slot without a drive
        expire = int(state.get("result_timer", -1))
        if expire != -1:
            self.result_timer.mod(expire)
        else:
            self.result_timer.cancel()
