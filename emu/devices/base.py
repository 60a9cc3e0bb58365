"""The device base class: a QOM object with GPIO lists and a reset hook."""
from __future__ import annotations

from emu.irq import GpioMixin
from emu.qom import QObject


class Device(QObject, GpioMixin):
    """Base of every device. Devices know nothing of qtest or QMP."""

    type_name = "device"

    def __init__(self) -> None:
        QObject.__init__(self)
        self._gpio_init()

    def reset(self) -> None:
        """Puts the device in its power-on state (system_reset calls this)."""
