"""The destination's side of postcopy in the migration manager: the hooks the loader calls at
LISTEN, RUN, a broken stream and POSTCOPY_RESUME, ``migrate-recover`` and ``migrate-pause``.

:class:`DestinationPostcopy` is a mixin of ``emu.migration.manager.MigrationManager``; the page
work (userfaultfd, faults, placement) is ``postcopy_incoming.PostcopyIncoming``'s.
"""
from __future__ import annotations

import queue
import sys
import threading
from typing import Any

from emu.migration.address import MigrationAddress
from emu.migration.errors import MigrationError
from emu.migration.postcopy_incoming import PostcopyIncoming
from emu.migration.return_path import ReturnPathWriter
from emu.migration.stream import StreamReader, load_postcopy_channel
from emu.migration.transport import Listener, TransportError, listen_incoming

__all__ = ["DestinationPostcopy"]


class DestinationPostcopy:
    """Postcopy for the destination (mixed into the migration manager)."""

    # provided by MigrationManager
    vm: Any
    config: Any
    in_status: str
    prog: str
    named_fds: Any
    fdsets: Any

    def _set(self, status: str, incoming: bool = False) -> None:  # the manager's
        raise NotImplementedError

    def _accept(self, listener: Listener) -> Any:  # the manager's
        raise NotImplementedError

    def _warn(self, message: str) -> None:  # the manager's
        raise NotImplementedError

    def _init_postcopy_destination(self) -> None:
        self._in_pc: PostcopyIncoming | None = None
        self._in_rp: ReturnPathWriter | None = None
        self._in_channel: Any = None
        self._in_reader: StreamReader | None = None
        self._recovered: queue.Queue[Any] = queue.Queue()
        self._in_preempt: Any = None  # the preempt channel being read

    def _incoming_return_path(self, channel: Any) -> ReturnPathWriter | None:
        """The return path a destination can offer: the reverse direction of a socket."""
        self._in_rp = ReturnPathWriter(channel) if getattr(channel, "kind", None) == "socket" else None
        return self._in_rp

    def _incoming_postcopy(self, devices: list[Any]) -> PostcopyIncoming | None:
        """The postcopy state of this load when postcopy-ram is on here, wired to the manager."""
        self._in_pc = None
        if not self.config.capability("postcopy-ram"):
            return None
        vm = self.vm
        pc = PostcopyIncoming(vm.machine.ram_blocks,
                              vcpu_thread_id=lambda: vm.vcpu.thread_id if vm.vcpu is not None else None,
                              blocktime=bool(self.config.capability("postcopy-blocktime")))
        pc.on_listen = lambda: self._set("postcopy-active", incoming=True)
        pc.on_run = lambda: self._postcopy_run(devices)
        pc.on_pause = self._incoming_paused
        pc.on_resume = lambda: self._set("postcopy-active", incoming=True)
        self._in_pc = pc
        return pc

    def _postcopy_run(self, devices: list[Any]) -> None:
        """RUN (QEMU's loadvm_postcopy_handle_run_bh): the devices' state goes in, then the VM
        runs if autostart allows it (else it waits paused)."""
        with self.vm.lock:
            self.vm.machine.migration_loaded(devices)
        self.vm.finish_incoming("running")

    def _incoming_paused(self, lines: list[str]) -> StreamReader | None:
        """The stream broke in postcopy: postcopy-paused until ``migrate-recover`` brings a
        channel (QEMU's postcopy_pause_incoming); its reader."""
        for line in lines:
            sys.stderr.write(f"{self.prog}: {line}\n")
        self._close_incoming_stream()
        self._set("postcopy-paused", incoming=True)
        channel = self._recovered.get()
        if channel is None:
            return None
        self._set("postcopy-recover", incoming=True)
        pc = self._in_pc
        if pc is not None:
            pc.recovering = True
        if self._in_rp is not None:
            self._in_rp.new_channel(channel)
        self._in_channel = channel
        self._in_reader = StreamReader(channel, prefetch=True)
        return self._in_reader

    def _close_incoming_stream(self) -> None:
        reader, channel = self._in_reader, self._in_channel
        self._in_reader = self._in_channel = None
        preempt, self._in_preempt = self._in_preempt, None
        if preempt is not None:
            preempt.shutdown()  # its thread closes it
        if reader is not None:
            reader.close()
        if channel is not None:
            channel.shutdown()
            channel.close()

    def recover(self, addr: MigrationAddress) -> None:
        """``migrate-recover``: listen for the channel a resumed source connects."""
        if self.in_status != "postcopy-paused":
            raise MigrationError("Migrate recover can only be run when postcopy is paused.")
        try:
            listener = listen_incoming(addr, named_fds=self.named_fds(), fdsets=self.fdsets, backlog=1,
                                       warn=self._warn)
        except TransportError as e:
            raise MigrationError(str(e)) from None
        # (9.1's postcopy-recover-setup is the source's: the destination stays paused until a
        # channel comes)
        threading.Thread(target=self._accept_recovered, args=(listener,), name="migration-recover",
                         daemon=True).start()

    def _accept_recovered(self, listener: Listener) -> None:
        try:
            channel = self._accept(listener)
        except TransportError as e:
            listener.close()
            sys.stderr.write(f"{self.prog}: {e}\n")
            self._set("postcopy-paused", incoming=True)
            return
        self._recovered.put(channel)
        if self.config.capability("postcopy-preempt") and self._in_pc is not None:
            self._accept_preempt(listener, self._in_pc)  # the resumed source connects it next
        else:
            listener.close()

    def _accept_preempt(self, listener: Listener, pc: PostcopyIncoming) -> None:
        """The postcopy preempt channel: the next connection on ``listener`` (closed then),
        read on a thread of its own (QEMU's postcopy_preempt_thread) until it ends."""
        blocks = {b.name: b for b in self.vm.machine.ram_blocks}

        def run() -> None:
            try:
                channel = self._accept(listener)
            except TransportError:
                return  # the load ended (the listener closed) before the source connected it
            finally:
                listener.close()
            self._in_preempt = channel
            reader = StreamReader(channel, prefetch=True)
            try:
                lines = load_postcopy_channel(reader, blocks, pc)
            finally:
                reader.close()
                channel.close()
            for line in lines:
                sys.stderr.write(f"{self.prog}: {line}\n")

        threading.Thread(target=run, name="postcopy/preempt", daemon=True).start()

    def pause_destination(self) -> bool:
        """``migrate-pause`` on the destination: True if it applied (postcopy-active or -recover)."""
        if self.in_status not in ("postcopy-active", "postcopy-recover"):
            return False
        channel = self._in_channel
        if channel is not None:
            channel.shutdown()
        return True

    def incoming_postcopy_info(self) -> dict[str, Any]:
        """query-migrate's postcopy-blocktime keys on a completed destination with the capability."""
        pc = self._in_pc
        if pc is None or not pc.blocktime_enabled or self.in_status != "completed":
            return {}
        return pc.blocktime_info()
