"""The source's side of postcopy in the migration manager: the return path it reads, the switch
(QEMU's postcopy_start), the pages after it, ``migrate-pause`` and the recovery that ``migrate``
with ``resume`` starts.

:class:`SourcePostcopy` is a mixin of ``emu.migration.manager.MigrationManager`` (it uses the
manager's status, events, channels and VM); the stream pieces are ``postcopy_outgoing``'s.
"""
from __future__ import annotations

import queue
import struct
import sys
import threading
import time
from typing import Any

import numpy as np

from emu.migration.address import MigrationAddress
from emu.migration.errors import MigrationCancelled, MigrationError
from emu.migration.postcopy_outgoing import (
    MIG_CMD_OPEN_RETURN_PATH,
    MIG_CMD_POSTCOPY_RESUME,
    MIG_CMD_RECV_BITMAP,
    PageRequests,
    PostcopySender,
    PreemptChannel,
    command,
    discard_commands,
    package,
    ping,
    postcopy_advise,
    ram_end_and_eof,
)
from emu.migration.precopy import PrecopySaver
from emu.migration.return_path import (
    RP_PONG,
    RP_RECV_BITMAP,
    RP_REQ_PAGES,
    RP_REQ_PAGES_ID,
    RP_RESUME_ACK,
    RP_SHUT,
    ReturnPathError,
    decode_page_request,
    read_bitmap,
    read_message,
)
from emu.migration.stream import ChannelSink, StreamWriter
from emu.migration.transport import TransportError

__all__ = ["PostcopyPaused", "SourcePostcopy"]

PAGE = 4096
RP_UNAVAILABLE = "Unable to open return-path for postcopy"
PAUSED_BY_USER = "Postcopy migration is paused by the user"


class PostcopyPaused(Exception):
    """The channel broke (or ``migrate-pause``) after the switch: the migration waits for a resume."""


class _ReturnPath:
    """The source's reading end of one channel's return path, with what it has heard."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.shut = threading.Event()  # SHUT arrived, or the return path ended
        self.shut_value: int | None = None
        self.error: str | None = None
        self.bitmaps: dict[str, np.ndarray] = {}
        self.bitmap_event = threading.Event()
        self.resume_ack = threading.Event()
        self.pong = threading.Event()  # a PONG came: the destination reads this channel


class SourcePostcopy:
    """Postcopy and the return path for the source (mixed into the migration manager)."""

    # provided by MigrationManager
    vm: Any
    config: Any
    status: str
    error_desc: str | None
    prog: str
    stats: dict[str, Any]
    downtime: float
    end_time: float
    _channel: Any
    _cancel: threading.Event
    _lock: threading.Lock

    def _init_postcopy_source(self) -> None:
        self._start_postcopy = threading.Event()
        self._requests = PageRequests()
        self._rp: _ReturnPath | None = None
        self._resume_channels: queue.Queue[Any] = queue.Queue()
        self._pause_requested = False
        self._postcopy_bytes = 0  # sent after the switch (postcopy-bytes)
        self._addr: MigrationAddress | None = None  # where the channels connect (preempt, resume)
        self._preempt: PreemptChannel | None = None

    def _set(self, status: str, incoming: bool = False) -> None:  # the manager's
        raise NotImplementedError

    def _open(self, addr: MigrationAddress) -> Any:  # the manager's
        raise NotImplementedError

    def _secure(self, channel: Any, addr: MigrationAddress) -> Any:  # the manager's
        raise NotImplementedError

    def _spawn(self, name: str, target: Any, *args: Any) -> None:  # the manager's
        raise NotImplementedError

    def _maybe_pause(self) -> None:  # the manager's
        raise NotImplementedError

    def _throttle_stop(self) -> None:  # the manager's
        raise NotImplementedError

    def _update_stats(self, saver: PrecopySaver, remaining: int) -> None:  # the manager's
        raise NotImplementedError

    # ---- QMP
    def start_postcopy(self) -> None:
        """``migrate-start-postcopy``: the running migration switches at its next chunk."""
        if not self.config.capability("postcopy-ram") and not self.config.capability("dirty-bitmaps"):
            raise MigrationError("Enable postcopy with migrate_set_capability before the start of migration")
        if self.status == "none":
            raise MigrationError("Postcopy must be started after migration has been started")
        self._start_postcopy.set()

    def pause_source(self) -> bool:
        """``migrate-pause`` on the source: True if it applied (postcopy-active or -recover)."""
        if self.status not in ("postcopy-active", "postcopy-recover"):
            return False
        self._pause_requested = True
        self.error_desc = PAUSED_BY_USER
        channel = self._channel
        if channel is not None:
            channel.shutdown()
        return True

    def resume(self, addr: MigrationAddress) -> None:
        """``migrate`` with ``resume``: a new channel for a paused postcopy migration."""
        if self.status != "postcopy-paused":
            raise MigrationError("Cannot resume if there is no paused migration")
        if self.config.capability("release-ram"):
            raise MigrationError("Postcopy recovery cannot work when release-ram capability is set")
        self._addr = addr
        self._pause_requested = False
        self._set("postcopy-recover-setup")
        self._spawn("migration-resume", self._connect_resume, addr)

    def _connect_resume(self, addr: MigrationAddress) -> None:
        try:
            channel = self._secure(self._open(addr), addr)
        except TransportError as e:
            self.error_desc = str(e)
            self._set("postcopy-paused")
            return
        self._resume_channels.put(channel)

    # ---- the return path
    def _wants_return_path(self) -> bool:
        return bool(self.config.capability("postcopy-ram") or self.config.capability("return-path"))

    def _preamble(self) -> bytes:
        """What follows the configuration section: OPEN_RETURN_PATH and PING 1 with a return
        path, POSTCOPY_ADVISE with postcopy-ram."""
        out = b""
        if self._wants_return_path():
            out += command(MIG_CMD_OPEN_RETURN_PATH) + ping(1)
        if self.config.capability("postcopy-ram"):
            out += postcopy_advise()
        return out

    def _open_return_path(self, channel: Any) -> None:
        """Starts reading the return path of ``channel`` (a socket), or fails as QEMU does."""
        if not self._wants_return_path():
            self._rp = None
            return
        if getattr(channel, "kind", None) != "socket":
            sys.stderr.write(f"{self.prog}: {RP_UNAVAILABLE}\n")
            raise TransportError(RP_UNAVAILABLE)
        rp = self._rp = _ReturnPath(channel)
        threading.Thread(target=self._rp_loop, args=(rp,), name="return path", daemon=True).start()

    def _rp_loop(self, rp: _ReturnPath) -> None:
        """QEMU's source_return_path_thread: messages until SHUT or the channel ends."""
        try:
            while True:
                msg_type, payload = read_message(rp.channel)
                if msg_type == RP_SHUT:
                    rp.shut_value = struct.unpack(">I", payload)[0]
                    if rp.shut_value:
                        rp.error = f"RP: Sibling indicated error {rp.shut_value}"
                    return
                self._rp_message(rp, msg_type, payload)
        except (TransportError, ReturnPathError, OSError) as e:
            if rp.error is None:
                rp.error = str(e)
            if isinstance(e, ReturnPathError):
                sys.stderr.write(f"{self.prog}: {e}\n")
                rp.channel.shutdown()  # the main stream notices: the migration fails or pauses
        finally:
            rp.shut.set()
            rp.bitmap_event.set()
            rp.resume_ack.set()
            rp.pong.set()

    def _rp_message(self, rp: _ReturnPath, msg_type: int, payload: bytes) -> None:
        if msg_type == RP_PONG:
            rp.pong.set()
            return
        if msg_type in (RP_REQ_PAGES, RP_REQ_PAGES_ID):
            self._page_request(*decode_page_request(msg_type, payload))
        elif msg_type == RP_RECV_BITMAP:
            name = payload[1:1 + payload[0]].decode("utf-8", "replace") if payload else ""
            block = self._ram_block(name)
            if block is None:
                raise ReturnPathError(f"migrate_handle_rp_recv_bitmap: invalid block name '{name}'")
            rp.bitmaps[name] = read_bitmap(rp.channel, block.used_length // PAGE, name)
            rp.bitmap_event.set()
        elif msg_type == RP_RESUME_ACK:
            (value,) = struct.unpack(">I", payload)
            if value != 1:
                raise ReturnPathError(f"{value} is not a valid resume ack value")
            rp.resume_ack.set()

    def _ram_block(self, name: str) -> Any | None:
        return next((b for b in self.vm.machine.ram_blocks if b.name == name), None)

    def _page_request(self, name: str | None, start: int, length: int) -> None:
        """QEMU's migrate_handle_rp_req_pages and ram_save_queue_pages, with their texts."""
        if start % PAGE or length % PAGE:
            raise ReturnPathError(f"migrate_handle_rp_req_pages: Misaligned page request, start: {start:x} "
                                  f"len: {length}")
        if name is None:
            block = self._requests.last_block
            if block is None:
                raise ReturnPathError("ram_save_queue_pages no previous block")
        else:
            block = self._ram_block(name)
            if block is None:
                raise ReturnPathError(f"ram_save_queue_pages no block '{name}'")
            self._requests.last_block = block
        if length == 0 or start + length > block.used_length:
            raise ReturnPathError(f"ram_save_queue_pages request overrun start={start:x} len={length:x} "
                                  f"blocklen={block.used_length:x}")
        self._requests.push(block, start, length)

    def _open_preempt(self, wait_pong: bool = True) -> None:
        """With postcopy-preempt: the channel for requested pages, connected to the same address
        once the destination has answered a PING on the main channel (so it takes this
        connection for the second one, as QEMU 9.1 orders them). A resume connects it after the
        bitmap handshake instead, which proves the same."""
        if not self.config.capability("postcopy-preempt") or self._addr is None:
            return
        rp = self._rp
        while wait_pong and rp is not None and not rp.pong.wait(0.1):
            if self._cancel.is_set() or self._pause_requested:
                raise PostcopyPaused("no PONG before the preempt channel")
        self._preempt = PreemptChannel(self._secure(self._open(self._addr), self._addr))

    def _close_preempt(self, abort: bool) -> None:
        preempt, self._preempt = self._preempt, None
        if preempt is not None:
            try:
                preempt.close(abort)
            except Exception:  # noqa: BLE001 - closing a broken channel must not mask the result
                pass

    def _await_return_path(self) -> None:
        """After EOF: QEMU's await_return_path_close_on_source (the destination sends SHUT once
        it has loaded everything); a return path that failed fails the migration."""
        rp = self._rp
        if rp is None:
            return
        while not rp.shut.wait(0.1):
            if self._cancel.is_set():
                return
        if rp.error is not None:
            raise TransportError(rp.error)

    # ---- the switch and the pages after it
    def _run_postcopy(self, saver: PrecopySaver, unsent: dict[Any, np.ndarray] | None, guest: Any) -> None:
        """postcopy_start, then every page left, pausing and resuming as the channel breaks and
        comes back; ends ``completed`` once the destination said SHUT."""
        self._open_preempt()
        self._set("postcopy-active")
        dirty = self._switch(saver, unsent, guest)

        def send(batch: dict[Any, list[tuple[int, int]]]) -> int:
            n = saver.send_page_runs(batch)
            self._postcopy_bytes += n
            self._update_stats(saver, sender.remaining * PAGE)
            return n

        sender = PostcopySender(saver.blocks, dirty, self._requests, send,
                                lambda: int(self.config.parameter("max-postcopy-bandwidth")),
                                lambda: self._cancel.is_set() or self._pause_requested)
        sender.urgent = self._preempt.send if self._preempt is not None else None
        while True:
            try:
                if sender.run():
                    saver.w.write(ram_end_and_eof())
                    saver.w.flush()
                    self._await_return_path()
                    self._close_preempt(abort=False)
                    break
                if self._cancel.is_set():
                    raise MigrationCancelled()
                raise PostcopyPaused()
            except (TransportError, OSError, PostcopyPaused):
                if self._cancel.is_set():
                    raise
                self._postcopy_pause(saver, sender)
        self._postcopy_stats(saver, sender)
        self._throttle_stop()
        self.vm.set_runstate("postmigrate")
        self._set("completed")

    def _switch(self, saver: PrecopySaver, unsent: dict[Any, np.ndarray] | None, guest: Any) -> dict[Any, np.ndarray]:
        """The guest stops; the destination drops what changed since it got it, gets the devices in
        a package and runs. Returns the pages still to send (one bool per page and block)."""
        guest.runstate = old_state = self.vm.runstate
        was_running = self.vm.running
        stop_at = time.monotonic()
        self.vm.set_runstate("finish-migrate")
        guest.stopped_by_us = was_running
        self._maybe_pause()
        words = saver.sync()
        if unsent is not None:
            words = {b: words[b] | unsent[b] for b in words}
        dirty = {b: np.unpackbits(w.view(np.uint8), bitorder="little")[: b.pages].astype(bool)
                 for b, w in words.items()}
        w = saver.w
        for block, d in dirty.items():
            for cmd in discard_commands(block.name, d[: block.used_length // PAGE]):
                w.write(cmd)
        w.write(ping(2))
        sections, _ = saver.device_sections(self.vm.machine.migration_entries(saving=True),
                                            "running" if was_running else old_state)
        w.write(package(sections))
        w.write(ping(4))
        w.flush()
        self.downtime = time.monotonic() - stop_at
        return dirty

    def _postcopy_stats(self, saver: PrecopySaver, sender: PostcopySender) -> None:
        self._update_stats(saver, 0)
        self.end_time = time.monotonic()

    # ---- pause and recovery
    def _postcopy_pause(self, saver: PrecopySaver, sender: PostcopySender) -> None:
        """postcopy-paused until ``migrate`` with ``resume`` brings a channel and the handshake on
        it works (RECV_BITMAP per block, POSTCOPY_RESUME, RESUME_ACK): then postcopy-active again,
        with every page the destination has not received dirty once more."""
        old = self._channel
        if old is not None:
            old.shutdown()
            old.close()
        self._close_preempt(abort=True)
        sender.urgent = None
        self._set("postcopy-paused")
        while True:
            channel = self._wait_resume_channel()
            self._set("postcopy-recover")
            self._channel = channel
            try:
                self._recover_on(channel, saver, sender)
                sender.urgent = self._preempt.send if self._preempt is not None else None
                self._pause_requested = False
                self.error_desc = None
                self._set("postcopy-active")
                return
            except (TransportError, OSError, ReturnPathError, PostcopyPaused) as e:
                self.error_desc = str(e) if not self._pause_requested else PAUSED_BY_USER
                channel.shutdown()
                channel.close()
                self._set("postcopy-paused")

    def _wait_resume_channel(self) -> Any:
        while True:
            try:
                return self._resume_channels.get(timeout=0.1)
            except queue.Empty:
                if self._cancel.is_set():
                    raise TransportError("cancelled while paused") from None

    def _recover_on(self, channel: Any, saver: PrecopySaver, sender: PostcopySender) -> None:
        """The resume handshake on a new channel (no stream header: the stream goes on)."""
        self._open_return_path(channel)
        rp = self._rp
        assert rp is not None
        offset = saver.w.offset
        saver.w = StreamWriter(ChannelSink(channel))
        saver.w.offset = offset
        if saver.direct is not None:
            saver.direct = channel.send_page_records
        for block in saver.blocks:
            saver.w.write(command(MIG_CMD_RECV_BITMAP, bytes((len(block.name),)) + block.name.encode()))
        saver.w.flush()
        for block in saver.blocks:
            while block.name not in rp.bitmaps:
                if rp.error is not None or self._pause_requested:
                    raise PostcopyPaused(rp.error or PAUSED_BY_USER)
                rp.bitmap_event.wait(0.1)
                rp.bitmap_event.clear()
            received = rp.bitmaps[block.name]
            d = sender.dirty[block]
            d[: len(received)] = ~received
        self._requests.take()  # asked on the old channel: the destination asks again
        self._open_preempt(wait_pong=False)  # after the handshake: the main channel is known by now
        saver.w.write(command(MIG_CMD_POSTCOPY_RESUME))
        saver.w.flush()
        while not rp.resume_ack.wait(0.1):
            if self._pause_requested:
                raise PostcopyPaused(PAUSED_BY_USER)
        if rp.error is not None:
            raise PostcopyPaused(rp.error)
