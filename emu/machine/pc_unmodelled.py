"""Sections of QEMU 7.2's ``pc`` stream whose devices this emulator does not model.

QEMU's pc has a local APIC per CPU (``apic``), the vapic TPR-patching device (``kvm-tpr-opt``)
and the VMware mouse (``vmmouse``); none exists here. A stream from QEMU carries their sections,
and the loader must know a section to go past it. So each is described with its exact size, and
loads only when it holds the device's reset state, byte for byte: that is the state the devices are
in on a machine no guest ran on (a qtest-driven ``-S`` machine), and the state they would be in
here. Anything else (a guest programmed the APIC, say) fails the migration with a clear error
rather than being dropped. None is ever sent: QEMU keeps a device's reset state when the stream
has no section for it.
"""
from __future__ import annotations

import struct

from emu.migration.vmstate import Field, LoadContext, SaveStateEntry, VMStateDescription

EINVAL = 22
APIC_LVT_NB = 6
APIC_LVT_MASKED = 1 << 16

#: apic_reset_common + apic_reset for the BSP (vmstate_apic_common, version 3): APIC base MSR
#: 0xfee00000 enabled with the BSP bit, spurious vector 0xff, flat destination model, every LVT
#: masked, no timer (timer_expiry -1)
APIC_RESET = (struct.pack(">IBBBIBB", 0xFEE00900, 0, 0, 0, 0xFF, 0, 0x0F) + bytes(96)
              + struct.pack(f">{APIC_LVT_NB}I", *[APIC_LVT_MASKED] * APIC_LVT_NB)
              + struct.pack(">IIIIiIqqq", 0, 0, 0, 0, 0, 0, 0, 0, -1))
#: vmstate_vapic: the guest ROM state (124 bytes) and five u32s, all zero until the vapic
#: option ROM runs
VAPIC_RESET = bytes(144)
VMMOUSE_QUEUE_SIZE = 1024
#: vmstate_vmmouse: queue_size (INT32_EQUAL), the queue, nb_queue, status 0xffff (disabled), absolute
VMMOUSE_RESET = (struct.pack(">i", VMMOUSE_QUEUE_SIZE) + bytes(4 * VMMOUSE_QUEUE_SIZE)
                 + struct.pack(">HHB", 0, 0xFFFF, 0))

_WHAT = {"apic": "the local APIC", "kvm-tpr-opt": "the vapic (TPR patching) device",
         "vmmouse": "the VMware mouse"}


def _reset_only(name: str, version: int, reset: bytes,
                subsections: list[VMStateDescription] | None = None) -> VMStateDescription:
    def post_load(state: dict, version_id: int, ctx: LoadContext) -> int:
        if bytes(state["state"]) != reset or any(k.startswith("sub.") for k in state):
            ctx.error(f"{name}: {_WHAT[name]} is not modelled by this emulator: only its reset "
                      "state can be loaded")
            return -EINVAL
        return 0
    return VMStateDescription(name=name, version_id=version, minimum_version_id=version,
                              fields=[Field("state", "buffer", len(reset))],
                              subsections=subsections or [], post_load=post_load)


# vmstate_apic_common_sipi: only an AP waiting for its SIPI sends it (never a reset BSP)
_APIC_SIPI = VMStateDescription(name="apic_sipi", version_id=1, minimum_version_id=1,
                                fields=[Field("sub.sipi_vector", "int32"), Field("sub.wait_for_sipi", "int32")],
                                needed=lambda state: False)

SECTIONS = (
    _reset_only("apic", 3, APIC_RESET, [_APIC_SIPI]),
    _reset_only("kvm-tpr-opt", 1, VAPIC_RESET),
    _reset_only("vmmouse", 0, VMMOUSE_RESET),
)


def load_entries() -> list[SaveStateEntry]:
    """Handlers for an incoming stream (instance 0 of each: one CPU, one APIC)."""
    return [SaveStateEntry(vmsd.name, 0, vmsd, {}) for vmsd in SECTIONS]
