"""Iterative precopy: the stream written in rounds while the guest runs (QEMU's ram_save_*).

RAM START carries MEM_SIZE; each round syncs the dirty bitmaps (C, atomic per word), sends the
dirty pages in a PART section (zero pages as ZERO records, found in C) within the bandwidth
limit; when what is left fits the downtime limit, the VM stops and the last dirty pages go out in
the END section, followed by the device sections, globalstate, EOF and the vmdesc.
"""
from __future__ import annotations

import json
import struct
import time
from typing import Any, Callable, Sequence

import numpy as np

from emu.migration import vmstate as vms
from emu.migration.stream import (PAGE_SIZE, QEMU_VM_CONFIGURATION, QEMU_VM_EOF, QEMU_VM_FILE_MAGIC,
                                  QEMU_VM_FILE_VERSION, QEMU_VM_SECTION_END, QEMU_VM_SECTION_FULL,
                                  QEMU_VM_SECTION_START, QEMU_VM_SUBSECTION, QEMU_VM_VMDESCRIPTION,
                                  RAM_IDSTR, RAM_SAVE_FLAG_EOS, RAM_SAVE_FLAG_MEM_SIZE, RAM_VERSION,
                                  StreamWriter, _counted, _footer, _section_header, encode_page_records)

RAM_SECTION_ID = 2


class PrecopySaver:
    """Writes one precopy stream; ``send_dirty`` is called once per round."""

    def __init__(self, writer: StreamWriter, blocks: Sequence[Any], machine_name: str,
                 uuid: bytes | None = None) -> None:
        """``uuid``: sent in a ``configuration/uuid`` subsection (the source's -uuid, when the
        validate-uuid capability is on)."""
        self.w = writer
        self.blocks = list(blocks)
        self.sent_zero = self.sent_normal = 0
        self.machine_name = machine_name
        self.uuid = uuid

    def start(self) -> None:
        w = self.w
        w.write(struct.pack(">II", QEMU_VM_FILE_MAGIC, QEMU_VM_FILE_VERSION))
        name = self.machine_name.encode()
        w.write(struct.pack(">BI", QEMU_VM_CONFIGURATION, len(name)) + name)
        if self.uuid is not None:
            sub = b"configuration/uuid"
            w.write(struct.pack(">BB", QEMU_VM_SUBSECTION, len(sub)) + sub + struct.pack(">I", 1) + self.uuid)
        total = sum(b.used_length for b in self.blocks)
        body = bytearray(struct.pack(">Q", total | RAM_SAVE_FLAG_MEM_SIZE))
        for b in self.blocks:
            body += _counted(b.name) + struct.pack(">Q", b.used_length)
        body += struct.pack(">Q", RAM_SAVE_FLAG_EOS)
        w.write(_section_header(QEMU_VM_SECTION_START, RAM_SECTION_ID, RAM_IDSTR, 0, RAM_VERSION) + body
                + _footer(RAM_SECTION_ID))
        for b in self.blocks:
            b.fetch_and_clear_dirty()  # start tracking: the first round sends every page anyway

    def sync(self) -> dict[Any, np.ndarray]:
        """Moves every block's dirty bitmap out (one word at a time, atomically, in C)."""
        return {b: b.fetch_and_clear_dirty() for b in self.blocks}

    @staticmethod
    def all_pages(blocks: Sequence[Any]) -> dict[Any, np.ndarray]:
        return {b: np.full((b.pages + 63) // 64, np.uint64(0xFFFFFFFFFFFFFFFF), dtype=np.uint64) for b in blocks}

    def send_pages(self, dirty: dict[Any, np.ndarray], kind: int, throttle: Callable[[int], None]) -> int:
        """One PART (or the END) section with every page set in ``dirty``; returns bytes written."""
        w = self.w
        before = w.offset
        w.write(_section_header(kind, RAM_SECTION_ID))
        for block, words in dirty.items():
            bits = np.unpackbits(words.view(np.uint8), bitorder="little")[: block.pages]
            pages = np.flatnonzero(bits)
            if not len(pages):
                continue
            # runs of consecutive dirty pages: one batch each (zero detection and encoding in C/numpy)
            breaks = np.flatnonzero(np.diff(pages) != 1) + 1
            named = True
            for run in np.split(pages, breaks):
                first, n = int(run[0]), len(run)
                for chunk in range(first, first + n, 4096):
                    m = min(4096, first + n - chunk)
                    zmap = block.zero_pages(chunk, m)
                    zero = zmap.count(1)
                    self.sent_zero += zero
                    self.sent_normal += m - zero
                    w.write(encode_page_records(block, chunk, m, zmap, named))
                    named = False
                    throttle(w.offset - before)
        w.write(struct.pack(">Q", RAM_SAVE_FLAG_EOS) + _footer(RAM_SECTION_ID))
        w.flush()
        return w.offset - before

    def finish(self, dirty: dict[Any, np.ndarray], devices: list[vms.SaveStateEntry], runstate: str) -> None:
        """The END section with the last dirty pages, then devices, globalstate, EOF, vmdesc."""
        self.send_pages(dirty, QEMU_VM_SECTION_END, lambda n: None)
        entries = list(devices) + [vms.globalstate_entry(runstate, 4)]
        next_id = max([RAM_SECTION_ID] + [e.section_id or 0 for e in entries]) + 1
        desc = []
        for e in entries:
            if e.section_id is None:
                e.section_id, next_id = next_id, next_id + 1
            body = vms.save_state(e.vmsd, e.state)
            self.w.write(_section_header(QEMU_VM_SECTION_FULL, e.section_id, e.idstr, e.instance_id,
                                         e.vmsd.version_id) + body + _footer(e.section_id))
            desc.append(vms.vmdesc_device(e))
        self.w.write(bytes((QEMU_VM_EOF,)))
        js = json.dumps({"page_size": PAGE_SIZE, "devices": desc}).encode()
        self.w.write(struct.pack(">BI", QEMU_VM_VMDESCRIPTION, len(js)) + js)
        self.w.flush()


class RateLimiter:
    """QEMU's migration rate limit: at most ``bytes_per_sec`` per 100 ms window (0: unlimited)."""

    WINDOW = 0.1

    def __init__(self, bytes_per_sec: int, cancelled: Callable[[], bool]) -> None:
        self.limit = bytes_per_sec
        self.cancelled = cancelled
        self.window_start = time.monotonic()
        self.window_bytes = 0
        self.last_total = 0

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
            time.sleep(self.window_start + self.WINDOW - now)  # the rate limit itself

    def reset_round(self) -> None:
        self.last_total = 0
