"""The x86 CPU as a QOM device (``/machine/unattached/device[0]`` on ``pc``).

It carries the CPU's identity for QMP (``query-cpus-fast``) and its place in the QOM tree; the
instruction-executing vCPU (Unicorn or KVM) attaches to it when the accelerator runs one.

It migrates as QEMU 7.2 does, in the ``cpu_common`` and ``cpu`` sections
(``emu.devices.x86cpu_vmstate``): from the vCPU's registers when there is one, else from the
fields it holds for the CPU nobody runs (reset values, or what the last load brought), so that a
machine without a vCPU (qtest, ``-S`` without a boot disk) hands on a QEMU stream's CPU unchanged.
"""
from __future__ import annotations

import copy
import threading
from typing import Any

from emu.devices import x86cpu_vmstate as cpu_vmstate
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
        self.vcpu: Any = None  # the vCPU (Unicorn or KVM) executing for this CPU
        #: QEMU's cpu/cpu_common field values: the state of a CPU no vCPU runs, and the fields a
        #: vCPU does not hold (carried from the last load into the next save)
        self.qemu_fields: dict[str, Any] = cpu_vmstate.reset_fields()
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

    def reset(self) -> None:
        self.qemu_fields = cpu_vmstate.reset_fields()

    # ---- migration: QEMU's cpu_common and cpu sections, sharing one fields dict
    def vmstate_sections(self, saving: bool = True) -> list[Any]:
        if not saving:
            fields = cpu_vmstate.reset_fields()  # a field the stream lacks keeps its reset value
        elif self.vcpu is not None:
            fields = cpu_vmstate.to_qemu(self.vcpu.get_state(), base=self.qemu_fields)
        else:
            fields = copy.deepcopy(self.qemu_fields)
        return [(e.idstr, e.instance_id, e.vmsd, e.state) for e in cpu_vmstate.cpu_entries(fields)]

    def load_vmstate_sections(self, states: dict[tuple[str, int], dict]) -> None:
        fields = states.get(("cpu", 0)) or states.get(("cpu_common", 0))
        if not fields:
            return
        self.qemu_fields = fields
        if self.vcpu is not None:
            self.vcpu.set_state(cpu_vmstate.from_qemu(fields)[0])
