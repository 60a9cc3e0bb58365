"""Migration state and the outgoing/incoming runs (QEMU's MigrationState, in small).

The source runs precopy (``precopy.PrecopySaver``) on a migration thread: rounds of dirty pages
while the guest runs, then stop-and-copy when what is left fits the downtime limit, optionally
with multifd channels beside the main stream. The destination accepts the main channel (and the
multifd channels), loads the stream and resumes as QEMU does (autostart, or the received run
state). With postcopy-ram, ``migrate-start-postcopy`` switches a running precopy to postcopy: the
source's side is ``postcopy_source`` (a mixin of the manager), the destination's
``postcopy_destination``; both use the return path (``return_path``). Status transitions and
MIGRATION/MIGRATION_PASS events (when the ``events`` capability is on) follow QEMU 9.1;
``migrate_cancel`` ends a run ``cancelled`` (:class:`MigrationCancelled` where the run notices
it, or the I/O error its channel shutdown causes).

The top of ``emu.migration``: it drives the modules below it (address, transport, stream,
precopy, multifd, xbzrle, throttle, params) and the machine state it saves; the QMP commands
above call it, and it imports nothing of the monitor.
"""
from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from emu.devices.migration_fault import MigrationSetupError
from emu.migration import userfault
from emu.migration.address import Inet, MigrationAddress, Socket
from emu.migration.dirtyrate import DirtyRate
from emu.migration.errors import MigrationCancelled, MigrationError
from emu.migration.multifd import MultifdError, MultifdReceiver, MultifdSender
from emu.migration.params import MigrationConfig
from emu.migration.postcopy_destination import DestinationPostcopy
from emu.migration.postcopy_incoming import PostcopyIncoming
from emu.migration.postcopy_outgoing import PageRequests
from emu.migration.postcopy_source import SourcePostcopy
from emu.migration.precopy import PrecopySaver, RateLimiter
from emu.migration.return_path import ReturnPathWriter
from emu.migration.stream import (
    PS_LISTENING,
    QEMU_VM_FILE_MAGIC,
    QEMU_VM_SECTION_PART,
    ChannelSink,
    StreamError,
    StreamReader,
    StreamWriter,
    load_stream,
)
from emu.migration.throttle import AutoConverge
from emu.migration.transport import Listener, TransportError, listen_incoming, open_outgoing, tls_upgrade

ACTIVE = frozenset({"setup", "active", "postcopy-active", "postcopy-paused", "postcopy-recover",
                    "postcopy-recover-setup", "pre-switchover", "device", "wait-unplug", "cancelling"})
PAGE = 4096
#: what switching on does something here; every other capability is refused when set (background
#: snapshots, block and RDMA features...). mapped-ram is refused at migrate time, with its own
#: message.
IMPLEMENTED_CAPABILITIES = frozenset({"events", "xbzrle", "auto-converge", "multifd", "pause-before-switchover",
                                      "validate-uuid", "mapped-ram", "return-path", "postcopy-ram",
                                      "postcopy-blocktime", "postcopy-preempt"})
#: mapped-ram's file layout (pages at fixed offsets) is not implemented: refuse rather than write
#: or expect a plain stream that a QEMU with the capability would misread
MAPPED_RAM_UNSUPPORTED = "mapped-ram migration is not supported by this emulator"


def _is_stream_socket(addr: MigrationAddress) -> bool:
    """An inet, unix or vsock socket: connected (source) and listened on (destination) by QEMU
    itself, unlike an fd: socket."""
    return isinstance(addr, Socket) and addr.socket.type in ("inet", "unix", "vsock")


def _count_pages(dirty: dict[Any, Any]) -> int:
    """Dirty pages in a round's bitmaps (a popcount over the words, in numpy)."""
    return int(sum(int(np.unpackbits(words.view(np.uint8)).sum()) for words in dirty.values()))


@dataclass
class _GuestBefore:
    """How the guest was before the switchover stopped it, to put it back if the migration does
    not complete: its run state (``None``: the switchover was not reached) and whether it ran."""

    runstate: str | None = None
    stopped_by_us: bool = False


class _Bandwidth:
    """QEMU's bandwidth estimate: bytes over time in windows of at least 100 ms (BUFFER_DELAY);
    until the first window closes it is 0, so only a clean bitmap completes."""

    def __init__(self, sent: int) -> None:
        self.rate = 0.0
        self._start, self._sent = time.monotonic(), sent

    def measure(self, sent: int) -> None:
        """After a round: a new estimate once the window has lasted long enough."""
        now = time.monotonic()
        if now - self._start >= RateLimiter.WINDOW:
            self.rate = (sent - self._sent) / (now - self._start)
            self._start, self._sent = now, sent


class MigrationManager(SourcePostcopy, DestinationPostcopy):
    """The VM's migration state: one outgoing and one incoming side, as in QEMU."""

    def __init__(self, vm: Any, *, named_fds: Callable[[], Any], fdsets: Any,
                 fatal: Callable[[int], None], prog: str) -> None:
        self.vm = vm
        self.dirtyrate = DirtyRate(vm)  # calc-dirty-rate and the vCPU dirty-page limit
        self.config = MigrationConfig(implemented=IMPLEMENTED_CAPABILITIES,
                                      postcopy_unsupported_reason=userfault.unsupported_reason)
        self.named_fds = named_fds
        self.fdsets = fdsets
        self.fatal = fatal  # ends the process with a status (exit-on-error)
        self.prog = prog
        self.status = "none"
        self.in_status = "none"
        self.error_desc: str | None = None
        self._in_thread: threading.Thread | None = None  # the migration-incoming thread
        self._in_connected = False  # a source has connected to the incoming listener
        self.incoming_started = False
        #: QEMU's ``transport_data``: a socket listener of an incoming migration is up (multifd and
        #: postcopy-preempt can no longer be switched on); cleared when that migration ends
        self.incoming_listening = False
        self.socket_addresses: list[dict[str, Any]] = []
        self.stats: dict[str, Any] = {}
        self.start_time = self.setup_time = self.downtime = self.end_time = 0.0
        self._channel: Any = None
        self._multifd: MultifdSender | None = None
        #: the ``migration.multifd-flush-after-each-section`` property (-global): sync multifd at
        #: every RAM EOS as 7.2 does, instead of once per round with MULTIFD_FLUSH records
        self.flush_after_each_section = False
        self._cancel = threading.Event()
        self._continue = threading.Event()  # migrate-continue in pre-switchover
        self._xbzrle: Any = None  # the XBZRLE cache of the current outgoing migration
        self._stop_bytes: int | None = None  # bytes sent when the VM stopped for the last pass
        self._rates_at = 0.0
        self.autoconverge = AutoConverge(self.config.parameter, lambda: self.config.capability("auto-converge"))
        self._lock = threading.Lock()
        self.sync_count = 0
        self._init_postcopy_source()
        self._init_postcopy_destination()

    # ---- events
    def _set(self, status: str, incoming: bool = False) -> None:
        if incoming:
            self.in_status = status
        else:
            self.status = status
        if self.config.capability("events"):
            self.vm.emit("MIGRATION", {"status": status})

    def _pass(self, n: int) -> None:
        if self.config.capability("events"):
            self.vm.emit("MIGRATION_PASS", {"pass": n})

    # ---- outgoing
    def migrate(self, addr: MigrationAddress) -> None:
        """QMP ``migrate`` after the address preamble: checks, then the run on its own thread."""
        with self._lock:
            if self.status in ACTIVE:
                raise MigrationError("There's a migration process in progress")
            if self.vm.runstate == "inmigrate":
                raise MigrationError("Guest is waiting for an incoming migration")
            if self.vm.runstate == "postmigrate":
                raise MigrationError("Can't migrate the vm that was paused due to previous migration")
            if self.config.capability("mapped-ram"):
                raise MigrationError(MAPPED_RAM_UNSUPPORTED)
            self.error_desc = None
            self.stats = {}
            self._cancel.clear()
            self._continue.clear()
            self.autoconverge.reset()
            self._xbzrle = None
            self._stop_bytes = None
            self._start_postcopy.clear()
            self._pause_requested = False
            self._requests = PageRequests()
            self._postcopy_bytes = 0
            self._addr = addr
            self._preempt = None
            self._resume_channels = queue.Queue()  # nothing of an earlier migration's resume
            self._rates_at = time.monotonic()
            self.start_time = time.monotonic()
            self._set("setup")
        if _is_stream_socket(addr):
            # QEMU connects these asynchronously: migrate succeeds, a failure shows up as "failed"
            self._spawn("migration", self._connect_and_run, addr)
            return
        try:
            channel = self._open(addr)
        except TransportError as e:
            self.error_desc = str(e)
            self._set("failed")
            raise MigrationError(str(e)) from None
        self._channel = channel
        self._spawn("migration", self._start_outgoing, addr, channel)

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        """Runs a migration thread that can never leave its side hanging: an exception that its
        own handling missed ends that side ``failed`` with the error (and, incoming, exits as
        ``exit-on-error`` says)."""
        incoming = name == "migration-incoming"

        def guarded() -> None:
            try:
                target(*args)
            except Exception as e:  # noqa: BLE001 - reported, and the migration ends
                sys.stderr.write(f"{self.prog}: {name}: unexpected {type(e).__name__}: {e}\n")
                if incoming:
                    if self.in_status not in ("completed", "failed"):
                        self.incoming_listening = False
                        self._incoming_failed([f"load of migration failed: {e}"], args[-1])
                elif self.status in ACTIVE:
                    self._throttle_stop()
                    self.error_desc = str(e)
                    self._set("failed")

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        if incoming:
            self._in_thread = thread
        thread.start()

    def settle_incoming(self, timeout: float) -> None:
        """Before a signal ends the process: an incoming migration whose source has connected
        gets up to ``timeout`` seconds to finish what already reached it. A load that the source
        has already broken (a TLS handshake it refused, a closed stream) then fails as it would
        have a moment later, with exit-on-error's status 1, instead of the signal's 0: QEMU, being
        quicker, has always exited by then. A load still waiting for its source is cut short."""
        thread = self._in_thread
        if thread is None or not self._in_connected or self.in_status not in ("setup", "active"):
            return
        thread.join(timeout)

    def _warn(self, message: str) -> None:
        """A transport's warning on stderr, as QEMU's warn_report."""
        sys.stderr.write(f"{self.prog}: warning: {message}\n")

    def _open(self, addr: MigrationAddress) -> Any:
        return open_outgoing(addr, named_fds=self.named_fds(), fdsets=self.fdsets, warn=self._warn)

    def _connect_and_run(self, addr: MigrationAddress) -> None:
        try:
            channel = self._open(addr)
        except TransportError as e:
            if self._cancel.is_set():
                self._set("cancelled")
            else:
                self.error_desc = str(e)
                self._set("failed")
            return
        self._start_outgoing(addr, channel)

    def _start_outgoing(self, addr: MigrationAddress, channel: Any) -> None:
        """The connected main channel: TLS if asked for, the multifd channels, then precopy."""
        self._channel = channel
        if self._cancel.is_set():
            channel.close()
            self._set("cancelled")
            return
        multifd = None
        try:
            channel = self._channel = self._secure(channel, addr)
            if self.config.capability("multifd"):
                multifd = self._open_multifd(addr)
        except TransportError as e:
            self._channel.close()
            if not self._cancel.is_set():
                self.error_desc = str(e)
            self._set("cancelled" if self._cancel.is_set() else "failed")
            return
        self._run_outgoing(channel, multifd)

    def _secure(self, channel: Any, addr: MigrationAddress) -> Any:
        """QEMU's migration_tls_channel_connect: with ``tls-creds`` set, the TLS handshake as a
        client, checking the server against ``tls-hostname`` or else the URI's host (inet only);
        the plaintext channel on success, ``TransportError`` with QEMU's text otherwise."""
        if not self.config.tls_enabled:
            return channel
        _, creds = self._tls_creds(channel, "client")
        hostname = self.config.parameter("tls-hostname") or None
        if hostname is None and isinstance(addr, Socket) and isinstance(addr.socket, Inet):
            hostname = addr.socket.host
        return tls_upgrade(channel, creds, hostname=hostname)

    def _tls_creds(self, channel: Any, endpoint: str) -> tuple[Any, Any]:
        """The object registry and the ``tls-creds`` object for ``endpoint`` (QEMU's
        migration_tls_get_creds); on failure ``channel`` is closed and ``TransportError`` raised."""
        from emu.tls import TlsError, get_tls_creds, objects_registry

        registry = objects_registry(self.vm.machine.root)
        try:
            return registry, get_tls_creds(registry, self.config.parameter("tls-creds"), endpoint)
        except TlsError as e:
            channel.close()
            raise TransportError(str(e)) from None

    def _open_multifd(self, addr: MigrationAddress) -> MultifdSender:
        """The multifd channels: ``multifd-channels`` more connections to the same address, each
        announcing itself with an init packet carrying this VM's uuid."""
        channels: list[Any] = []
        try:
            for _ in range(self.config.parameter("multifd-channels")):
                channels.append(self._secure(self._open(addr), addr))
        except TransportError:
            for c in channels:
                c.close()
            raise
        method = self.config.parameter("multifd-compression")
        level = self.config.parameter(f"multifd-{method}-level") if method in ("zlib", "zstd") else 0
        self._multifd = MultifdSender(channels, self._uuid_bytes() or bytes(16), method, level)
        return self._multifd

    def _run_outgoing(self, channel: Any, multifd: MultifdSender | None = None) -> None:
        """The migration thread's run on a connected channel: setup, precopy rounds, switchover;
        it ends ``completed``, ``cancelled`` or ``failed`` (the guest then as it was)."""
        guest = _GuestBefore()
        try:
            saver = self._setup_outgoing(channel, multifd)
            unsent = self._precopy_rounds(saver, channel)
            if self._start_postcopy.is_set() and self.config.capability("postcopy-ram"):
                self._run_postcopy(saver, unsent, guest)
            else:
                self._switchover(saver, unsent, guest)
        except MigrationCancelled:
            self._end_incomplete(guest)
            self._set("cancelled")
        except Exception as e:  # noqa: BLE001 - whatever went wrong, the migration must end failed
            if not isinstance(e, (TransportError, OSError, StreamError, MigrationSetupError, MultifdError)):
                sys.stderr.write(f"{self.prog}: migration: unexpected {type(e).__name__}: {e}\n")
            self._end_incomplete(guest)
            if self._cancel.is_set():  # an I/O error caused by cancel's shutdown of the channels
                self._set("cancelled")
            else:
                self.error_desc = str(e)
                self._set("failed")
        finally:
            if self._channel is not None and self._channel is not channel:  # a resumed postcopy's
                self._channel.close()
            self._close_preempt(abort=self.status != "completed")
            self._close_outgoing(channel, multifd)

    def _check_cancelled(self) -> None:
        """Raises :class:`MigrationCancelled` once ``migrate_cancel`` has been asked for."""
        if self._cancel.is_set():
            raise MigrationCancelled()

    def _xbzrle_cache(self) -> Any:
        """QEMU's xbzrle_init: the page cache for this migration when the capability is on."""
        if not self.config.capability("xbzrle"):
            return None
        from emu.migration.xbzrle import XbzrleCache, XbzrleError

        try:
            return XbzrleCache(self.config.parameter("xbzrle-cache-size"))
        except (MemoryError, XbzrleError):
            raise MigrationSetupError("Failed to allocate page cache") from None

    def _setup_outgoing(self, channel: Any, multifd: MultifdSender | None) -> PrecopySaver:
        """The setup stage: the handlers' save_setup, the stream's header and RAM START, the first
        sync; then ``active``, with the RAM statistics already there (QEMU's tests poll them)."""
        machine = self.vm.machine
        machine.migration_setup("save-setup")  # each handler's save_setup, before any byte goes out
        uuid = self._uuid_bytes() if self.config.capability("validate-uuid") else None
        self._xbzrle = xbzrle = self._xbzrle_cache()
        self._open_return_path(channel)
        saver = PrecopySaver(StreamWriter(ChannelSink(channel)), machine.ram_blocks, machine.name, uuid, multifd,
                             self.config.parameter("zero-page-detection"), self.flush_after_each_section,
                             xbzrle, channel.send_page_records)
        saver.start(self._preamble())
        self.setup_time = time.monotonic()
        self.sync_count = 1
        self._throttle_check(0, saver)  # the setup sync starts the first measuring period
        self._pass(1)  # the setup sync: every page is dirty for the bulk round
        self._update_stats(saver, remaining=sum(b.used_length for b in machine.ram_blocks))
        self._set("active")
        return saver

    def _precopy_rounds(self, saver: PrecopySaver, channel: Any) -> dict[Any, Any] | None:
        """Rounds of dirty pages within the bandwidth limit while the guest runs, until what is
        left fits the downtime limit; returns those pages, synced but not yet sent (``None`` when
        the guest was stopped: a round then leaves nothing dirty)."""
        limiter = RateLimiter(self.config.parameter("max-bandwidth"), self._cancel.is_set, channel.peer_gone)
        dirty = PrecopySaver.all_pages(self.vm.machine.ram_blocks)
        bandwidth = _Bandwidth(saver.bytes_sent)

        postcopy = bool(self.config.capability("postcopy-ram"))

        def progress(sent: int) -> bool:
            """After each chunk: the rate limit, and live counters (QEMU's tests poll them); true
            once postcopy is to start, which ends the round where it is."""
            if postcopy and self._start_postcopy.is_set():
                return True
            limiter(sent)
            self._update_stats(saver, self.stats.get("remaining", 0))
            return postcopy and self._start_postcopy.is_set()

        while True:
            self._check_cancelled()
            limiter.limit = self.config.parameter("max-bandwidth")
            limiter.reset_round()
            saver.generation = self.sync_count
            saver.send_pages(dirty, QEMU_VM_SECTION_PART, progress, limiter.chunk_pages)
            if postcopy and self._start_postcopy.is_set():
                return dirty  # what this round had left: the switch adds what changed since
            saver.xbzrle_started = True  # a round is complete: XBZRLE from now on
            bandwidth.measure(saver.bytes_sent)
            self._update_stats(saver, remaining=0)
            if not self.vm.running:
                return None  # a stopped guest dirties nothing: straight to completion
            dirty = saver.sync()
            self.sync_count += 1
            remaining = _count_pages(dirty) * PAGE
            self._throttle_check(remaining // PAGE, saver)
            self._pass(self.sync_count)
            self._update_stats(saver, remaining)
            downtime_limit = self.config.parameter("downtime-limit") / 1000
            if remaining == 0 or remaining <= bandwidth.rate * downtime_limit:
                return dirty

    def _switchover(self, saver: PrecopySaver, unsent: dict[Any, Any] | None, guest: _GuestBefore) -> None:
        """Stop and copy: the guest stops (``guest`` records how it was), what is still dirty goes
        out with the devices' state, and the migration completes."""
        was_running = self.vm.running
        guest.runstate = old_state = self.vm.runstate
        stop_at = time.monotonic()
        self._stop_bytes = saver.bytes_sent  # what goes out from here on is downtime-bytes
        self.vm.set_runstate("finish-migrate")  # QEMU's migration_stop_vm
        guest.stopped_by_us = was_running
        self._maybe_pause()  # before the last sync: what changes while paused still goes out
        final = saver.sync()
        self.sync_count += 1
        saver.generation = self.sync_count
        self._pass(self.sync_count)
        if unsent is not None:
            final = {b: final[b] | unsent[b] for b in final}
        devices = self.vm.machine.migration_entries(saving=True)
        saver.finish(final, devices, "running" if was_running else old_state)
        self._await_return_path()
        self._check_cancelled()
        self.downtime = time.monotonic() - stop_at
        self._update_stats(saver, remaining=0)
        self.end_time = time.monotonic()
        self._throttle_stop()
        self.vm.set_runstate("postmigrate")
        self._set("completed")

    def _end_incomplete(self, guest: _GuestBefore) -> None:
        """As QEMU's migrate_fd_cleanup: a migration that did not complete leaves the guest as it
        was, at full speed."""
        self._throttle_stop()
        if guest.stopped_by_us:
            self.vm.cont()
        elif guest.runstate is not None and self.vm.runstate == "finish-migrate":
            self.vm.set_runstate(guest.runstate)

    def _close_outgoing(self, channel: Any, multifd: MultifdSender | None) -> None:
        """Whatever the outcome: the multifd channels (aborted unless completed) and the main one."""
        if multifd is not None:
            if self.status != "completed":
                multifd.shutdown()
            multifd.close()
            self._multifd = None
        try:
            channel.close()
        except Exception:  # noqa: BLE001 - closing a broken channel must not mask the result
            pass
        self._channel = None

    def _throttle_check(self, new_dirty_pages: int, saver: PrecopySaver) -> None:
        """After a bitmap sync: auto-converge may throttle the vCPU down (QEMU's
        migration_trigger_throttle)."""
        now = time.monotonic()
        pct = self.autoconverge.on_sync(now, new_dirty_pages, saver.bytes_sent)
        if saver.xbzrle is not None and now - self._rates_at >= 1.0:  # migration_update_rates' period
            saver.xbzrle.update_rates()
            self._rates_at = now
        vcpu = self.vm.vcpu
        if pct is not None and vcpu is not None:
            vcpu.set_throttle(pct)

    def _throttle_stop(self) -> None:
        """cpu_throttle_stop: whatever the outcome, the guest runs at full speed again."""
        self.autoconverge.reset()
        if self.vm.vcpu is not None:
            self.vm.vcpu.set_throttle(0)

    def _maybe_pause(self) -> None:
        """pause-before-switchover: with the VM stopped, wait in pre-switchover for
        ``migrate-continue``, then go on in ``device`` (QEMU's migration_maybe_pause)."""
        if not self.config.capability("pause-before-switchover") or self._cancel.is_set():
            return
        self._set("pre-switchover")
        while not self._continue.wait(0.1):
            self._check_cancelled()
        self._continue.clear()
        self._set("device")

    def continue_from(self, state: str) -> None:
        """``migrate-continue``: releases a migration paused in ``state``."""
        if self.status != state:
            raise MigrationError(f"Migration not in expected state: {self.status}")
        self._continue.set()

    def _uuid_bytes(self) -> bytes | None:
        """The VM's -uuid as 16 raw bytes (None when it was not given)."""
        import uuid

        return uuid.UUID(self.vm.uuid).bytes if self.vm.uuid else None

    def _update_stats(self, saver: PrecopySaver, remaining: int) -> None:
        normal, zero = saver.sent_normal, saver.sent_zero
        multifd = saver.multifd.bytes_sent if saver.multifd is not None else 0
        self._record({"bytes": saver.bytes_sent, "normal_pages": normal, "zero_pages": zero,
                      "multifd_bytes": multifd})
        self.stats["remaining"] = remaining
        self.stats["dirty-sync-count"] = self.sync_count

    def _record(self, counts: dict[str, Any]) -> None:
        total = sum(b.size for b in self.vm.machine.ram_blocks)
        elapsed = max(time.monotonic() - self.setup_time, 1e-6)
        transferred = int(counts.get("bytes", 0))
        normal = int(counts.get("normal_pages", 0))
        self.stats = {
            "transferred": transferred, "remaining": 0, "total": total,
            "duplicate": int(counts.get("zero_pages", 0)), "normal": normal, "normal-bytes": normal * PAGE,
            "dirty-pages-rate": self.autoconverge.dirty_pages_rate, "mbps": transferred * 8 / 1e6 / elapsed,
            "dirty-sync-count": self.sync_count,
            "postcopy-requests": self._requests.count, "page-size": PAGE,
            "multifd-bytes": int(counts.get("multifd_bytes", 0)),
            "pages-per-second": int((normal + int(counts.get("zero_pages", 0))) / elapsed),
            # precopy-bytes: sent while the guest ran; downtime-bytes: sent while it was stopped
            "precopy-bytes": transferred if self._stop_bytes is None else self._stop_bytes,
            "downtime-bytes": 0 if self._stop_bytes is None else transferred - self._stop_bytes,
            "postcopy-bytes": self._postcopy_bytes,
            "dirty-sync-missed-zero-copy": 0,
        }

    def cancel(self) -> None:
        """``migrate_cancel``: always succeeds; a running migration goes cancelling, cancelled."""
        if self.status in ACTIVE and self.status != "cancelling":
            self._cancel.set()
            self._set("cancelling")
            channel = self._channel
            if channel is not None:
                channel.shutdown()
            multifd = self._multifd
            if multifd is not None:
                multifd.shutdown()

    # ---- incoming
    def incoming(self, addr: MigrationAddress, exit_on_error: bool = True) -> None:
        """``migrate-incoming`` (and ``-incoming URI``): listen, then load on a thread."""
        if self.incoming_started:
            raise MigrationError("The incoming migration has already been started")
        if self.vm.runstate != "inmigrate":
            raise MigrationError("'-incoming' was not specified on the command line")
        if self.config.capability("mapped-ram"):
            raise MigrationError(MAPPED_RAM_UNSUPPORTED)
        try:
            # QEMU's listen queue: 1, or the multifd channel count (the main channel comes too)
            backlog = self.config.parameter("multifd-channels") if self.config.capability("multifd") else 1
            listener = listen_incoming(addr, named_fds=self.named_fds(), fdsets=self.fdsets, backlog=backlog,
                                       warn=self._warn)
        except TransportError as e:
            raise MigrationError(str(e)) from None
        self.incoming_started = True
        self.incoming_listening = _is_stream_socket(addr)
        self.socket_addresses = listener.socket_address()
        self._set("setup", incoming=True)
        self._spawn("migration-incoming", self._run_incoming, listener, exit_on_error)

    def _run_incoming(self, listener: Listener, exit_on_error: bool) -> None:
        machine = self.vm.machine
        receiver: MultifdReceiver | None = None
        prefix = b""
        try:
            channel = self._accept(listener)
            if self.config.capability("multifd"):
                channel, prefix, receiver = self._accept_multifd(listener, channel)
        except (TransportError, MultifdError) as e:
            listener.close()
            self.incoming_listening = False
            self._incoming_failed([str(e)], exit_on_error)
            return
        preempt = self.config.capability("postcopy-ram") and self.config.capability("postcopy-preempt")
        if not preempt:
            listener.close()
        self._set("active", incoming=True)
        devices = machine.migration_entries(saving=False)
        self._in_channel = channel
        self._in_reader = reader = StreamReader(channel, prefix=prefix, prefetch=True)
        rp = self._incoming_return_path(channel)
        postcopy = self._incoming_postcopy(devices)
        if preempt and postcopy is not None:
            self._accept_preempt(listener, postcopy)  # closes the listener when it has it
        if receiver is not None:
            # a failed multifd channel ends the whole load (multifd_recv_terminate_threads): the
            # main stream is shut down too, so nothing waits on data that will not come
            receiver.on_error = channel.shutdown
        try:
            machine.migration_setup("load-setup")
            result = load_stream(reader, {b.name: b for b in machine.ram_blocks}, devices, machine.name,
                                 autostart=self.vm.autostart, uuid=self._uuid_bytes(), multifd=receiver,
                                 return_path=rp, postcopy=postcopy)
        except Exception as e:  # noqa: BLE001 - every failure ends the load with its message
            self._send_shut(rp, failed=True)
            self._close_incoming_stream()
            if receiver is not None and receiver.error is not None:
                self._incoming_failed([receiver.error, "load of migration failed: Input/output error"],
                                      exit_on_error, desc=receiver.error)
            elif isinstance(e, StreamError):
                self._incoming_failed(e.messages, exit_on_error)
            else:
                self._incoming_failed([f"load of migration failed: {e}"], exit_on_error)
            return
        finally:
            if preempt:
                listener.close()
            if postcopy is not None:
                postcopy.close()
            if receiver is not None:
                receiver.close()
            self.incoming_listening = False
        for line in result.warnings:
            sys.stderr.write(f"{self.prog}: {line}\n")
        self._incoming_completed(devices, result, rp, postcopy)

    def _incoming_completed(self, devices: list[Any], result: Any, rp: ReturnPathWriter | None,
                            postcopy: PostcopyIncoming | None) -> None:
        """The load ended well: the devices' state in and the run state entered (a postcopy
        destination did both at RUN), ``completed``, then SHUT on the return path (the source
        completes on it) and the channel closed."""
        missing = postcopy.missing_pages() if postcopy is not None and postcopy.state >= PS_LISTENING else 0
        if missing:  # cannot happen with a source that sent every page; said, not hidden: they read as zero
            self._warn(f"postcopy completed with {missing} pages never received")
        if postcopy is None or postcopy.state < PS_LISTENING:
            with self.vm.lock:
                self.vm.machine.migration_loaded(devices)
            self.vm.finish_incoming(result.runstate)  # run state first, then completed, as QEMU's bottom half
        self._set("completed", incoming=True)
        self._send_shut(rp, failed=False)
        reader, channel = self._in_reader, self._in_channel
        if rp is not None and reader is not None:
            # the source closes once it has SHUT; a TLS channel shut down before that could drop it
            reader.wait_end(5.0)
        if channel is not None:
            channel.close()
        if reader is not None:
            reader.close()
        preempt, self._in_preempt = self._in_preempt, None
        if preempt is not None:
            preempt.shutdown()  # its thread closes it

    def _send_shut(self, rp: ReturnPathWriter | None, failed: bool) -> None:
        if rp is not None:
            rp.shut(failed)  # a source that is gone does not need to hear it (the writer keeps the error)

    def _accept(self, listener: Listener) -> Any:
        """The next incoming channel, through the TLS handshake when ``tls-creds`` is set (QEMU's
        migration_tls_channel_process_incoming): a connection whose handshake or credential
        check fails is reported and dropped, and a socket listener waits for the next one, as
        QEMU keeps listening."""
        while True:
            channel = listener.accept()
            self._in_connected = True
            if not self.config.tls_enabled:
                return channel
            try:
                registry, creds = self._tls_creds(channel, "server")
                return tls_upgrade(channel, creds, authz=self.config.parameter("tls-authz") or None,
                                   registry=registry)
            except TransportError as e:
                if not self.incoming_listening:
                    raise
                sys.stderr.write(f"{self.prog}: {e}\n")
                self._in_connected = False  # dropped: listening again

    def _accept_multifd(self, listener: Listener, first: Any) -> tuple[Any, bytes, MultifdReceiver]:
        """Sorts the incoming connections as 8.0+ does, by their first 4 bytes (the main stream's
        magic, else a multifd channel), until the main channel and every multifd channel are in.
        A 7.2 source connects the main channel first, which this also handles."""
        machine = self.vm.machine
        receiver = MultifdReceiver(
            {b.name: b for b in machine.ram_blocks},
            {b.name: bytearray(b.used_length // PAGE) for b in machine.ram_blocks},
            self.config.parameter("multifd-channels"), self._uuid_bytes() or bytes(16),
            self.config.parameter("multifd-compression"), self.flush_after_each_section)
        main: Any = None
        prefix = b""
        chan = first
        count = 0
        # The other connections are accepted on their own thread: with TLS each needs its
        # handshake done while this one waits for a first read (the source sends the main
        # stream only once every multifd channel is up).
        incoming: queue.Queue[Any] = queue.Queue()

        def accept_rest() -> None:
            while True:  # until the listener closes (all channels in, or the load ended)
                try:
                    incoming.put(self._accept(listener))
                except Exception as e:  # noqa: BLE001 - handed to the sorting loop
                    incoming.put(e)
                    return

        threading.Thread(target=accept_rest, name="migration-accept", daemon=True).start()
        try:
            while True:
                try:
                    head = chan.read_exactly(4)
                except TransportError:
                    # a connection that ends before saying what it is (its source gave up, e.g.
                    # on a certificate): QEMU has not started loading yet and keeps waiting
                    chan.close()
                    chan = incoming.get()
                    if isinstance(chan, Exception):
                        raise chan from None
                    continue
                if main is None and int.from_bytes(head, "big") == QEMU_VM_FILE_MAGIC:
                    main, prefix = chan, head
                else:
                    try:
                        receiver.add_channel(chan, head)
                    except MultifdError as e:
                        chan.close()
                        raise MultifdError(f"failed to receive packet via multifd channel {count}: {e}") from None
                    count += 1
                if main is not None and receiver.complete:
                    return main, prefix, receiver
                chan = incoming.get()
                if isinstance(chan, Exception):
                    raise chan
        except BaseException:
            receiver.close()
            if main is not None:
                main.close()
            while not incoming.empty():  # accepted but never sorted
                left = incoming.get()
                if not isinstance(left, Exception):
                    left.close()
            raise

    def _incoming_failed(self, messages: list[str], exit_on_error: bool, desc: str | None = None) -> None:
        """Prints QEMU's lines; ``error-desc`` is ``desc``, else the last line."""
        for line in messages:
            sys.stderr.write(f"{self.prog}: {line}\n")
        self.error_desc = desc or (messages[-1] if messages else "load of migration failed")
        self._set("failed", incoming=True)
        if exit_on_error:
            self.fatal(1)

    # ---- query-migrate
    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {}
        if self.in_status != "none":
            info["status"] = self.in_status
        if self.socket_addresses and self.in_status in ("setup", "active"):
            info["socket-address"] = self.socket_addresses
        status = self.status
        if status != "none":
            info.pop("socket-address", None) if self.in_status == "none" else None
            info["status"] = status
            now = self.end_time if status == "completed" else time.monotonic()
            if status in ACTIVE and status != "setup" or status == "completed":
                info["setup-time"] = int((self.setup_time - self.start_time) * 1000)
                info["total-time"] = int((now - self.start_time) * 1000)
                if status == "completed" or status.startswith("postcopy"):
                    info["downtime"] = int(self.downtime * 1000)
                else:
                    info["expected-downtime"] = 300
                if self.stats:
                    # requests counted live: with the preempt channel they go out between the
                    # background sections that refresh the other statistics
                    info["ram"] = dict(self.stats, **{"postcopy-requests": self._requests.count})
                if self._xbzrle is not None:
                    # QEMU reports the parameter; a running migration keeps the cache it started
                    # with (migrate_params_apply stores the new size before xbzrle_cache_resize,
                    # which then finds nothing to do)
                    info["xbzrle-cache"] = dict(self._xbzrle.query(),
                                                **{"cache-size": self.config.parameter("xbzrle-cache-size")})
                if self.autoconverge.active:
                    info["cpu-throttle-percentage"] = self.autoconverge.percentage
        info.update(self.incoming_postcopy_info())
        if self.error_desc is not None:
            info["error-desc"] = self.error_desc
        return info
