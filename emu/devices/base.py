"""The device base class: a QOM object with GPIO lists and a reset hook."""
from __future__ import annotations

from emu.irq import GpioMixin
from emu.qom import Property, QObject, QomError, register_type


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


# Abstract intermediate types of the devices we model (QEMU's hierarchy).
for _name, _parent in (("sys-bus-device", "device"), ("isa-device", "device"), ("pci-host-bridge", "sys-bus-device"),
                       ("ioapic-common", "sys-bus-device"), ("cpu", "device"), ("x86_64-cpu", "cpu")):
    register_type(_name, _parent, abstract=True)
