"""The destination of a postcopy migration (QEMU's postcopy-ram.c, incoming side).

The guest runs before all of its RAM has arrived. At LISTEN every RAM block is registered with
userfaultfd (``emu.migration.userfault``); a page nobody has placed yet is missing, and whoever
touches it (the vCPU, a qtest or device access in C) blocks in the kernel. The fault thread reads
those faults and asks the source for the pages over the return path; the loading thread places
every page that arrives with ``UFFDIO_COPY``/``UFFDIO_ZEROPAGE``, which wakes the waiters. Nothing
here holds the GIL or a machine lock while a page is missing, so the path that delivers a page
never waits on the thread that waits for it.

Postcopy states are QEMU's ``PostcopyState`` numbers (they appear in its error texts).
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from emu.migration.return_path import ReturnPathWriter
from emu.migration.stream import PS_END, PS_NONE
from emu.migration.userfault import Userfault, discard, wait_readable

__all__ = ["PostcopyIncoming"]

PAGE = 4096


class PostcopyIncoming:
    """One incoming postcopy: the postcopy state, the userfaultfd, the fault thread, the
    receivedmap (shared with the RAM loader) and the vCPU blocktime."""

    def __init__(self, blocks: Sequence[Any], *, vcpu_thread_id: Callable[[], int | None], blocktime: bool) -> None:
        self.blocks = list(blocks)
        self.by_name = {b.name: b for b in self.blocks}
        #: QEMU's receivedmap, one byte per page (the RAM loader shares it)
        self.received = {b.name: bytearray(b.used_length // PAGE) for b in self.blocks}
        self.state = PS_NONE
        self.rp: ReturnPathWriter | None = None
        self.uffd: Userfault | None = None
        self._vcpu_tid = vcpu_thread_id
        self.blocktime_enabled = blocktime
        self.requests = 0
        self._requested: set[tuple[str, int]] = set()
        self._lock = threading.Lock()
        self._blocked_since: float | None = None  # the vCPU waits for a page since then
        self._blocked_page: tuple[str, int] | None = None
        self.blocktime = 0.0  # seconds the vCPU spent waiting for pages
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread: threading.Thread | None = None
        self._stop = False
        self._closed = False
        #: the manager's hooks: LISTEN done (status postcopy-active), RUN (devices in, the VM
        #: starts), the channel broke (postcopy-paused; returns the recovered channel's reader, or
        #: None to give up), POSTCOPY_RESUME (postcopy-active again)
        self.on_listen: Callable[[], None] = lambda: None
        self.on_run: Callable[[], None] = lambda: None
        self.on_pause: Callable[[list[str]], Any] = lambda lines: None
        self.on_resume: Callable[[], None] = lambda: None
        #: set while a recovered channel is being set up (QEMU's postcopy-recover state)
        self.recovering = False
        #: the fault thread hit an error it could not recover from (then the load fails too)
        self.error: str | None = None

    # ---- the stream's commands
    def discard_all(self) -> None:
        """The first discard (QEMU's postcopy_ram_prepare_discard at ADVISE): pages the
        destination touched before the migration are dropped, so that the stream's pages and
        nothing else fill RAM."""
        for b in self.blocks:
            discard(b.host_address, b.size)

    def discard(self, name: str, start: int, length: int) -> str | None:
        """RAM_DISCARD of ``length`` bytes at ``start`` of block ``name``: those pages become
        missing again; an error text or ``None``."""
        block = self.by_name.get(name)
        if block is None:
            return f"ram_discard_range: Failed to find block '{name}'"
        if start % PAGE:
            return f"ram_block_discard_range: Unaligned start address: {block.host_address + start:#x}"
        if start + length > block.size:
            return f"ram_block_discard_range: Overrun block '{name}' ({start}/{length:x}/{block.size:x})"
        if length % PAGE:
            return f"ram_block_discard_range: Unaligned length: {length:x}"
        discard(block.host_address + start, length)
        rmap = self.received[name]
        rmap[start // PAGE:(start + length) // PAGE] = bytes(length // PAGE)
        return None

    def listen(self, rp: ReturnPathWriter) -> None:
        """LISTEN: guest RAM registered with userfaultfd, the fault thread started."""
        self.rp = rp
        self.uffd = Userfault()
        for b in self.blocks:
            self.uffd.register(b.host_address, b.size)
        # pages past used_length never come: present them as zero so nothing waits for them
        for b in self.blocks:
            if b.size > b.used_length:
                self.uffd.place_zero(b.host_address + b.used_length, b.size - b.used_length)
        self._thread = threading.Thread(target=self._fault_loop, name="postcopy/fault", daemon=True)
        self._thread.start()
        self.on_listen()

    def run(self) -> None:
        """RUN: the manager loads the devices and starts the VM."""
        self.on_run()

    def paused(self, lines: list[str]) -> Any:
        """The stream broke during postcopy (``lines``: what the load said): waits for a
        recovered channel; its reader, or None when there will be none."""
        return self.on_pause(lines)

    def resume(self) -> None:
        """POSTCOPY_RESUME: postcopy-active again, RESUME_ACK, and the pages still missing that
        were asked for on the broken channel are asked for again."""
        self.recovering = False
        self.on_resume()
        if self.rp is not None:
            self.rp.resume_ack(1)
        self.rerequest()

    # ---- pages from the stream (the loading threads)
    def place(self, block: Any, offset: int, data: bytes | bytearray | memoryview | None, fill: int = 0) -> None:
        """Places one page (``data``, or a page of ``fill`` bytes when ``data`` is None) and marks
        it received; waking whoever waits for it is the kernel's part."""
        assert self.uffd is not None
        host = block.host_address + offset
        if data is None and fill == 0:
            self.uffd.place_zero(host, PAGE)
        else:
            self.uffd.place(host, data if data is not None else bytes((fill,)) * PAGE)
        self.received[block.name][offset // PAGE] = 1
        self._pages_arrived(block.name)

    def place_run(self, block: Any, buf: bytearray | memoryview, pos: int) -> tuple[int, int, int]:
        """The loader's fast path: the run of CONTINUE ZERO/PAGE records at ``buf[pos:]``, all
        for ``block``, placed in C (see ``Userfault.place_run``); then the bookkeeping of the
        pages asked for and of the vCPU's wait, as :meth:`place` does page by page."""
        assert self.uffd is not None
        out = self.uffd.place_run(block.host_address, block.used_length, buf, pos, self.received[block.name])
        if out[0]:
            self._pages_arrived(block.name)
        return out

    def missing_pages(self) -> int:
        """Pages never placed nor received in precopy (none once a postcopy completed)."""
        return sum(len(r) - bytes(r).count(1) for r in self.received.values())

    # ---- the fault thread
    def _fault_loop(self) -> None:
        """Reads faults until stopped; each missing page not yet asked for is requested."""
        uffd = self.uffd
        assert uffd is not None
        try:
            while not self._stop:
                if not wait_readable(uffd.fileno(), self._wake_r, None):
                    continue
                for addr, tid in uffd.read_faults():
                    self._on_fault(addr, tid)
        except Exception as e:  # noqa: BLE001 - reported; the load notices through ``error``
            if not self._stop:
                self.error = f"postcopy fault thread: {e}"

    def _on_fault(self, addr: int, tid: int) -> None:
        found = self._find(addr)
        if found is None:
            return
        block, page = found
        key = (block.name, page)
        with self._lock:
            if self.received[block.name][page]:
                return  # placed meanwhile: the kernel has woken the waiter
            if tid and tid == self._vcpu_tid() and self._blocked_since is None:
                self._blocked_since, self._blocked_page = time.monotonic(), key
            if key in self._requested:
                return
            self._requested.add(key)
            self.requests += 1
        rp = self.rp
        if rp is not None:
            rp.request_pages(block.name, page * PAGE, PAGE)  # if it fails: asked again after recovery

    def _find(self, addr: int) -> tuple[Any, int] | None:
        for b in self.blocks:
            base = b.host_address
            if base <= addr < base + b.used_length:
                return b, (addr - base) // PAGE
        return None

    def _pages_arrived(self, name: str) -> None:
        """After pages of block ``name`` were placed: requests now answered leave the pending set,
        and the vCPU's wait ends if its page came."""
        rmap = self.received[name]
        with self._lock:
            self._requested = {k for k in self._requested if not (k[0] == name and rmap[k[1]])}
            page = self._blocked_page
            if page is not None and page[0] == name and rmap[page[1]] and self._blocked_since is not None:
                self.blocktime += time.monotonic() - self._blocked_since
                self._blocked_since = self._blocked_page = None

    def rerequest(self) -> None:
        """After a recovery: the pages asked for on the broken channel are asked for again."""
        with self._lock:
            pending = sorted(self._requested)
        rp = self.rp
        for name, page in pending:
            if rp is not None and not self.received[name][page]:
                rp.request_pages(name, page * PAGE, PAGE)

    # ---- query-migrate
    def blocktime_info(self) -> dict[str, Any]:
        """``postcopy-blocktime`` (ms, every vCPU blocked at once: with one vCPU its own) and
        ``postcopy-vcpu-blocktime`` (ms per vCPU), as QEMU reports them."""
        with self._lock:
            total = self.blocktime
            if self._blocked_since is not None:
                total += time.monotonic() - self._blocked_since
        ms = int(total * 1000)
        return {"postcopy-blocktime": ms, "postcopy-vcpu-blocktime": [ms]}

    # ---- the end
    def close(self) -> None:
        """Stops the fault thread and unregisters guest RAM (pages still missing then read as
        zero, as after QEMU's cleanup)."""
        if self._closed:
            return
        self._closed = True
        self._stop = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        uffd, self.uffd = self.uffd, None
        if uffd is not None:
            for b in self.blocks:
                try:
                    uffd.unregister(b.host_address, b.size)
                except OSError:
                    pass
            uffd.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self.state = PS_END
