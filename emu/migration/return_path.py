"""The return path: messages from the destination back to the source on the main channel's
reverse direction (QEMU's ``MIG_RP_MSG_*``, migration-stream.md §4).

Framing: ``be16 type, be16 len, data[len]``. The destination writes (:class:`ReturnPathWriter`:
PONG, SHUT, page requests, the received bitmap, RESUME_ACK) from several threads at once, so each
message goes out whole under a lock; the source reads them on a thread of its own
(:func:`read_message`, then the manager dispatches).
"""
from __future__ import annotations

import struct
import threading
from typing import Any

import numpy as np

from emu.migration.errors import QemuTextError

__all__ = [
    "RECV_BITMAP_ENDING",
    "RP_LENGTHS",
    "RP_PONG",
    "RP_RECV_BITMAP",
    "RP_REQ_PAGES",
    "RP_REQ_PAGES_ID",
    "RP_RESUME_ACK",
    "RP_SHUT",
    "ReturnPathError",
    "ReturnPathWriter",
    "decode_page_request",
    "encode_recv_bitmap",
    "read_bitmap",
    "read_message",
]

RP_SHUT = 1
RP_PONG = 2
RP_REQ_PAGES_ID = 3
RP_REQ_PAGES = 4
RP_RECV_BITMAP = 5
RP_RESUME_ACK = 6

#: type -> (QEMU's name, fixed payload length or -1 for variable), as QEMU 7.2's rp_cmd_args
RP_LENGTHS: dict[int, tuple[str, int]] = {
    RP_SHUT: ("SHUT", 4), RP_PONG: ("PONG", 4), RP_REQ_PAGES_ID: ("REQ_PAGES_ID", -1),
    RP_REQ_PAGES: ("REQ_PAGES", 12), RP_RECV_BITMAP: ("RECV_BITMAP", -1), RP_RESUME_ACK: ("RESUME_ACK", 4),
}

#: the word that ends a RECV_BITMAP payload (QEMU's RAMBLOCK_RECV_BITMAP_ENDING)
RECV_BITMAP_ENDING = 0x0123456789ABCDEF


class ReturnPathError(QemuTextError):
    """A return-path message that cannot be read or makes no sense (QEMU's text)."""


class ReturnPathWriter:
    """The destination's end: whole messages, one writer at a time (``channel.write_all``).

    A write that fails does not raise: as in QEMU, the error stays with the return path
    (``error``) and the load goes on until its own stream breaks too (the source notices a dead
    return path and pauses or fails)."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self._lock = threading.Lock()
        self._last_block: str | None = None  # REQ_PAGES_ID names a block only when it changes
        self.error: str | None = None

    def _write(self, data: bytes) -> bool:
        """Writes one message (the lock held); False, with ``error`` set, if the channel failed."""
        try:
            self.channel.write_all(data)
            return True
        except Exception as e:  # noqa: BLE001 - kept, as QEMU keeps a QEMUFile's error
            self.error = str(e)
            return False

    def send(self, msg_type: int, payload: bytes = b"") -> None:
        with self._lock:
            self._write(struct.pack(">HH", msg_type, len(payload)) + payload)

    def pong(self, value: int) -> None:
        self.send(RP_PONG, struct.pack(">I", value))

    def shut(self, failed: bool) -> None:
        """SHUT: the destination is done with the return path (1 if its load failed)."""
        self.send(RP_SHUT, struct.pack(">I", 1 if failed else 0))

    def resume_ack(self, value: int = 1) -> None:
        self.send(RP_RESUME_ACK, struct.pack(">I", value))

    def request_pages(self, block: str, start: int, length: int) -> bool:
        """REQ_PAGES_ID (the block named) when the block differs from the last request's, else
        REQ_PAGES: ``length`` bytes at byte offset ``start`` of ``block``. False if it failed."""
        with self._lock:
            if block != self._last_block:
                name = block.encode()
                msg = struct.pack(">HHQIB", RP_REQ_PAGES_ID, 13 + len(name), start, length, len(name)) + name
            else:
                msg = struct.pack(">HHQI", RP_REQ_PAGES, 12, start, length)
            ok = self._write(msg)
            self._last_block = block if ok else None
            return ok

    def recv_bitmap(self, name: str, received: bytearray | bytes) -> None:
        """RECV_BITMAP (its length covers only the counted name), then the bitmap itself."""
        raw = name.encode()
        with self._lock:
            self._write(struct.pack(">HHB", RP_RECV_BITMAP, len(raw) + 1, len(raw)) + raw
                        + encode_recv_bitmap(received))

    def new_channel(self, channel: Any) -> None:
        """After a recovery: messages go to the new channel, and the next request names its block."""
        with self._lock:
            self.channel = channel
            self._last_block = None
            self.error = None


def read_message(channel: Any) -> tuple[int, bytes]:
    """The next message from ``channel`` (``read_exactly``): (type, payload); raises
    :class:`ReturnPathError` with QEMU's text for an unknown type or a wrong length, and the
    channel's own error when it ends."""
    head = channel.read_exactly(4)
    msg_type, length = struct.unpack(">HH", head)
    known = RP_LENGTHS.get(msg_type)
    if known is None:
        raise ReturnPathError(f"Received invalid message 0x{msg_type:04x} length 0x{length:04x}")
    name, want = known
    if want != -1 and want != length:
        raise ReturnPathError(f"Received '{name}' message (0x{msg_type:04x}) with incorrect length {length} "
                              f"expecting {want}")
    return msg_type, channel.read_exactly(length) if length else b""


def decode_page_request(msg_type: int, payload: bytes) -> tuple[str | None, int, int]:
    """(block name or ``None`` for "the last one", byte offset, byte length) of a page request."""
    start, length = struct.unpack_from(">QI", payload)
    if msg_type == RP_REQ_PAGES:
        return None, start, length
    n = payload[12] if len(payload) > 12 else -1
    if n < 0 or len(payload) != 13 + n:
        raise ReturnPathError(f"Received 'REQ_PAGES_ID' message with a bad length {len(payload)}")
    return payload[13:13 + n].decode("utf-8", "replace"), start, length


def encode_recv_bitmap(received: bytearray | bytes) -> bytes:
    """The bitmap that follows a RECV_BITMAP message, from a receivedmap of one byte per page: be64
    size in bytes (little-endian 64-bit words, rounded up to 8 bytes), the bitmap, the end mark."""
    bits = np.packbits(np.frombuffer(bytes(received), dtype=np.uint8) != 0, bitorder="little")
    size = (len(bits) + 7) // 8 * 8
    body = bits.tobytes() + bytes(size - len(bits))
    return struct.pack(">Q", size) + body + struct.pack(">Q", RECV_BITMAP_ENDING)


def read_bitmap(channel: Any, pages: int, name: str) -> np.ndarray:
    """Reads the bitmap after a RECV_BITMAP message for block ``name`` of ``pages`` pages: one
    bool per page, True = received (QEMU's ram_dirty_bitmap_reload, with its texts)."""
    (size,) = struct.unpack(">Q", channel.read_exactly(8))
    want = (pages + 63) // 64 * 8
    if size != want:
        raise ReturnPathError(f"ram_dirty_bitmap_reload: ramblock '{name}' bitmap size mismatch "
                              f"(0x{size:x} != 0x{want:x})")
    raw = channel.read_exactly(size)
    (ending,) = struct.unpack(">Q", channel.read_exactly(8))
    if ending != RECV_BITMAP_ENDING:
        raise ReturnPathError(f"ram_dirty_bitmap_reload: ramblock '{name}' end mark incorrect: 0x{ending:x}")
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")
    return bits[:pages].astype(bool)
