"""``pc-testdev``: the ISA test device of kvm-unit-tests and QEMU's ``endianness-test``.

Regions, as QEMU 7.2's ``hw/misc/pc-testdev.c`` maps them:

=========================  ==========  =====  ===========================================
region                     where       size   behaviour
=========================  ==========  =====  ===========================================
``pc-testdev-ioport``      I/O 0xe0    4      a 32-bit latch; 1/2/4-byte accesses hit the
                                              bytes they cover (little-endian)
``pc-testdev-flush-page``  I/O 0xe4    4      4-byte accesses only; reads 0
``pc-testdev-ioport-byte`` I/O 0xe8    4      the same latch, split into byte accesses
``pc-testdev-irq-line``    I/O 0x2000  24     byte writes: ISA IRQ ``offset`` := value != 0
``pc-testdev-iomem``       0xff000000  64 KiB plain little-endian scratch memory
=========================  ==========  =====  ===========================================

Differences from QEMU, on purpose: a flush-page write (QEMU ``mprotect``s the host mapping of
the guest page, which the guest cannot observe) does nothing; a write to an IRQ line beyond
the 16 ISA IRQs (offsets 16..23) is ignored, where QEMU 7.2 aborts on an assertion.
"""
from __future__ import annotations

from emu.devices.base import Device
from emu.memory import AccessRules, CallbackOps, MemoryRegion

IOPORT_ADDR = 0xE0
FLUSH_ADDR = 0xE4
IOPORT_BYTE_ADDR = 0xE8
IRQ_ADDR = 0x2000
IRQ_REGION_SIZE = 24
IOMEM_ADDR = 0xFF000000
IOMEM_LEN = 0x10000
ISA_NUM_IRQS = 16


class PCTestdev(Device):
    """The device; the board maps ``ioport``, ``flush``, ``ioport_byte`` and ``irq_io`` in I/O
    space and ``iomem`` in memory at the ``*_ADDR`` constants, and connects ``irq[n]`` to
    ISA IRQ ``n`` (GSI n on the pc board)."""

    type_name = "pc-testdev"
    type_parent = "isa-device"

    def __init__(self) -> None:
        super().__init__()
        self.irq = self.init_gpio_out(ISA_NUM_IRQS)
        self.ioport_data = 0
        self.iomem_buf = bytearray(IOMEM_LEN)
        latch = CallbackOps(self._ioport_read, self._ioport_write)  # QEMU's default 1..4 rules
        byte_latch = CallbackOps(self._ioport_read, self._ioport_write,
                                 AccessRules(valid_min=1, valid_max=4, impl_min=1, impl_max=1))
        flush = CallbackOps(lambda o, s: 0, lambda o, v, s: None, AccessRules(valid_min=4, valid_max=4))
        irq = CallbackOps(lambda o, s: 0, self._irq_write, AccessRules(valid_min=1, valid_max=1))
        self.ioport = MemoryRegion.io("pc-testdev-ioport", 4, latch, owner=self)
        self.flush = MemoryRegion.io("pc-testdev-flush-page", 4, flush, owner=self)
        self.ioport_byte = MemoryRegion.io("pc-testdev-ioport-byte", 4, byte_latch, owner=self)
        self.irq_io = MemoryRegion.io("pc-testdev-irq-line", IRQ_REGION_SIZE, irq, owner=self)
        self.iomem = MemoryRegion.io("pc-testdev-iomem", IOMEM_LEN,
                                     CallbackOps(self._iomem_read, self._iomem_write), owner=self)

    def io_regions(self) -> list[tuple[int, MemoryRegion]]:
        """(I/O address, region) pairs to map in the I/O address space."""
        return [(IOPORT_ADDR, self.ioport), (FLUSH_ADDR, self.flush), (IOPORT_BYTE_ADDR, self.ioport_byte),
                (IRQ_ADDR, self.irq_io)]

    @staticmethod
    def _lane_mask(offset: int, size: int) -> tuple[int, int]:
        shift = (offset & 3) * 8
        return shift, (((1 << (8 * size)) - 1) << shift) & 0xFFFFFFFF

    def _ioport_read(self, offset: int, size: int) -> int:
        shift, mask = self._lane_mask(offset, size)
        return (self.ioport_data & mask) >> shift

    def _ioport_write(self, offset: int, value: int, size: int) -> None:
        shift, mask = self._lane_mask(offset, size)
        self.ioport_data = (self.ioport_data & ~mask) | ((value << shift) & mask)

    def _irq_write(self, offset: int, value: int, size: int) -> None:
        if offset < ISA_NUM_IRQS:
            self.irq[offset].set(1 if value else 0)

    def _iomem_read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.iomem_buf[offset:offset + size], "little")

    def _iomem_write(self, offset: int, value: int, size: int) -> None:
        data = value.to_bytes(size, "little")[:IOMEM_LEN - offset]
        self.iomem_buf[offset:offset + len(data)] = data
