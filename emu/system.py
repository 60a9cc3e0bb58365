"""One running emulator process: its parts, its main loop, and how it ends.

``System`` holds what ``emu.assembly`` built from the command line (main loop, VM, chardevs, fd
sets, migration manager, monitors, qtest servers) and runs it until a shutdown is requested. It
knows nothing of ``Config`` or of how the parts were chosen, and must not import ``emu.assembly``
or ``emu.cli``.
"""
from __future__ import annotations

import os
import signal
import sys
from typing import TYPE_CHECKING

from emu.main_loop import MainLoop
from emu.monitor.fds import FdSets
from emu.vm import VM

#: how long a signal's shutdown lets a connected incoming migration finish failing (see
#: MigrationManager.settle_incoming)
SIGNAL_SETTLE_S = 2.0

if TYPE_CHECKING:
    from emu.chardev import Chardev
    from emu.migration.manager import MigrationManager
    from emu.monitor.protocol import QmpServer
    from qtest.server import QTestServer


class System:
    """All the live parts of one emulator process. The assembly fills in the optional parts."""

    def __init__(self, loop: MainLoop, vm: VM, prog: str) -> None:
        self.loop = loop
        self.vm = vm
        self.prog = prog
        self.chardevs: dict[str, Chardev] = {}
        self.fdsets = FdSets()
        self.migration: MigrationManager | None = None
        self.qmp_server: QmpServer | None = None
        self.qtest_servers: list[QTestServer] = []
        #: each -serial's chardev, None for ``-serial none``
        self.serial_chardevs: list[Chardev | None] = []
        self.signal_received: int | None = None

    def _on_signal(self, signum: int) -> None:
        # Runs between two bytecodes of whatever the main thread does: only note it here (a long
        # clock_step checks the flag) and let the loop do the shutdown in a clean state.
        if self.signal_received is None:
            self.signal_received = signum
            self.loop.call_soon_threadsafe(lambda: self.vm.request_shutdown("host-signal"))

    def run(self, pidfile: str | None = None, exit_with_parent: bool = False) -> int:
        """Runs the main loop until shutdown; returns the exit status."""
        self.loop.install_signal_wakeup(self._on_signal)
        if exit_with_parent:
            _set_parent_death_signal()
        if pidfile:
            with open(pidfile, "w") as f:
                f.write(f"{os.getpid()}\n")
        clock = self.vm.machine.clock
        self.loop.timeout_source = clock.host_timeout
        self.loop.on_iteration = clock.run_due
        if self.vm.shutdown_requested is None:
            self.loop.run()
        if self.signal_received is not None and self.migration is not None:
            self.migration.settle_incoming(SIGNAL_SETTLE_S)
        if self.signal_received is not None:
            sys.stderr.write(f"{self.prog}: terminating on signal {self.signal_received}\n")
        self.shutdown()
        return self.vm.exit_code

    def shutdown(self) -> None:
        """Stops the vCPU and closes fds, chardevs and qtest sessions (the main loop stays open)."""
        if self.vm.vcpu is not None:
            self.vm.vcpu.quit()
        self.fdsets.close_all()
        for chardev in self.chardevs.values():
            try:
                chardev.close()
            except OSError:
                pass
        for server in self.qtest_servers:
            server.closed()


def _set_parent_death_signal() -> None:
    """``-run-with exit-with-parent=on``: SIGTERM when the parent dies (Linux prctl)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:
        os.kill(os.getpid(), signal.SIGTERM)
