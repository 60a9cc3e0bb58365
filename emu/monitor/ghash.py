"""Which unexpected QMP argument QEMU reports first: a model of GLib's GHashTable iteration.

QEMU's input visitor copies an object's keys (in QDict order) into a GHashTable, removes each
member as it visits it, and reports the first key a table iteration yields. With several
unexpected keys the choice depends on GLib's hashing, probing, tombstones and in-place resizes,
reproduced here (GLib 2.60+; checked against QEMU 7.2 on Debian bookworm, docs/qmp-facts.md §3.2).
A leaf of the monitor: it imports nothing from ``emu``.
"""
from __future__ import annotations

_PRIME_MOD = (1, 2, 3, 7, 13, 31, 61, 127, 251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071,
              262139, 524287, 1048573, 2097143, 4194301, 8388593, 16777213, 33554393, 67108859, 134217689,
              268435399, 536870909, 1073741789, 2147483647)
_MIN_SHIFT = 3
_UNUSED, _TOMBSTONE = 0, 1
_M32 = 0xFFFFFFFF


def g_str_hash(key: str) -> int:
    h = 5381
    for c in key.encode("utf-8"):
        h = (h * 33 + (c - 256 if c >= 128 else c)) & _M32  # GLib hashes signed chars
    return h if h >= 2 else 2  # 0 and 1 mean unused and tombstone


class _Table:
    def __init__(self) -> None:
        self._set_shift(_MIN_SHIFT)
        self.hashes = [_UNUSED] * self.size
        self.keys: list[str | None] = [None] * self.size
        self.nnodes = self.noccupied = 0

    def _set_shift(self, shift: int) -> None:
        self.size = 1 << shift
        self.mod = _PRIME_MOD[shift]
        self.mask = self.size - 1

    def _index(self, h: int) -> int:
        return ((h * 11) & _M32) % self.mod

    def insert(self, key: str) -> None:
        h = g_str_hash(key)
        i = self._index(h)
        step = 0
        tomb = -1
        while self.hashes[i] != _UNUSED:
            if self.hashes[i] == h and self.keys[i] == key:
                return
            if self.hashes[i] == _TOMBSTONE and tomb < 0:
                tomb = i
            step += 1
            i = (i + step) & self.mask
        if tomb >= 0:
            i = tomb
        was_unused = self.hashes[i] == _UNUSED
        self.hashes[i], self.keys[i] = h, key
        self.nnodes += 1
        if was_unused:
            self.noccupied += 1
            self._maybe_resize()

    def remove(self, key: str) -> None:
        h = g_str_hash(key)
        i = self._index(h)
        step = 0
        while self.hashes[i] != _UNUSED:
            if self.hashes[i] == h and self.keys[i] == key:
                self.hashes[i], self.keys[i] = _TOMBSTONE, None
                self.nnodes -= 1
                self._maybe_resize()
                return
            step += 1
            i = (i + step) & self.mask

    def _maybe_resize(self) -> None:
        if (self.size > self.nnodes * 4 and self.size > 1 << _MIN_SHIFT) or \
                self.size <= self.noccupied + self.noccupied // 16:
            self._resize()

    def _resize(self) -> None:
        old_size = self.size
        self._set_shift(max(int(self.nnodes * 1.333).bit_length(), _MIN_SHIFT))
        if self.size > old_size:
            self.hashes += [_UNUSED] * (self.size - old_size)
            self.keys += [None] * (self.size - old_size)
        relocated = [False] * max(self.size, old_size)
        for i in range(old_size):  # GLib's in-place rehash, evicting entries as it goes
            h = self.hashes[i]
            if h < 2:
                self.hashes[i] = _UNUSED
                continue
            if relocated[i]:
                continue
            self.hashes[i] = _UNUSED
            key = self.keys[i]
            self.keys[i] = None
            while True:
                j = self._index(h)
                step = 0
                while relocated[j]:
                    step += 1
                    j = (j + step) & self.mask
                relocated[j] = True
                replaced_h, replaced_key = self.hashes[j], self.keys[j]
                self.hashes[j], self.keys[j] = h, key
                if replaced_h < 2:
                    break
                h, key = replaced_h, replaced_key
        if self.size < old_size:
            del self.hashes[self.size:]
            del self.keys[self.size:]
        self.noccupied = self.nnodes

    def first(self) -> str | None:
        for h, key in zip(self.hashes, self.keys):
            if h >= 2:
                return key
        return None


def first_unexpected(keys: list[str], visited: list[str]) -> str | None:
    """The key QEMU reports: ``keys`` in QDict order, ``visited`` members in visit order."""
    table = _Table()
    for key in keys:
        table.insert(key)
    for key in visited:
        table.remove(key)
    return table.first()
