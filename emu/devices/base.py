"""The device base class: a QOM object with GPIO lists and a reset hook."""
from __future__ import annotations

from typing import TYPE_CHECKING

from emu.irq import GpioMixin
from emu.qom import Property, QObject, QomError, register_type

if TYPE_CHECKING:
    from emu.migration.vmstate import VMStateDescription


class Device(QObject, GpioMixin):
    """Base of every device. Devices know nothing of qtest or QMP."""

    type_name = "device"
    type_parent = "object"
    type_abstract = True

    def __init__(self) -> None:
        QObject.__init__(self)
        self._gpio_init()
        self.realized = True  # devices are created realized (there is no device_add yet)
        self.add_property("realized", "bool", True, writable=False)

    def check_writable(self, prop: Property) -> None:
        if prop.static and self.realized:
            raise QomError(f"Attempt to set property '{prop.name}' on anonymous device (type '{self.type_name}') "
                           "after it was realized")
        super().check_writable(prop)

    def reset(self) -> None:
        """Puts the device in its power-on state (system_reset calls this)."""

    # ---- migration: a device with a VMState description has one section in the stream.
    #: QEMU's VMStateDescription for this device (section name, version, field layout), or None.
    vmsd: VMStateDescription | None = None

    def vmstate_id(self) -> tuple[str, int]:
        """The section's (idstr, instance_id); ISA devices use the vmsd name and instance 0."""
        assert self.vmsd is not None
        return self.vmsd.name, 0

    def save_vmstate(self) -> dict:
        """The field values of ``vmsd`` (field name -> int or bytes) as the device is now."""
        raise NotImplementedError(self.type_name)

    def load_vmstate(self, state: dict) -> None:
        """Takes over the state ``save_vmstate`` produced (called after RAM has loaded)."""
        raise NotImplementedError(self.type_name)

    def vmstate_sections(self, saving: bool = True) -> list[tuple[str, int, VMStateDescription, dict]]:
        """Every migration section of this device in stream order: (idstr, instance_id, vmsd,
        state), state empty when not saving. One from ``vmsd`` by default; a device modelling
        several QEMU devices (the i8259 pair, the i8042 with its PS/2 devices) lists several."""
        if self.vmsd is None:
            return []
        idstr, instance = self.vmstate_id()
        return [(idstr, instance, self.vmsd, self.save_vmstate() if saving else {})]

    def load_vmstate_sections(self, states: dict[tuple[str, int], dict]) -> None:
        """Takes over the loaded sections of ``vmstate_sections`` (those the stream carried)."""
        state = states.get(self.vmstate_id()) if self.vmsd is not None else None
        if state:
            self.load_vmstate(state)


# Abstract intermediate types of the devices we model (QEMU's hierarchy).
for _name, _parent in (("sys-bus-device", "device"), ("isa-device", "device"), ("pci-host-bridge", "sys-bus-device"),
                       ("ioapic-common", "sys-bus-device"), ("cpu", "device"), ("x86_64-cpu", "cpu")):
    register_type(_name, _parent, abstract=True)
