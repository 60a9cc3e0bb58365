"""The ATAPI packet commands of QEMU 7.2's ``ide-cd`` with an empty tray (hw/ide/atapi.c), as a
guest reaches them through PACKET (0xa0) on the legacy ports of :mod:`emu.devices.ide_ports`.

The 12 command bytes arrive in the slot's I/O buffer; the command runs in place there (replies
overwrite the packet, and what a reply leaves untouched keeps older bytes, as in QEMU, which
matters for replies and for the migrated buffer). Replies go out by PIO in chunks of the byte
count limit (cylinder registers), each raising the interrupt with the "data in" reason in the
sector count register; the end of a command sets the "status" reason (IO|CoD).

For a drive without medium: TEST UNIT READY, READ CAPACITY, READ(10)/(12), SEEK, READ TOC,
READ DISC INFORMATION, READ DVD STRUCTURE and READ CD report NOT READY / MEDIUM NOT PRESENT;
a pending UNIT ATTENTION (only a loaded stream can carry one: no medium ever changes here)
fails every command but REQUEST SENSE, INQUIRY, GET CONFIGURATION and GET EVENT STATUS
NOTIFICATION, which REQUEST SENSE clears; data commands with a zero byte count limit abort at
the ATA level without an interrupt; unknown opcodes are ILLEGAL REQUEST / INVALID OPCODE.
Modelled replies: REQUEST SENSE, INQUIRY (standard data, VPD pages 0x00 and 0x83), GET
CONFIGURATION, GET EVENT STATUS NOTIFICATION (polled; media class), MODE SENSE(10) (pages 0x01,
0x0e, 0x2a), MECHANISM STATUS; START STOP UNIT (opens/closes the tray), PREVENT ALLOW MEDIUM
REMOVAL (locks it), SET CD SPEED.

Not modelled: DMA. A command with the DMA bit (feature bit 0) that has a reply leaves the drive
as QEMU does until the guest starts the bus master (status DRQ|DSC|DRDY, nothing on the data
port); since the bus master here never transfers, it stays there until a reset. Media (and so
medium change events, ``cdrom_changed`` and reading sectors) are not modelled either.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

# emu.devices.ide_ports's IdeBus and IdeSlot, which call into this module: named without an
# import, which would be a cycle (tests/test_import_graph.py)
IdeBus = Any
IdeSlot = Any
#: transfer_end_table index of ide_atapi_cmd_reply_end (the whole table is in ide_ports)
END_ATAPI_REPLY = 3

READY_STAT, SEEK_STAT, DRQ_STAT, ERR_STAT = 0x40, 0x10, 0x08, 0x01
ATAPI_INT_REASON_CD, ATAPI_INT_REASON_IO = 0x01, 0x02
MC_ERR = 0x20
NO_SENSE, NOT_READY, ILLEGAL_REQUEST, UNIT_ATTENTION = 0x00, 0x02, 0x05, 0x06
ASC_ILLEGAL_OPCODE, ASC_INV_FIELD_IN_CMD_PACKET = 0x20, 0x24
ASC_MEDIUM_NOT_PRESENT, ASC_SAVING_PARAMETERS_NOT_SUPPORTED = 0x3A, 0x39
ASC_DATA_PHASE_ERROR, ASC_MEDIA_REMOVAL_PREVENTED = 0x4B, 0x53
MMC_PROFILE_CD_ROM, MMC_PROFILE_DVD_ROM = 0x0008, 0x0010
GESN_MEDIA = 4
MS_TRAY_OPEN = 1
MEC_NO_CHANGE, MEC_EJECT_REQUESTED, MEC_NEW_MEDIA = 0, 1, 2
QEMU_HW_VERSION = "2.5+"

# command flags (atapi_cmd_table)
ALLOW_UA, CHECK_READY, NONDATA, CONDDATA = 0x01, 0x02, 0x04, 0x08


def _padstr8(text: str, length: int) -> bytes:
    return text.encode()[:length].ljust(length, b" ")


def _be16(buf: bytearray, at: int) -> int:
    return buf[at] << 8 | buf[at + 1]


def _put_be16(buf: bytearray, at: int, value: int) -> None:
    buf[at:at + 2] = (value & 0xFFFF).to_bytes(2, "big")


# ---------------------------------------------------------------- completion and replies

def cmd_ok(bus: IdeBus, slot: IdeSlot) -> None:
    """ide_atapi_cmd_ok: status phase (IO|CoD), DRDY|DSC, interrupt."""
    slot.error = 0
    slot.status = READY_STAT | SEEK_STAT
    slot.nsector = (slot.nsector & ~7) | ATAPI_INT_REASON_IO | ATAPI_INT_REASON_CD
    slot.transfer_stop()
    bus._set_irq()


def cmd_error(bus: IdeBus, slot: IdeSlot, sense_key: int, asc: int) -> None:
    """ide_atapi_cmd_error: CHECK CONDITION with the sense key in the error register."""
    slot.error = sense_key << 4
    slot.status = READY_STAT | ERR_STAT
    slot.nsector = (slot.nsector & ~7) | ATAPI_INT_REASON_IO | ATAPI_INT_REASON_CD
    slot.sense_key, slot.asc = sense_key, asc
    slot.transfer_stop()
    bus._set_irq()


def _byte_count_limit(slot: IdeSlot) -> int:
    bcl = slot.lcyl | slot.hcyl << 8
    return 0xFFFE if bcl == 0xFFFF else bcl


def reply_end(bus: IdeBus, slot: IdeSlot) -> None:
    """ide_atapi_cmd_reply_end for a reply in the buffer (no sector reads): the next chunk of at
    most the byte count limit (even), or the end of the command."""
    if slot.packet_transfer_size > 0:
        if slot.elementary_transfer_size > 0:  # only a loaded stream leaves one half sent
            size = min(slot.elementary_transfer_size, slot.cd_sector_size - slot.io_buffer_index)
        else:
            slot.nsector = (slot.nsector & ~7) | ATAPI_INT_REASON_IO
            bus._set_irq()
            limit = _byte_count_limit(slot)
            size = slot.packet_transfer_size
            if size > limit:
                size = limit & ~1
            slot.lcyl, slot.hcyl = size & 0xFF, (size >> 8) & 0xFF
            slot.elementary_transfer_size = size
        slot.packet_transfer_size -= size
        slot.elementary_transfer_size -= size
        slot.io_buffer_index += size
        start = slot.io_buffer_index - size
        if size <= 0 or not 0 <= start <= slot.io_buffer_index <= len(slot.io_buffer):
            cmd_error(bus, slot, ILLEGAL_REQUEST, ASC_INV_FIELD_IN_CMD_PACKET)  # only from a bad stream
            return
        bus.transfer_start(slot, start, size, END_ATAPI_REPLY)
        return
    cmd_ok(bus, slot)


def reply(bus: IdeBus, slot: IdeSlot, size: int, max_size: int) -> None:
    """ide_atapi_cmd_reply: ``size`` bytes of the buffer, at most ``max_size``."""
    size = min(size, max_size)
    slot.packet_transfer_size = size
    slot.io_buffer_size = size
    slot.elementary_transfer_size = 0
    if slot.atapi_dma:  # waits for the bus master, which never transfers here
        slot.status = READY_STAT | SEEK_STAT | DRQ_STAT
        bus.dma_pending = True
        return
    slot.status = READY_STAT | SEEK_STAT
    slot.io_buffer_index = 0
    reply_end(bus, slot)


# ---------------------------------------------------------------- commands

def _request_sense(bus: IdeBus, slot: IdeSlot, buf: bytearray) -> None:
    max_len = buf[4]
    buf[0:18] = bytes(18)
    buf[0] = 0xF0
    buf[2] = slot.sense_key
    buf[7] = 10
    buf[12] = slot.asc
    if slot.sense_key == UNIT_ATTENTION:
        slot.sense_key = NO_SENSE
    reply(bus, slot, 18, max_len)


def _inquiry(bus: IdeBus, slot: IdeSlot, buf: bytearray) -> None:
    page_code, max_len = buf[2], buf[4]
    if buf[1] & 0x01:  # vital product data
        preamble, size_idx = 4, 3
        buf[0], buf[1], buf[2] = 0x05, page_code, 0
        idx = 4
        if page_code == 0x00:  # supported pages
            buf[4], buf[5] = 0x00, 0x83
            idx = 6
        elif page_code == 0x83:  # device identification
            if idx + 24 > max_len:
                cmd_error(bus, slot, ILLEGAL_REQUEST, ASC_DATA_PHASE_ERROR)
                return
            buf[idx:idx + 24] = bytes([0x02, 0x00, 0x00, 20]) + _padstr8(slot.drive_serial, 20)
            idx += 24
            if idx + 72 <= max_len:
                buf[idx:idx + 72] = (bytes([0x02, 0x01, 0x00, 68]) + _padstr8("ATA", 8)
                                     + _padstr8("QEMU DVD-ROM", 40) + _padstr8(slot.drive_serial, 20))
                idx += 72
        else:
            cmd_error(bus, slot, ILLEGAL_REQUEST, ASC_INV_FIELD_IN_CMD_PACKET)
            return
    else:
        preamble, size_idx = 5, 4
        buf[0:4] = bytes([0x05, 0x80, 0x00, 0x21])  # CD-ROM, removable, ATAPI-2
        buf[5:8] = bytes(3)
        buf[8:36] = _padstr8("QEMU", 8) + _padstr8("QEMU DVD-ROM", 16) + _padstr8(QEMU_HW_VERSION, 4)
        idx = 36
    buf[size_idx] = (idx - preamble) & 0xFF
    reply(bus, slot, idx, max_len)


def _set_profile(buf: bytearray, index: int, profile: int) -> None:
    at = 12 + index * 4
    _put_be16(buf, at, profile)
    buf[at + 2] = int(buf[at] == buf[6] and buf[at + 1] == buf[7])
    buf[11] = (buf[11] + 4) & 0xFF


def _get_configuration(bus: IdeBus, slot: IdeSlot, buf: bytearray) -> None:
    if buf[2] or buf[3]:  # only feature 0
        cmd_error(bus, slot, ILLEGAL_REQUEST, ASC_INV_FIELD_IN_CMD_PACKET)
        return
    max_len = min(_be16(buf, 7), 512)
    buf[0:max_len] = bytes(max_len)
    # no medium: no current profile (bytes 6-7 stay as they are)
    buf[10] = 0x03  # persistent and current
    _set_profile(buf, 0, MMC_PROFILE_DVD_ROM)
    _set_profile(buf, 1, MMC_PROFILE_CD_ROM)
    length = 12 + 8
    buf[0:4] = (length - 4).to_bytes(4, "big")
    reply(bus, slot, length, max_len)


def _get_event_status_notification(bus: IdeBus, slot: IdeSlot, buf: bytearray) -> None:
    max_len = _be16(buf, 7)
    if not buf[1] & 0x01:  # asynchronous mode is not supported
        cmd_error(bus, slot, ILLEGAL_REQUEST, ASC_INV_FIELD_IN_CMD_PACKET)
        return
    buf[3] = 1 << GESN_MEDIA  # supported events
    buf[2] = 0
    if buf[4] & (1 << GESN_MEDIA):
        buf[2] |= GESN_MEDIA
        media_status = MS_TRAY_OPEN if slot.tray_open else 0  # never "media present"
        event = MEC_NO_CHANGE
        if media_status != MS_TRAY_OPEN:
            if slot.new_media:
                event, slot.new_media = MEC_NEW_MEDIA, False
            elif slot.eject_request:
                event, slot.eject_request = MEC_EJECT_REQUESTED, False
        buf[4:8] = bytes([event, media_status, 0, 0])
        used = 8
    else:
        buf[2] = 0x80  # no event available
        used = 4
    _put_be16(buf, 0, used - 4)
    reply(bus, slot, used, max_len)


def _mode_sense(bus: IdeBus, slot: IdeSlot, buf: bytearray) -> None:
    max_len = _be16(buf, 7)
    action, code = buf[2] >> 6, buf[2] & 0x3F
    if action == 3:
        cmd_error(bus, slot, ILLEGAL_REQUEST, ASC_SAVING_PARAMETERS_NOT_SUPPORTED)
        return
    if action != 0 or code not in (0x01, 0x0E, 0x2A):
        cmd_error(bus, slot, ILLEGAL_REQUEST, ASC_INV_FIELD_IN_CMD_PACKET)
        return
    size = {0x01: 16, 0x0E: 24, 0x2A: 30}[code]
    _put_be16(buf, 0, size - 2)
    buf[2:8] = bytes([0x70, 0, 0, 0, 0, 0])
    buf[8], buf[9] = code, size - 10
    if code == 0x01:  # error recovery
        buf[10:16] = bytes([0x00, 0x05, 0, 0, 0, 0])
    elif code == 0x0E:  # audio control: the volumes; the other bytes keep what was there
        buf[17] = buf[19] = buf[21] = buf[23] = 0
    else:  # capabilities
        buf[10:16] = bytes([0x3B, 0x00, 0x71, 3 << 5, 0x29 | (0x02 if slot.tray_locked else 0), 0x00])
        _put_be16(buf, 16, 704)
        buf[18], buf[19] = 0, 2
        _put_be16(buf, 20, 512)
        _put_be16(buf, 22, 704)
        buf[24:30] = bytes(6)
    reply(bus, slot, size, max_len)


def _test_unit_ready(bus: IdeBus, slot: IdeSlot, buf: bytearray) -> None:
    cmd_ok(bus, slot)  # (with no medium, CHECK_READY fails it first)


def _prevent_allow_medium_removal(bus: IdeBus, slot: IdeSlot, buf: bytearray) -> None:
    slot.tray_locked = bool(buf[4] & 1)
    cmd_ok(bus, slot)


def _start_stop_unit(bus: IdeBus, slot: IdeSlot, buf: bytearray) -> None:
    start, loej, pwrcnd = bool(buf[4] & 1), bool(buf[4] & 2), buf[4] & 0xF0
    if not pwrcnd and loej:
        if not start and not slot.tray_open and slot.tray_locked:
            cmd_error(bus, slot, ILLEGAL_REQUEST, ASC_MEDIA_REMOVAL_PREVENTED)  # (NOT READY with a medium)
            return
        slot.tray_open = not start
    cmd_ok(bus, slot)


def _mechanism_status(bus: IdeBus, slot: IdeSlot, buf: bytearray) -> None:
    max_len = _be16(buf, 8)
    buf[0:8] = bytes([0, 0, 0, 0, 0, 1, 0, 0])
    reply(bus, slot, 8, max_len)


def _set_speed(bus: IdeBus, slot: IdeSlot, buf: bytearray) -> None:
    cmd_ok(bus, slot)


def _needs_medium(bus: IdeBus, slot: IdeSlot, buf: bytearray) -> None:
    """The CHECK_READY commands: never reached without a medium (their flag fails them first)."""
    cmd_error(bus, slot, NOT_READY, ASC_MEDIUM_NOT_PRESENT)


_Handler = Callable[["IdeBus", "IdeSlot", bytearray], None]
#: atapi_cmd_table: opcode -> (handler, flags)
COMMANDS: dict[int, tuple[_Handler, int]] = {
    0x00: (_test_unit_ready, CHECK_READY | NONDATA),
    0x03: (_request_sense, ALLOW_UA),
    0x12: (_inquiry, ALLOW_UA),
    0x1B: (_start_stop_unit, NONDATA),
    0x1E: (_prevent_allow_medium_removal, NONDATA),
    0x25: (_needs_medium, CHECK_READY),  # READ CAPACITY
    0x28: (_needs_medium, CHECK_READY),  # READ(10)
    0x2B: (_needs_medium, CHECK_READY | NONDATA),  # SEEK
    0x43: (_needs_medium, CHECK_READY),  # READ TOC/PMA/ATIP
    0x46: (_get_configuration, ALLOW_UA),
    0x4A: (_get_event_status_notification, ALLOW_UA),
    0x51: (_needs_medium, CHECK_READY),  # READ DISC INFORMATION
    0x5A: (_mode_sense, 0),
    0xA8: (_needs_medium, CHECK_READY),  # READ(12)
    0xAD: (_needs_medium, CHECK_READY),  # READ DVD STRUCTURE
    0xBB: (_set_speed, NONDATA),
    0xBD: (_mechanism_status, 0),
    0xBE: (_needs_medium, CHECK_READY | CONDDATA),  # READ CD
}


def atapi_cmd(bus: IdeBus, slot: IdeSlot) -> None:
    """ide_atapi_cmd: the packet in the buffer, for a drive with an empty tray."""
    buf = slot.io_buffer
    handler: _Handler | None
    handler, flags = COMMANDS.get(buf[0], (None, 0))
    if slot.sense_key == UNIT_ATTENTION and not flags & ALLOW_UA:
        # ide_atapi_cmd_check_status: no transfer stop, the count register cleared
        slot.error = MC_ERR | UNIT_ATTENTION << 4
        slot.status = ERR_STAT
        slot.nsector = 0
        bus._set_irq()
        return
    if flags & CHECK_READY:  # no medium is ever present
        cmd_error(bus, slot, NOT_READY, ASC_MEDIUM_NOT_PRESENT)
        return
    if handler is not None and not flags & (NONDATA | CONDDATA):
        if not slot.atapi_dma and not _byte_count_limit(slot):
            slot.abort()  # validate_bcl: an ATA-level abort, without an interrupt
            return
    if handler is None:
        cmd_error(bus, slot, ILLEGAL_REQUEST, ASC_ILLEGAL_OPCODE)
        return
    handler(bus, slot, buf)
