"""The i8257/8237 ISA DMA controllers as QEMU 7.2 models them (hw/dma/i8257.c): QOM type ``i8257``.

Owns one controller's channel registers (base/current address and count through the byte
flip-flop), command, mode, request, mask and status registers, master reset, the page (and
optional high page) registers, the channel-run loop that calls the registered device handlers,
the memory side of transfers (``read_memory``/``write_memory`` through an ``AddressSpace``), and
the ``dma`` VMState section. :func:`create_dma_pair` builds the PC's two cascaded controllers
exactly as QEMU's ``i8257_dma_init(bus, 0)`` does for PIIX3 (no high page registers on ``pc``).

Also owns :func:`portio_regions`, QEMU's ``portio_list`` semantics for ISA devices whose ports
have holes (one region per contiguous run, word accesses split in two byte accesses).

Not modelled: QEMU re-runs active channels from an idle bottom half; here a run happens on each
register write or DREQ change, and ``request_run`` (if the board sets it) is called when a
channel is still active afterwards, so that the board can schedule :meth:`I8257.run` again.
"""
from __future__ import annotations

from collections.abc import Callable

from emu.devices.base import Device
from emu.memory import AccessRules, AddressSpace, CallbackOps, MemoryRegion
from emu.migration.vmstate import Field, VMStateDescription

ADDR, COUNT = 0, 1
# Every command bit but "controller disable" (0x04) is refused, as by QEMU.
CMD_NOT_SUPPORTED = 0x01 | 0x02 | 0x08 | 0x10 | 0x20 | 0x40 | 0x80
# Page register port (low 3 bits) -> channel of the controller; -1: no page register there.
PAGE_CHANNEL = (-1, 2, 3, 1, -1, -1, -1, 0)
PAGE_PORTS = ((1, 3), (7, 1))  # (offset, length) runs from page_base
PAGEH_PORTS = ((1, 3), (7, 3))  # from pageh_base (overlapping the next controller's, as in QEMU)

#: ``handler(nchan, dma_pos, dma_len) -> new dma_pos``: a device's transfer routine.
TransferHandler = Callable[[int, int, int], int]


def portio_regions(name: str, base: int, runs: tuple[tuple[int, int], ...], read: Callable[[int], int],
                   write: Callable[[int, int], None], owner: object) -> list[tuple[int, MemoryRegion]]:
    """(port, region) pairs for byte-wide ports at ``base + offset`` for each (offset, length) run.

    The callbacks get the absolute port. As QEMU's ``portio_read``/``portio_write``: byte
    accesses go through; a word access is two byte accesses, its high byte reading 0xff when it
    falls past the run; other sizes read all-ones and write nothing."""
    out = []
    for offset, length in runs:
        start = base + offset

        def rd(off: int, size: int, start: int = start, length: int = length) -> int:
            if size == 1:
                return read(start + off) & 0xFF
            if size != 2:
                return (1 << (8 * size)) - 1
            high = read(start + off + 1) & 0xFF if off + 1 < length else 0xFF
            return (read(start + off) & 0xFF) | (high << 8)

        def wr(off: int, value: int, size: int, start: int = start, length: int = length) -> None:
            if size == 1:
                write(start + off, value & 0xFF)
            elif size == 2:
                write(start + off, value & 0xFF)
                if off + 1 < length:
                    write(start + off + 1, (value >> 8) & 0xFF)

        rules = AccessRules(valid_max=4, valid_unaligned=True, impl_max=4, impl_unaligned=True)
        out.append((start, MemoryRegion.io(name, length, CallbackOps(rd, wr, rules), owner=owner)))
    return out


class DmaChannel:
    """One channel's registers (QEMU's ``I8257Regs``)."""

    def __init__(self) -> None:
        self.now = [0, 0]  # current address offset and transferred count
        self.base = [0, 0]  # programmed base address and count
        self.mode = self.page = self.pageh = self.dack = self.eop = 0
        self.handler: TransferHandler | None = None


class I8257(Device):
    """One controller. ``dshift`` 0 is the 8-bit controller (channels 0-3), 1 the 16-bit one
    (channels 4-7, word-spaced ports). The board maps ``io_regions`` (absolute port, region)."""

    type_name = "i8257"
    type_parent = "isa-device"

    def __init__(self, base: int = 0x00, page_base: int = 0x80, pageh_base: int = -1, dshift: int = 0,
                 address_space: AddressSpace | None = None, instance_id: int = 0) -> None:
        super().__init__()
        self.base, self.page_base, self.pageh_base, self.dshift = base, page_base, pageh_base, dshift
        self.address_space = address_space
        self.instance_id = instance_id
        self.regs = [DmaChannel() for _ in range(4)]
        self.status = self.command = self.mask = self.flip_flop = 0
        self.running = False
        self.request_run: Callable[[], None] | None = None
        rules = AccessRules(valid_max=4, impl_max=1)
        size = 8 << dshift
        self.channel_io = MemoryRegion.io("dma-chan", size, CallbackOps(self._read_chan, self._write_chan, rules),
                                          owner=self)
        self.cont_io = MemoryRegion.io("dma-cont", size, CallbackOps(self._read_cont, self._write_cont, rules),
                                       owner=self)
        self.io_regions: list[tuple[int, MemoryRegion]] = [(base, self.channel_io), (base + size, self.cont_io)]
        self.io_regions += portio_regions("dma-page", page_base, PAGE_PORTS, self._read_page,
                                          self._write_page, self)
        if pageh_base >= 0:
            self.io_regions += portio_regions("dma-pageh", pageh_base, PAGEH_PORTS, self._read_pageh,
                                              self._write_pageh, self)
        self.reset()

    def reset(self) -> None:
        """QEMU resets through the master-clear command: the channel registers survive."""
        self._write_cont(0x05 << self.dshift, 0, 1)

    # ---------------------------------------------------------------- page registers
    def _read_page(self, port: int) -> int:
        ch = PAGE_CHANNEL[port & 7]
        return self.regs[ch].page if ch >= 0 else 0

    def _write_page(self, port: int, value: int) -> None:
        ch = PAGE_CHANNEL[port & 7]
        if ch >= 0:
            self.regs[ch].page = value & 0xFF

    def _read_pageh(self, port: int) -> int:
        ch = PAGE_CHANNEL[port & 7]
        return self.regs[ch].pageh if ch >= 0 else 0

    def _write_pageh(self, port: int, value: int) -> None:
        ch = PAGE_CHANNEL[port & 7]
        if ch >= 0:
            self.regs[ch].pageh = value & 0xFF

    # ---------------------------------------------------------------- channel registers
    def _getff(self) -> int:
        ff = self.flip_flop
        self.flip_flop = 1 - ff
        return ff

    def _read_chan(self, offset: int, size: int) -> int:
        iport = (offset >> self.dshift) & 0x0F
        r = self.regs[iport >> 1]
        direction = -1 if r.mode & 0x20 else 1
        ff = self._getff()
        if iport & 1:
            val = (r.base[COUNT] << self.dshift) - r.now[COUNT]
        else:
            val = r.now[ADDR] + r.now[COUNT] * direction
        return (val >> (self.dshift + (ff << 3))) & 0xFF

    def _write_chan(self, offset: int, value: int, size: int) -> None:
        iport = (offset >> self.dshift) & 0x0F
        r = self.regs[iport >> 1]
        nreg = iport & 1
        if self._getff():
            r.base[nreg] = (r.base[nreg] & 0xFF) | ((value << 8) & 0xFF00)
            r.now[ADDR] = r.base[ADDR] << self.dshift  # a complete write restarts the channel
            r.now[COUNT] = 0
        else:
            r.base[nreg] = (r.base[nreg] & 0xFF00) | (value & 0xFF)

    # ---------------------------------------------------------------- control registers
    def _write_cont(self, offset: int, value: int, size: int) -> None:
        iport = (offset >> self.dshift) & 0x0F
        ch = value & 3
        if iport == 0x00:  # command
            if value and value & CMD_NOT_SUPPORTED:
                return
            self.command = value & 0xFF
        elif iport == 0x01:  # request: software DREQ
            if value & 4:
                self.status |= 1 << (ch + 4)
            else:
                self.status &= ~(1 << (ch + 4))
            self.status &= ~(1 << ch)
            self.run()
        elif iport == 0x02:  # single mask bit
            if value & 4:
                self.mask |= 1 << ch
            else:
                self.mask &= ~(1 << ch)
            self.run()
        elif iport == 0x03:
            self.regs[ch].mode = value & 0xFF
        elif iport == 0x04:
            self.flip_flop = 0
        elif iport == 0x05:  # master clear
            self.flip_flop, self.mask, self.status, self.command = 0, 0xFF, 0, 0
        elif iport == 0x06:
            self.mask = 0
            self.run()
        elif iport == 0x07:
            self.mask = value & 0xFF
            self.run()

    def _read_cont(self, offset: int, size: int) -> int:
        iport = (offset >> self.dshift) & 0x0F
        if iport == 0x00:
            val = self.status
            self.status &= 0xF0  # reading status clears the terminal-count bits
            return val
        if iport == 0x01:
            return self.mask
        return 0

    # ---------------------------------------------------------------- the transfer API (QEMU's IsaDmaClass)
    def register_channel(self, nchan: int, handler: TransferHandler) -> None:
        """Installs a device's transfer routine for channel ``nchan`` (0-7; this controller's are
        ``nchan & 3``). It is called as ``handler(nchan, pos, len)`` while the channel is unmasked
        with DREQ held, and returns the new position; reaching ``len`` sets terminal count."""
        self.regs[nchan & 3].handler = handler

    def has_autoinitialization(self, nchan: int) -> bool:
        return bool(self.regs[nchan & 3].mode & 0x10)

    def hold_dreq(self, nchan: int) -> None:
        self.status |= 1 << ((nchan & 3) + 4)
        self.run()

    def release_dreq(self, nchan: int) -> None:
        self.status &= ~(1 << ((nchan & 3) + 4))
        self.run()

    def _address(self, r: DmaChannel) -> int:
        return ((r.pageh & 0x7F) << 24) | (r.page << 16) | r.now[ADDR]

    def read_memory(self, nchan: int, pos: int, length: int) -> bytes:
        """``length`` bytes of guest memory at the channel's address + ``pos`` (memory -> device).
        A verify-mode channel moves nothing (zeros). In address-decrement mode QEMU reads the
        block below the address and copies its upper half over its lower half (not a reversal);
        this does the same."""
        r = self.regs[nchan & 3]
        if r.mode & 0x0C == 0 or self.address_space is None:
            return bytes(length)
        if not r.mode & 0x20:
            return bytes(self.address_space.dma_read(self._address(r) + pos, length))
        buf = self.address_space.dma_read(self._address(r) - pos - length, length)
        for i in range(length >> 1):
            buf[i] = buf[length - i - 1]
        return bytes(buf)

    def write_memory(self, nchan: int, pos: int, data: bytes) -> int:
        """Stores ``data`` (device -> memory) at the channel's address + ``pos`` (address-decrement
        mode: the block ending at address - pos, unreversed, as QEMU writes it). Returns its length."""
        r = self.regs[nchan & 3]
        if r.mode & 0x0C == 0 or self.address_space is None:
            return len(data)
        addr = self._address(r) - pos - len(data) if r.mode & 0x20 else self._address(r) + pos
        self.address_space.write(addr, bytes(data))
        return len(data)

    def run(self) -> None:
        """Runs each unmasked channel with DREQ held once (QEMU's ``i8257_dma_run``)."""
        if self.running:
            self._request_rerun()
            return
        self.running = True
        active = False
        try:
            for ch in range(4):
                bit = 1 << ch
                if not self.mask & bit and self.status & (bit << 4):
                    self._channel_run(ch)
                    active = True
        finally:
            self.running = False
        if active:
            self._request_rerun()

    def _request_rerun(self) -> None:
        if self.request_run is not None:
            self.request_run()

    def _channel_run(self, ch: int) -> None:
        r = self.regs[ch]
        length = (r.base[COUNT] + 1) << self.dshift
        nchan = ch + (self.dshift << 2)
        n = r.handler(nchan, r.now[COUNT], length) if r.handler is not None else r.now[COUNT]
        r.now[COUNT] = n
        if n == length:
            self.status |= 1 << ch  # terminal count

    # ---------------------------------------------------------------- migration
    def vmstate_id(self) -> tuple[str, int]:
        return "dma", self.instance_id

    def save_vmstate(self) -> dict:
        state = {"command": self.command, "mask": self.mask, "flip_flop": self.flip_flop, "dshift": self.dshift}
        for i, r in enumerate(self.regs):
            p = f"regs[{i}]."
            state.update({p + "now[0]": r.now[0], p + "now[1]": r.now[1], p + "base[0]": r.base[0],
                          p + "base[1]": r.base[1], p + "mode": r.mode, p + "page": r.page, p + "pageh": r.pageh,
                          p + "dack": r.dack, p + "eop": r.eop})
        return state

    def load_vmstate(self, state: dict) -> None:
        self.command, self.mask = int(state["command"]), int(state["mask"])
        self.flip_flop = int(state["flip_flop"])
        for i, r in enumerate(self.regs):
            p = f"regs[{i}]."
            r.now = [int(state[p + "now[0]"]), int(state[p + "now[1]"])]
            r.base = [int(state[p + "base[0]"]), int(state[p + "base[1]"])]
            for name in ("mode", "page", "pageh", "dack", "eop"):
                setattr(r, name, int(state[p + name]))
        self.run()  # QEMU's post_load


def _regs_fields() -> list[Field]:
    fields = []
    for i in range(4):
        p = f"regs[{i}]."
        fields += [Field(p + "now[0]", "int32"), Field(p + "now[1]", "int32"), Field(p + "base[0]", "uint16"),
                   Field(p + "base[1]", "uint16")]
        fields += [Field(p + n, "uint8") for n in ("mode", "page", "pageh", "dack", "eop")]
    return fields


#: QEMU's ``vmstate_i8257`` ("dma" v1). The 4-element ``regs`` struct array is laid out field by
#: field (the same stream bytes; the vmdesc names its elements ``regs[i].field``).
VMSTATE_I8257 = VMStateDescription(
    name="dma", version_id=1, minimum_version_id=1,
    fields=[Field("command", "uint8"), Field("mask", "uint8"), Field("flip_flop", "uint8"),
            Field("dshift", "int32")] + _regs_fields(),
)

I8257.vmsd = VMSTATE_I8257


def create_dma_pair(address_space: AddressSpace | None = None) -> tuple[I8257, I8257]:
    """The PC's controllers as ``i8257_dma_init(bus, high_page_enable=0)``: 8-bit at 0x00/0x08
    with pages 0x81-0x83, 0x87; 16-bit at 0xc0/0xd0 (word-spaced) with pages 0x89-0x8b, 0x8f.
    VMState instances 0 and 1, in QEMU's creation order."""
    dma1 = I8257(base=0x00, page_base=0x80, pageh_base=-1, dshift=0, address_space=address_space, instance_id=0)
    dma2 = I8257(base=0xC0, page_base=0x88, pageh_base=-1, dshift=1, address_space=address_space, instance_id=1)
    return dma1, dma2
