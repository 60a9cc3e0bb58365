"""QemuOpts syntax: the ``key=value,key=value`` arguments of QEMU's command-line options.

Owns only the lexical rules of QEMU 7.2's ``util/qemu-option.c`` (``opts_do_parse``), shared by
every option parser (``-device``, ``-rtc``, ``-action``, ``-chardev``...): ``,,`` is a literal
comma, a trailing comma ends the argument instead of opening an empty item, an item without
``=`` is a short-form boolean (``foo`` is ``foo=on``, ``nofoo`` is ``foo=off``) unless it is the
first item of an option with an implied key. What the keys mean stays with each option.
Imports nothing from the emulator.
"""
from __future__ import annotations

from dataclasses import dataclass

#: Items that ask for help instead of setting a key (no deprecation warning for them).
HELP_ITEMS = ("help", "?")


@dataclass(frozen=True)
class OptItem:
    """One parsed item: ``bare`` marks a short-form boolean (``foo``/``nofoo``)."""

    key: str
    value: str
    bare: bool = False

    @property
    def is_help(self) -> bool:
        return self.bare and self.value == "on" and self.key in HELP_ITEMS

    def deprecation(self) -> tuple[str, str] | None:
        """QEMU's warning and hint for a short-form boolean (None for ``key=value`` and help)."""
        if not self.bare or self.is_help:
            return None
        shown = self.key if self.value == "on" else "no" + self.key
        return (f"short-form boolean option '{shown}' deprecated", f"Please use {self.key}={self.value} instead")


def split_items(text: str) -> list[str]:
    """The comma-separated items of one option argument, ``,,`` unescaped to ``,``."""
    items: list[str] = []
    pos = 0
    while pos < len(text):
        cur: list[str] = []
        while pos < len(text):
            if text[pos] == ",":
                if text[pos + 1:pos + 2] != ",":
                    break
                pos += 1  # the second comma of ",," is the literal one
            cur.append(text[pos])
            pos += 1
        items.append("".join(cur))
        pos += 1  # the separating comma
    return items


def parse_items(text: str, implied: str | None = None) -> list[OptItem]:
    """The items of ``text``; a first item without ``=`` is the value of ``implied`` when given."""
    out: list[OptItem] = []
    for n, item in enumerate(split_items(text)):
        key, eq, value = item.partition("=")
        if eq:
            out.append(OptItem(key, value))
        elif n == 0 and implied is not None:
            out.append(OptItem(implied, item))
        elif item.startswith("no"):
            out.append(OptItem(item[2:], "off", bare=True))
        else:
            out.append(OptItem(item, "on", bare=True))
    return out
