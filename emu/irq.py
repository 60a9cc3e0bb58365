"""IRQ lines and named GPIO lists, as QEMU's qemu_irq and qdev GPIOs.

An input line is an ``IRQ``: setting its level calls its handler. A device's output line is a
``GpioOut`` slot connected to somebody's input ``IRQ``. qtest interception wraps either side.
"""
from __future__ import annotations

from collections.abc import Callable

IrqHandler = Callable[[int, int], None]


class IRQ:
    """An input line: ``set(level)`` calls ``handler(n, level)`` (levels are raw ints, as in QEMU)."""

    __slots__ = ("handler", "n", "name")

    def __init__(self, handler: IrqHandler | None, n: int, name: str = "") -> None:
        self.handler = handler
        self.n = n
        self.name = name

    def set(self, level: int) -> None:
        if self.handler is not None:
            self.handler(self.n, level)

    def raise_(self) -> None:
        self.set(1)

    def lower(self) -> None:
        self.set(0)

    def pulse(self) -> None:
        self.set(1)
        self.set(0)


class GpioOut:
    """An output line: forwards levels to the connected input IRQ (if any)."""

    __slots__ = ("target", "n")

    def __init__(self, n: int) -> None:
        self.target: IRQ | None = None
        self.n = n

    def connect(self, target: IRQ | None) -> None:
        self.target = target

    def set(self, level: int) -> None:
        if self.target is not None:
            self.target.set(level)

    def raise_(self) -> None:
        self.set(1)

    def lower(self) -> None:
        self.set(0)


UNNAMED_IN = "unnamed-gpio-in"
UNNAMED_OUT = "unnamed-gpio-out"


class GpioMixin:
    """Named GPIO lists for a device. ``None`` is the unnamed list, as in qdev."""

    def _gpio_init(self) -> None:
        self.gpio_in: dict[str | None, list[IRQ]] = {}
        self.gpio_out: dict[str | None, list[GpioOut]] = {}

    def init_gpio_in(self, handler: IrqHandler, count: int, name: str | None = None) -> list[IRQ]:
        lines = self.gpio_in.setdefault(name, [])
        base = len(lines)
        lines.extend(IRQ(handler, base + i, name or "") for i in range(count))
        return lines

    def init_gpio_out(self, count: int, name: str | None = None) -> list[GpioOut]:
        lines = self.gpio_out.setdefault(name, [])
        base = len(lines)
        lines.extend(GpioOut(base + i) for i in range(count))
        return lines

    def get_gpio_in(self, name: str | None, n: int) -> IRQ | None:
        """The input line, or None for an unknown list or index (QEMU asserts there)."""
        lines = self.gpio_in.get(name)
        if lines is None or not 0 <= n < len(lines):
            return None
        return lines[n]
