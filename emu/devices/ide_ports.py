"""The legacy ports of an IDE channel with no drive on it, as QEMU 7.2's PIIX IDE answers them.

QEMU registers a channel's command block (8 ports at 0x1f0 / 0x170) and its device control /
alternate status port (0x3f6 / 0x376) as port lists: byte handlers for the eight registers, word
and dword handlers for the data port only. An access of a size the list has no handler for is
answered as QEMU's portio dispatch does: a word from two byte handlers (0xff above the block's
end), anything else all ones. With no drive on the bus every register reads 0 and writes change
nothing a guest can read back.

A channel with a drive needs the ATA command set, which is not modelled: the board leaves such
a channel's ports unmapped rather than answering for a drive that is not emulated.
"""
from __future__ import annotations

from emu.memory import AccessRules, CallbackOps, MemoryRegion

# (io base, control port) of the primary and secondary channels
CHANNELS = ((0x1F0, 0x3F6), (0x170, 0x376))
_PORTIO_RULES = AccessRules(valid_min=1, valid_max=4, valid_unaligned=True, impl_min=1, impl_max=4,
                            impl_unaligned=True)


def _empty_block_read(offset: int, size: int) -> int:
    if size == 1 or offset == 0:  # a register byte, or the data port at any width: no data
        return 0
    if size == 2:
        return 0xFF00 if offset + 1 >= 8 else 0  # two byte handlers, the second past the end
    return (1 << (8 * size)) - 1


def _empty_control_read(offset: int, size: int) -> int:
    if size == 1:
        return 0  # alternate status of an empty bus
    if size == 2:
        return 0xFF00
    return (1 << (8 * size)) - 1


class EmptyIdeChannel:
    """The ``ide`` (8 ports) and control (1 port) regions of a channel without drives."""

    def __init__(self) -> None:
        ignore = lambda offset, value, size: None  # noqa: E731 - nothing to store on an empty bus
        self.block_io = MemoryRegion.io("ide", 8, CallbackOps(_empty_block_read, ignore, _PORTIO_RULES))
        self.control_io = MemoryRegion.io("ide", 1, CallbackOps(_empty_control_read, ignore, _PORTIO_RULES))
