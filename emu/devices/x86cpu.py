"""The x86 CPU as a QOM device (``/machine/unattached/device[0]`` on ``pc``).

It carries the CPU's identity for QMP (``query-cpus-fast``) and its place in the QOM tree; the
instruction-executing vCPU (Unicorn) attaches to it when the TCG accelerator runs one.
"""
from __future__ import annotations

import threading

from emu.devices.base import Device


class X86CPU(Device):
    type_name = "qemu64-x86_64-cpu"
    type_parent = "x86_64-cpu"

    def __init__(self, index: int = 0) -> None:
        super().__init__()
        self.cpu_index = index
        self.apic_id = index
        # The thread that runs this vCPU; until one exists, the main loop's (as QEMU's qtest
        # accelerator reports its dummy vCPU thread).
        self._main_thread_id = threading.get_native_id()
        self.vcpu: object | None = None  # the vCPU (Unicorn or KVM) executing for this CPU
        for prop in ("socket-id", "core-id", "thread-id"):
            self.add_property(prop, "int32", index if prop == "socket-id" else 0, "int32", static=True)
        self.add_property("apic-id", "uint32", index, "uint32", static=True)

    @property
    def thread_id(self) -> int:
        tid = getattr(self.vcpu, "thread_id", None)
        return tid if tid is not None else self._main_thread_id

    def topology(self) -> dict[str, int]:
        """``props`` of query-cpus-fast: one socket, one core, one thread."""
        return {"core-id": self.prop("core-id"), "thread-id": self.prop("thread-id"),
                "socket-id": self.prop("socket-id")}
