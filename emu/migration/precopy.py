"""Iterative precopy: the stream written in rounds while the guest runs (QEMU's ram_save_*).

RAM START carries MEM_SIZE; each round syncs the dirty bitmaps (C, atomic per word), sends the
dirty pages in a PART section (zero pages as ZERO records, found in C) within the bandwidth
limit; when what is left fits the downtime limit, the VM stops and the last dirty pages go out in
the END section, followed by the device sections, globalstate, EOF and the vmdesc.

This is the one saver: ``migrate`` runs it (``emu.migration.manager``), and a stopped source's
one-shot stream (QEMU 7.2's, byte for byte, for ``-M none``) is the same three steps with nothing
dirtied between them (``start``, ``send_pages`` of every page, ``finish``). It writes through
``stream.StreamWriter``; the manager above it owns statuses, events and threads.
"""
from __future__ import annotations

import json
import struct
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from emu.migration import vmstate as vms
from emu.migration.ram_flags import (
    RAM_SAVE_FLAG_CONTINUE,
    RAM_SAVE_FLAG_EOS,
    RAM_SAVE_FLAG_MEM_SIZE,
    RAM_SAVE_FLAG_MULTIFD_FLUSH,
    RAM_SAVE_FLAG_ZERO,
)
from emu.migration.stream import (
    PAGE_SIZE,
    QEMU_VM_CONFIGURATION,
    QEMU_VM_EOF,
    QEMU_VM_FILE_MAGIC,
    QEMU_VM_FILE_VERSION,
    QEMU_VM_SECTION_END,
    QEMU_VM_SECTION_FOOTER,
    QEMU_VM_SECTION_FULL,
    QEMU_VM_SECTION_PART,
    QEMU_VM_SECTION_START,
    QEMU_VM_SUBSECTION,
    QEMU_VM_VMDESCRIPTION,
    RAM_IDSTR,
    RAM_VERSION,
    StreamWriter,
)

if TYPE_CHECKING:
    from emu.migration.multifd import MultifdSender
    from emu.migration.xbzrle import XbzrleCache

RAM_SECTION_ID = 2


def _counted(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else bytes(s)
    if len(b) > 255:
        raise ValueError(f"name too long for a counted string: {b!r}")
    return bytes((len(b),)) + b


def _section_header(kind: int, section_id: int, idstr: str = "", instance_id: int = 0, version_id: int = 0) -> bytes:
    if kind in (QEMU_VM_SECTION_START, QEMU_VM_SECTION_FULL):
        return struct.pack(">BI", kind, section_id) + _counted(idstr) + struct.pack(">II", instance_id, version_id)
    return struct.pack(">BI", kind, section_id)


def _footer(section_id: int) -> bytes:
    return struct.pack(">BI", QEMU_VM_SECTION_FOOTER, section_id)


def encode_page_records(block: Any, first_page: int, npages: int, zero_map: bytes, named_first: bool) -> bytearray:
    """RAM page records for pages ``first_page .. first_page+npages-1`` of ``block``, encoded in C.

    ``zero_map`` has one byte per page (1 = all zero, from ``RamBlock.zero_pages``): those become
    ZERO records (fill 0), the others PAGE records with the page's bytes. The first record carries
    the block name if ``named_first``; every other record uses CONTINUE.
    """
    name = block.name.encode() if named_first else None
    return block.encode_page_records(first_page, npages, zero_map, name)


def _zero_records(pages: np.ndarray, name: bytes | None) -> bytes:
    """ZERO records (fill 0) for ``pages``, built in numpy: CONTINUE after the first, which names
    the block if ``name`` is given."""
    offs = (pages.astype(np.uint64) << np.uint64(12)) | np.uint64(RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_CONTINUE)
    recs = np.zeros((len(pages), 9), dtype=np.uint8)
    recs[:, :8] = offs.astype(">u8").view(np.uint8).reshape(-1, 8)
    out = recs.tobytes()
    if name is None:
        return out
    first = struct.pack(">Q", (int(pages[0]) << 12) | RAM_SAVE_FLAG_ZERO) + _counted(name) + b"\0"
    return first + out[9:]


def runs_of(pages: np.ndarray) -> list[tuple[int, int]]:
    """(first page, count) of each run of consecutive numbers in sorted ``pages``."""
    if not len(pages):
        return []
    breaks = np.flatnonzero(np.diff(pages) != 1) + 1
    return [(int(run[0]), len(run)) for run in np.split(pages, breaks)]


def _bits_to_words(pages: np.ndarray, nwords: int) -> np.ndarray:
    """A bitmap of ``nwords`` 64-bit words with the bits of ``pages`` set."""
    bits = np.zeros(nwords * 64, dtype=np.uint8)
    bits[pages] = 1
    return np.packbits(bits, bitorder="little").view(np.uint64)


class RateLimiter:
    """QEMU's migration rate limit: at most ``bytes_per_sec`` per 100 ms window (0: unlimited).

    While it waits for the next window it watches the peer (``peer_gone(timeout)``, e.g.
    ``Channel.peer_gone``), so that a destination that died is noticed at once, not after the
    wait: the next write then fails with the channel's error."""

    WINDOW = 0.1
    MAX_CHUNK_PAGES = 4096

    def __init__(self, bytes_per_sec: int, cancelled: Callable[[], bool],
                 peer_gone: Callable[[float], bool] | None = None) -> None:
        self.limit = bytes_per_sec
        self.cancelled = cancelled
        self.peer_gone = peer_gone
        self.window_start = time.monotonic()
        self.window_bytes: float = 0  # less a float budget once a window closes
        self.last_total = 0

    @property
    def chunk_pages(self) -> int:
        """How many pages go out between two checks: about one window's budget, so that a low
        limit paces the stream smoothly instead of in bursts of many seconds."""
        if not self.limit:
            return self.MAX_CHUNK_PAGES
        return max(1, min(self.MAX_CHUNK_PAGES, int(self.limit * self.WINDOW) // 4096))

    def __call__(self, total: int) -> None:
        self.window_bytes += total - self.last_total
        self.last_total = total
        if not self.limit:
            return
        budget = self.limit * self.WINDOW
        while self.window_bytes >= budget and not self.cancelled():
            now = time.monotonic()
            if now - self.window_start >= self.WINDOW:
                self.window_start, self.window_bytes = now, self.window_bytes - budget
                continue
            delay = self.window_start + self.WINDOW - now  # the rate limit itself
            if self.peer_gone is None:
                time.sleep(delay)
            elif self.peer_gone(delay):
                return  # the next write reports the broken channel

    def reset_round(self) -> None:
        self.last_total = 0


class PrecopySaver:
    """Writes one precopy stream; ``send_pages`` is called once per round.

    With ``multifd``, page data goes to the multifd channels: zero pages stay on the main stream as
    ZERO records (``zero-page-detection`` ``legacy``), travel as zero entries of the packets
    (``multifd``, 9.1's default), or are sent as data (``none``). Sync points follow
    ``flush_after_each_section``: every RAM EOS (7.2), or a MULTIFD_FLUSH record after each round.
    """

    def __init__(self, writer: StreamWriter, blocks: Sequence[Any], machine_name: str,
                 uuid: bytes | None = None, multifd: MultifdSender | None = None,
                 zero_page_detection: str = "multifd", flush_after_each_section: bool = False,
                 xbzrle: XbzrleCache | None = None,
                 direct: Callable[[Any, int, int, bytes, bytes | None], int] | None = None) -> None:
        """``uuid``: sent in a ``configuration/uuid`` subsection (the source's -uuid, when the
        validate-uuid capability is on). ``xbzrle``: the page cache when the capability is on;
        pages go through it (in C) and, once ``xbzrle_started`` (after the first complete round),
        changed pages it holds are sent as XBZRLE deltas. ``direct``: writes a run of page records
        from guest memory to the channel and returns the byte count (``Channel.send_page_records``);
        without it records are encoded into the writer."""
        self.w = writer
        self.blocks = list(blocks)
        self.sent_zero = self.sent_normal = 0
        self.machine_name = machine_name
        self.uuid = uuid
        self.multifd = multifd
        self.zero_page_detection = zero_page_detection
        self.flush_after_each_section = flush_after_each_section
        self.xbzrle = xbzrle
        self.direct = direct
        self.xbzrle_started = False
        self.generation = 0  # the dirty-sync count: the cache's page ages
        if xbzrle is not None:
            from emu.migration.xbzrle import key_bases

            self._key_base = dict(zip(self.blocks, key_bases(self.blocks)))

    @property
    def bytes_sent(self) -> int:
        """Everything written so far: the main stream and the multifd channels."""
        return self.w.offset + (self.multifd.bytes_sent if self.multifd is not None else 0)

    def _sync_point(self) -> bytes:
        """Before a RAM EOS: the multifd sync, and the MULTIFD_FLUSH record in per-round mode (each
        section here ends a round: START, every PART, END)."""
        if self.multifd is None:
            return b""
        self.w.flush()
        self.multifd.sync()
        return b"" if self.flush_after_each_section else struct.pack(">Q", RAM_SAVE_FLAG_MULTIFD_FLUSH)

    def start(self, preamble: bytes = b"") -> None:
        """The header, the configuration, ``preamble`` (the return path and postcopy commands),
        and the RAM START section."""
        w = self.w
        w.write(struct.pack(">II", QEMU_VM_FILE_MAGIC, QEMU_VM_FILE_VERSION))
        name = self.machine_name.encode()
        w.write(struct.pack(">BI", QEMU_VM_CONFIGURATION, len(name)) + name)
        if self.uuid is not None:
            sub = b"configuration/uuid"
            w.write(struct.pack(">BB", QEMU_VM_SUBSECTION, len(sub)) + sub + struct.pack(">I", 1) + self.uuid)
        w.write(preamble)
        total = sum(b.used_length for b in self.blocks)
        body = bytearray(struct.pack(">Q", total | RAM_SAVE_FLAG_MEM_SIZE))
        for b in self.blocks:
            body += _counted(b.name) + struct.pack(">Q", b.used_length)
        w.write(_section_header(QEMU_VM_SECTION_START, RAM_SECTION_ID, RAM_IDSTR, 0, RAM_VERSION) + body)
        w.write(self._sync_point() + struct.pack(">Q", RAM_SAVE_FLAG_EOS) + _footer(RAM_SECTION_ID))
        w.flush()  # the destination's channels wait at this sync point until it reads the FLUSH
        for b in self.blocks:
            b.fetch_and_clear_dirty()  # start tracking: the first round sends every page anyway

    def sync(self) -> dict[Any, np.ndarray]:
        """Moves every block's dirty bitmap out (one word at a time, atomically, in C)."""
        return {b: b.fetch_and_clear_dirty() for b in self.blocks}

    @staticmethod
    def all_pages(blocks: Sequence[Any]) -> dict[Any, np.ndarray]:
        return {b: np.full((b.pages + 63) // 64, np.uint64(0xFFFFFFFFFFFFFFFF), dtype=np.uint64) for b in blocks}

    def send_pages(self, dirty: dict[Any, np.ndarray], kind: int, throttle: Callable[[int], bool | None],
                   chunk_pages: int = RateLimiter.MAX_CHUNK_PAGES) -> int:
        """One PART (or the END) section with every page set in ``dirty``, ``throttle`` called
        with the bytes written so far after every ``chunk_pages`` pages; returns bytes written.
        A true answer from ``throttle`` ends the section early (postcopy is to start): the pages
        sent are cleared from ``dirty``, which then holds what is still to send."""
        w = self.w
        before = self.bytes_sent
        w.write(_section_header(kind, RAM_SECTION_ID))
        stop = False
        for block, words in dirty.items():
            if stop:
                break
            bits = np.unpackbits(words.view(np.uint8), bitorder="little")[: block.pages]
            pages = np.flatnonzero(bits)
            if not len(pages):
                continue
            stop, sent = self._send_runs(block, pages, kind, chunk_pages, lambda: throttle(self.bytes_sent - before))
            words[:] = 0 if not stop else words & ~_bits_to_words(pages[:sent], len(words))
        w.write(self._sync_point() + struct.pack(">Q", RAM_SAVE_FLAG_EOS) + _footer(RAM_SECTION_ID))
        w.flush()
        return self.bytes_sent - before

    def send_page_runs(self, batch: dict[Any, list[tuple[int, int]]], kind: int = QEMU_VM_SECTION_PART) -> int:
        """One section with the given runs of pages, ``{block: [(first page, count), ...]}``
        (postcopy's batches: requested pages and background ones); returns bytes written."""
        before = self.bytes_sent
        self.w.write(_section_header(kind, RAM_SECTION_ID))
        for block, runs in batch.items():
            named = True
            for first, n in runs:
                named = self._send_chunk(block, first, n, named, kind)
        self.w.write(struct.pack(">Q", RAM_SAVE_FLAG_EOS) + _footer(RAM_SECTION_ID))
        self.w.flush()
        return self.bytes_sent - before

    def _send_runs(self, block: Any, pages: np.ndarray, kind: int, chunk_pages: int,
                   progress: Callable[[], bool | None]) -> tuple[bool, int]:
        """Sends ``pages`` of ``block`` (sorted) run by run: (whether ``progress`` asked to stop,
        how many of ``pages`` went out)."""
        # runs of consecutive dirty pages: one batch each (zero detection and encoding in C/numpy)
        named = True
        done = 0
        for first, n in runs_of(pages):
            for chunk in range(first, first + n, chunk_pages):
                m = min(chunk_pages, first + n - chunk)
                named = self._send_chunk(block, chunk, m, named, kind)
                done += m
                if progress():
                    return True, done
        return False, done

    def _send_chunk(self, block: Any, chunk: int, m: int, named: bool, kind: int) -> bool:
        """Pages ``chunk .. chunk+m-1`` by whichever path is on; returns whether the name is still due."""
        if self.multifd is not None:
            return self._send_multifd(block, chunk, m, named)
        if self.xbzrle is not None:
            return self._send_xbzrle(block, chunk, m, named, kind == QEMU_VM_SECTION_END)
        w = self.w
        zmap = block.zero_pages(chunk, m)
        zero = zmap.count(1)
        self.sent_zero += zero
        self.sent_normal += m - zero
        name = block.name.encode() if named else None
        if self.direct is not None:  # from guest memory to the channel, no copy
            w.flush()
            w.offset += self.direct(block, chunk, m, zmap, name)
        else:
            w.write(encode_page_records(block, chunk, m, zmap, named))
        return False

    def _send_xbzrle(self, block: Any, first: int, m: int, named: bool, last_stage: bool) -> bool:
        """Pages through the XBZRLE cache (encoded in C); returns whether the name is still due."""
        assert self.xbzrle is not None
        zmap = block.zero_pages(first, m)
        before = self.xbzrle.stats
        records, pending = self.xbzrle.encode_run(block, self._key_base[block], first, m, zmap,
                                                  block.name.encode() if named else None, self.generation,
                                                  self.xbzrle_started, last_stage)
        after = self.xbzrle.stats
        self.sent_zero += after.zero - before.zero
        self.sent_normal += after.normal - before.normal
        self.w.write(records)
        return pending

    def _send_multifd(self, block: Any, first: int, m: int, named: bool) -> bool:
        """Pages ``first .. first+m-1`` through multifd, 128 per packet; returns ``named``."""
        assert self.multifd is not None
        pages = np.arange(first, first + m, dtype=np.uint64)
        if self.zero_page_detection == "none":
            zero = np.zeros(m, dtype=bool)
        else:
            zero = np.frombuffer(block.zero_pages(first, m), dtype=np.uint8).astype(bool)
        self.sent_zero += int(zero.sum())
        self.sent_normal += m - int(zero.sum())
        if self.zero_page_detection == "legacy":
            if zero.any():  # found by the main thread, sent on the main stream
                self.w.write(_zero_records(pages[zero], block.name.encode() if named else None))
                named = False
            normal = pages[~zero]
            for i in range(0, len(normal), 128):
                group = normal[i:i + 128]
                self.multifd.send(block, group, len(group))
            return named
        for i in range(0, m, 128):  # each packet lists its normal pages first, then its zero pages
            z = zero[i:i + 128]
            group = pages[i:i + 128]
            self.multifd.send(block, np.concatenate((group[~z], group[z])), int((~z).sum()))
        return named

    def device_sections(self, devices: list[vms.SaveStateEntry], runstate: str) -> tuple[bytes, list[Any]]:
        """The FULL sections of ``devices`` and globalstate (``runstate``), and their vmdesc entries."""
        entries = list(devices) + [vms.globalstate_entry(runstate, 4)]
        next_id = max([RAM_SECTION_ID] + [e.section_id or 0 for e in entries]) + 1
        out = bytearray()
        desc = []
        for e in entries:
            if e.section_id is None:
                e.section_id, next_id = next_id, next_id + 1
            body = vms.save_state(e.vmsd, e.state)
            out += _section_header(QEMU_VM_SECTION_FULL, e.section_id, e.idstr, e.instance_id,
                                   e.vmsd.version_id) + body + _footer(e.section_id)
            desc.append(vms.vmdesc_device(e))
        return bytes(out), desc

    def finish(self, dirty: dict[Any, np.ndarray], devices: list[vms.SaveStateEntry], runstate: str) -> None:
        """The END section with the last dirty pages, then devices, globalstate, EOF, vmdesc."""
        self.send_pages(dirty, QEMU_VM_SECTION_END, lambda n: None)
        sections, desc = self.device_sections(devices, runstate)
        self.w.write(sections)
        self.w.write(bytes((QEMU_VM_EOF,)))
        js = json.dumps({"page_size": PAGE_SIZE, "devices": desc}).encode()
        self.w.write(struct.pack(">BI", QEMU_VM_VMDESCRIPTION, len(js)) + js)
        self.w.flush()
