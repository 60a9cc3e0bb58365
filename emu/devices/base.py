"""The device base class: a QOM object with GPIO lists and a reset hook."""
from __future__ import annotations

from emu.irq import GpioMixin
from emu.qom import QObject, register_type


class Device(QObject, GpioMixin):
    """Base of every device. Devices know nothing of qtest or QMP."""

    type_name = "device"
    type_parent = "object"
    type_abstract = True

    def __init__(self) -> None:
        QObject.__init__(self)
        self._gpio_init()

    def reset(self) -> None:
        """Puts the device in its power-on state (system_reset calls this)."""


# Abstract intermediate types of the devices we model (QEMU's hierarchy).
for _name, _parent in (("sys-bus-device", "device"), ("isa-device", "device"), ("pci-host-bridge", "sys-bus-device"),
                       ("ioapic-common", "sys-bus-device"), ("cpu", "device"), ("x86_64-cpu", "cpu")):
    register_type(_name, _parent, abstract=True)
