"""The source of a postcopy migration (QEMU's postcopy_start and the RAM it sends afterwards).

At the switch the guest stops, the destination is told which pages it holds that have changed
since (RAM_DISCARD), and the devices' state travels in one PACKAGED blob (LISTEN, the FULL
sections, PING 3, RUN) so that the destination can read all of it before it runs the guest. From
then on the pages still dirty go out in the background, within ``max-postcopy-bandwidth``,
while pages the destination asks for over the return path (:class:`PageRequests`) go first and
ignore the limit: the destination's guest is waiting for them.
"""
from __future__ import annotations

import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from emu.migration.precopy import encode_page_records, runs_of
from emu.migration.ram_flags import RAM_SAVE_FLAG_EOS
from emu.migration.stream import (
    PAGE_SIZE,
    QEMU_VM_COMMAND,
    QEMU_VM_EOF,
    QEMU_VM_SECTION_END,
    QEMU_VM_SECTION_FOOTER,
)

__all__ = [
    "MAX_DISCARDS_PER_COMMAND",
    "PageRequests",
    "PostcopySender",
    "PreemptChannel",
    "command",
    "discard_commands",
    "package",
    "postcopy_advise",
]

MIG_CMD_OPEN_RETURN_PATH = 1
MIG_CMD_PING = 2
MIG_CMD_POSTCOPY_ADVISE = 3
MIG_CMD_POSTCOPY_LISTEN = 4
MIG_CMD_POSTCOPY_RUN = 5
MIG_CMD_POSTCOPY_RAM_DISCARD = 6
MIG_CMD_PACKAGED = 7
MIG_CMD_POSTCOPY_RESUME = 9
MIG_CMD_RECV_BITMAP = 10

#: QEMU's limit of ranges in one RAM_DISCARD command
MAX_DISCARDS_PER_COMMAND = 12
RAM_SECTION_ID = 2


def command(cmd: int, payload: bytes = b"") -> bytes:
    """A ``QEMU_VM_COMMAND`` item: u8 0x08, be16 cmd, be16 len, payload."""
    return struct.pack(">BHH", QEMU_VM_COMMAND, cmd, len(payload)) + payload


def ping(value: int) -> bytes:
    return command(MIG_CMD_PING, struct.pack(">I", value))


def postcopy_advise() -> bytes:
    """POSTCOPY_ADVISE: the RAM page-size summary and the target page size (4 KiB both here)."""
    return command(MIG_CMD_POSTCOPY_ADVISE, struct.pack(">QQ", PAGE_SIZE, PAGE_SIZE))


def page_runs(dirty: np.ndarray) -> list[tuple[int, int]]:
    """(first page, count) of each run of set entries of a per-page bool array."""
    return runs_of(np.flatnonzero(dirty))


def discard_commands(name: str, dirty: np.ndarray) -> list[bytes]:
    """RAM_DISCARD commands for the dirty pages of block ``name``: version 0, the counted name
    and a 0 byte, then up to 12 (be64 start, be64 length) byte ranges per command."""
    head = bytes((0, len(name.encode()))) + name.encode() + b"\0"
    runs = page_runs(dirty)
    out = []
    for i in range(0, len(runs), MAX_DISCARDS_PER_COMMAND):
        body = b"".join(struct.pack(">QQ", first * PAGE_SIZE, n * PAGE_SIZE)
                        for first, n in runs[i:i + MAX_DISCARDS_PER_COMMAND])
        out.append(command(MIG_CMD_POSTCOPY_RAM_DISCARD, head + body))
    return out


def package(device_sections: bytes) -> bytes:
    """The PACKAGED command and its blob: LISTEN, the devices' FULL sections, PING 3, RUN."""
    blob = command(MIG_CMD_POSTCOPY_LISTEN) + device_sections + ping(3) + command(MIG_CMD_POSTCOPY_RUN)
    return command(MIG_CMD_PACKAGED, struct.pack(">I", len(blob))) + blob


def ram_end_and_eof() -> bytes:
    """What ends a postcopy stream: the RAM END section (nothing left but its EOS) and EOF; no
    vmdesc (QEMU sends none in postcopy)."""
    return (struct.pack(">BI", QEMU_VM_SECTION_END, RAM_SECTION_ID) + struct.pack(">Q", RAM_SAVE_FLAG_EOS)
            + struct.pack(">BI", QEMU_VM_SECTION_FOOTER, RAM_SECTION_ID) + bytes((QEMU_VM_EOF,)))


class PageRequests:
    """Pages the destination asked for (QEMU's src_page_requests): pushed by the return-path
    thread, taken by the sender before any background page."""

    def __init__(self) -> None:
        self._queue: deque[tuple[Any, int, int]] = deque()
        self._lock = threading.Lock()
        self.event = threading.Event()
        self.count = 0  # postcopy-requests
        self.last_block: Any = None  # REQ_PAGES without a name means this one

    def push(self, block: Any, start: int, length: int) -> None:
        with self._lock:
            self._queue.append((block, start // PAGE_SIZE, max(1, length // PAGE_SIZE)))
            self.count += 1
        self.event.set()

    def take(self) -> list[tuple[Any, int, int]]:
        """Every pending request, oldest first: (block, first page, pages)."""
        with self._lock:
            out = list(self._queue)
            self._queue.clear()
            self.event.clear()
        return out


class PreemptChannel:
    """The postcopy preempt channel's sending end: requested pages as bare RAM records (no
    section around them), each batch written at once; the block is named whenever it changes on
    this channel."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self._last_block: Any = None

    def send(self, batch: dict[Any, list[tuple[int, int]]]) -> int:
        out = bytearray()
        for block, runs in batch.items():
            for first, n in runs:
                out += encode_page_records(block, first, n, block.zero_pages(first, n), block is not self._last_block)
                self._last_block = block
        self.channel.write_all(out)
        return len(out)

    def close(self, abort: bool) -> None:
        if abort:
            self.channel.shutdown()
        self.channel.close()


class PostcopySender:
    """Sends every page still dirty after the switch, requested pages first, each page once.

    ``dirty``: one bool per page and block (cleared as pages go). ``send``: writes a RAM section
    of the given kind with the pages ``{block: [(first, n), ...]}`` and returns bytes written.
    ``limit``: the current max-postcopy-bandwidth (0: none). ``stopped``: checked between
    batches (cancel, pause). ``urgent``: where requested pages go instead of ``send`` (the
    preempt channel), set and reset by the owner."""

    BATCH = 256  # background pages between two looks at the requests
    WINDOW = 1 << 15  # pages searched at once for the next batch

    def __init__(self, blocks: Sequence[Any], dirty: dict[Any, np.ndarray], requests: PageRequests,
                 send: Callable[[dict[Any, list[tuple[int, int]]]], int], limit: Callable[[], int],
                 stopped: Callable[[], bool]) -> None:
        self.blocks = list(blocks)
        self.dirty = dirty
        self.requests = requests
        self.send = send
        self.limit = limit
        self.stopped = stopped
        self.bytes = 0
        self._cursor = {b: 0 for b in self.blocks}
        self._window_start = time.monotonic()
        self._window_bytes = 0
        self.urgent: Callable[[dict[Any, list[tuple[int, int]]]], int] | None = None

    @property
    def remaining(self) -> int:
        return int(sum(int(d.sum()) for d in self.dirty.values()))

    def run(self) -> bool:
        """Until nothing is dirty (True) or ``stopped()`` (False)."""
        while not self.stopped():
            if self._serve_requests():
                continue
            batch = self._next_background()
            if not batch:
                return True
            self._account(self.send(batch))
            self._pace()
        return False

    def _serve_requests(self) -> bool:
        """Sends the requested pages that are still dirty; True if any went out."""
        batch: dict[Any, list[tuple[int, int]]] = {}
        for block, first, n in self.requests.take():
            d = self.dirty.get(block)
            if d is None:
                continue
            for page in range(first, min(first + n, len(d))):
                if d[page]:
                    d[page] = False
                    batch.setdefault(block, []).append((page, 1))
        if not batch:
            return False
        send = self.urgent or self.send
        self.bytes += send(batch)  # urgent: not counted against the bandwidth limit
        return True

    def _next_background(self) -> dict[Any, list[tuple[int, int]]]:
        """The next up to BATCH dirty pages in block order from each block's cursor, cleared
        (searched a window at a time, so a batch does not scan the whole block)."""
        for block in self.blocks:
            d = self.dirty[block]
            pages = self._scan(d, self._cursor[block])
            if pages is None:
                pages = self._scan(d[: self._cursor[block]], 0)
                if pages is None:
                    continue
            d[pages] = False
            self._cursor[block] = int(pages[-1]) + 1
            return {block: runs_of(pages)}
        return {}

    def _scan(self, d: np.ndarray, start: int) -> np.ndarray | None:
        """Up to BATCH set entries of ``d`` from ``start`` (their indexes), or None."""
        for lo in range(start, len(d), self.WINDOW):
            found = np.flatnonzero(d[lo:lo + self.WINDOW])
            if len(found):
                return found[: self.BATCH] + lo
        return None

    def _account(self, n: int) -> None:
        self.bytes += n
        self._window_bytes += n

    def _pace(self) -> None:
        """max-postcopy-bandwidth per 100 ms window; a request ends the wait at once."""
        limit = self.limit()
        if not limit:
            return
        while self._window_bytes >= limit * 0.1 and not self.stopped():
            now = time.monotonic()
            if now - self._window_start >= 0.1:
                self._window_start, self._window_bytes = now, self._window_bytes - int(limit * 0.1)
                continue
            if self.requests.event.wait(self._window_start + 0.1 - now):
                self._serve_requests()
