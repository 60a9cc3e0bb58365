"""Migration stream fuzzer: structure-aware mutations of valid precopy streams, fed to a destination.

This module owns the ``stream`` target of ``python -m qtest.fuzz``: its seeds, its mutator, its
oracles and its reproducers. Seeds are valid streams: QEMU 7.2's ``-M none -m 16M`` stream
(``../shared/vectors/qemu72-none-16M.mig``), streams written by the saver ``migrate`` runs for
``-M none`` and ``-M pc`` (``emu.migration.precopy.PrecopySaver``), and hand-built ones with
PAGE/ZERO/XBZRLE records, configuration subsections, a PACKAGED command and a vmdesc. Each seed is
split, as the loader walks it (``emu.migration.stream.StreamTrace``), into items (header,
configuration, sections, commands, EOF, vmdesc) and fields (section ids, idstrs, versions, RAM
record words with their flags and page offsets, block names, lengths, bodies); a mutation changes
fields, deletes/duplicates/swaps/splices/wraps items, inserts synthetic items, or works on the
bytes (truncation, bit flips, inserted or deleted runs, splices of another seed's tail).

Two ways to run an input:

* in process (default): ``emu.migration.stream.load_stream``, the loader ``-incoming`` and
  ``migrate-incoming`` use, over a bytes reader, into a machine of the input's type (RAM zeroed
  between inputs; a new machine after every successful load, which also applies the device
  state as the destination does). Oracles: no exception but ``StreamError``; messages in QEMU's
  form (one line each, the last ``load of migration failed: <strerror>`` matching the errno);
  a known runstate on success; no load longer than ``--timeout`` (SIGALRM); peak RSS growth
  (VmHWM, reset per input) under ``--max-growth-mib`` plus the input size.
* ``--process`` (or every Nth input with ``--process-every N``): ``BINARY -M none|pc -m 16M
  -display none -nodefaults -incoming file:PATH -qmp stdio``, polled with ``query-migrate``, and
  classified: clean error (exit 1, last stderr line ``load of migration failed: ...``), success
  (``completed``, then ``quit`` exits 0), crash (signal, traceback), hang (no QMP reply or no end
  within ``--timeout``), memory (the child's ``ru_maxrss`` over ``--max-rss-mib``). With a binary
  named ``qemu-*`` the input goes through ``exec:cat PATH`` (QEMU 7.2 has no ``file:``).

Reproducers are ``.mig`` files, minimised by truncation, chunk removal and zeroing while the same
kind of finding persists. Replay: ``python -m qtest.fuzz.stream FILE [--machine none|pc]`` (in
process) or ``emu-system-x86_64 -M none -m 16M -display none -nodefaults -incoming file:FILE``.
"""
from __future__ import annotations

import argparse
import errno
import io
import json
import os
import random
import re
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emu.migration import ram_flags as rf
from qtest.fuzz.common import Finding

__all__ = ["InProcessLoader", "Outcome", "ProcessLoader", "Seed", "StreamTarget", "add_arguments", "build_seeds",
           "fuzz_one_input", "join", "machine_of", "make_target", "mutate", "process_argv", "shrink", "split_stream"]

Field = tuple[str, bytes]  # (kind, bytes): the kinds are those of _INT_WIDTH, "name8" or a blob kind
Item = tuple[Field, ...]  # one top-level stream item

MiB = 1 << 20
PAGE = 4096
RAM_MIB = 16
_HEADER = struct.pack(">II", 0x5145564D, 3)
_REPO = Path(__file__).resolve().parents[2]
_VECTOR_DIRS = (_REPO.parent / "shared" / "vectors", _REPO / "tests" / "vectors")
_INT_WIDTH = {"magic": 4, "version": 4, "len32": 4, "sid": 4, "inst": 4, "ver32": 4, "be32": 4, "be64": 8,
              "ramword": 8, "len16": 2, "cmd16": 2, "type": 1, "footer": 1, "fill": 1, "u8": 1}
_CONT = rf.RAM_SAVE_FLAG_CONTINUE
#: RAM record flags a mutated word takes: every flag, CONTINUE forms, none, and two mixtures
_RAM_FLAGS = (rf.RAM_SAVE_FLAG_ZERO, rf.RAM_SAVE_FLAG_MEM_SIZE, rf.RAM_SAVE_FLAG_PAGE, rf.RAM_SAVE_FLAG_EOS,
              rf.RAM_SAVE_FLAG_ZERO | _CONT, rf.RAM_SAVE_FLAG_PAGE | _CONT, rf.RAM_SAVE_FLAG_XBZRLE,
              rf.RAM_SAVE_FLAG_XBZRLE | _CONT, rf.RAM_SAVE_FLAG_HOOK, rf.RAM_SAVE_FLAG_COMPRESS_PAGE,
              rf.RAM_SAVE_FLAG_MULTIFD_FLUSH, rf.RAM_SAVE_FLAG_FULL, 0, rf.RAM_SAVE_FLAG_ZERO | rf.RAM_SAVE_FLAG_PAGE,
              rf.RAM_SAVE_FLAG_EOS | _CONT)
#: the fuzzer's field kind for each part of a RAM record the loader reports
_RAM_PART_KINDS = {"word": "ramword", "name": "name8", "length": "be64", "fill": "fill", "page": "page",
                   "encoding": "u8", "delta_len": "len16", "delta": "raw"}
_NAMES = (b"ram", b"pc.ram", b"", b"nosuch", b"ram\0junk", b"A" * 255, b"timer", b"globalstate", b"cpu",
          b"mc146818rtc", b"0000:00:01.3/piix4_pm", b"configuration/uuid", b"configuration/bogus", b"\xff\xfe")
_JSON = (b"", b"{", b"{}", b"[]", b'{"page_size": 4096, "devices": 1}', b'{"devices": [{}]}', b"\xff" * 8,
         b'{"page_size": 4096, "devices": [{"name": "timer", "instance_id": 0, "fields": [{"size": -1}]}]}')
#: QEMU's RunState names: the only runstates a successful load may end in
_RUNSTATES = frozenset(("debug", "inmigrate", "internal-error", "io-error", "paused", "postmigrate", "prelaunch",
                        "finish-migrate", "restore-vm", "running", "save-vm", "shutdown", "suspended", "watchdog",
                        "guest-panicked", "colo"))
#: Python-isms that never appear in QEMU's messages
_FOREIGN = ("Traceback", "object at 0x", "bytearray(", "<memory at", "memoryview")


# ================================================================ splitting a stream into fields

def _ram_fields(data: bytes, records: list[Any]) -> list[Field]:
    """The fields of a RAM section body: each record's parts as the loader read them."""
    out: list[Field] = []
    for rec in records:
        pos = rec.offset
        for part, n in rec.parts:
            out.append((_RAM_PART_KINDS[part], data[pos:pos + n]))
            pos += n
    return out


def _config_fields(chunk: bytes) -> list[Field]:
    n = int.from_bytes(chunk[1:5], "big")
    out: list[Field] = [("type", chunk[:1]), ("len32", chunk[1:5]), ("name", chunk[5:5 + n])]
    pos = 5 + n
    while pos < len(chunk):  # subsections: 05, counted name, be32 version, payload
        k = chunk[pos + 1]
        name = chunk[pos + 2:pos + 2 + k]
        out += [("type", chunk[pos:pos + 1]), ("name8", chunk[pos + 1:pos + 2 + k]),
                ("ver32", chunk[pos + 2 + k:pos + 6 + k])]
        pos += 6 + k
        if name == b"configuration/capabilities":
            count = int.from_bytes(chunk[pos:pos + 4], "big")
            out.append(("be32", chunk[pos:pos + 4]))
            pos += 4
            for _ in range(count):
                out.append(("name8", chunk[pos:pos + 1 + chunk[pos]]))
                pos += 1 + chunk[pos]
        else:
            size = 16 if name == b"configuration/uuid" else 4
            out.append(("raw" if size == 16 else "be32", chunk[pos:pos + size]))
            pos += size
    return out


def _item_fields(item: Any, data: bytes) -> list[Field]:
    """One item of a load's trace (an ``emu.migration.stream.StreamItem`` of ``data``) as fields."""
    kind, chunk = item.kind, data[item.offset:item.end]
    if kind == "header":
        return [("magic", chunk[:4]), ("version", chunk[4:8])]
    if kind == "config":
        return _config_fields(chunk)
    if kind in ("START", "FULL", "PART", "END"):
        fields: list[Field] = [("type", chunk[:1]), ("sid", chunk[1:5])]
        pos = 5
        if kind in ("START", "FULL"):
            k = chunk[5]
            fields += [("name8", chunk[5:6 + k]), ("inst", chunk[6 + k:10 + k]), ("ver32", chunk[10 + k:14 + k])]
            pos = 14 + k
        if item.records:  # a RAM section
            fields += _ram_fields(data, item.records)
        else:
            fields.append(("body", chunk[pos:len(chunk) - 5]))
        return fields + [("footer", chunk[-5:-4]), ("sid", chunk[-4:])]
    if kind == "command":
        cmd = int.from_bytes(chunk[1:3], "big")
        payload: Field = ("len32", chunk[5:]) if cmd == 7 else ("raw", chunk[5:])
        return [("type", chunk[:1]), ("cmd16", chunk[1:3]), ("len16", chunk[3:5]), payload]
    if kind == "EOF":
        return [("type", chunk[:1])]
    if kind == "vmdesc":
        return [("type", chunk[:1]), ("len32", chunk[1:5]), ("json", chunk[5:])]
    return [("raw", chunk)]


def split_stream(data: bytes, machine_type: str = "none") -> list[Item]:
    """A valid stream as items of typed fields, as the loader walks it into a new ``machine_type``
    machine (a PACKAGED command's items follow it as items; bytes after the vmdesc are one raw
    item); joining every field gives ``data`` back."""
    from emu.migration.stream import StreamTrace, load_stream

    m = _new_machine(machine_type)
    trace = StreamTrace()
    load_stream(io.BytesIO(data), {b.name: b for b in m.ram_blocks}, m.migration_entries(saving=False), m.name,
                trace=trace)
    items: list[Item] = [tuple(_item_fields(it, data)) for it in trace.items]
    end = trace.items[-1].end
    if end is not None and end < len(data):
        items.append((("raw", data[end:]),))
    assert join(items) == data, "split_stream lost bytes"
    return items


def join(items: list[Item]) -> bytes:
    """The bytes of a list of items."""
    return b"".join(b for item in items for _, b in item)


# ================================================================ seeds

@dataclass
class Seed:
    """A valid stream, split, with the machine type it loads into (``none`` or ``pc``)."""

    name: str
    machine: str
    items: list[Item]


def _be32(v: int) -> bytes:
    return struct.pack(">I", v & 0xFFFFFFFF)


def _be64(v: int) -> bytes:
    return struct.pack(">Q", v & 0xFFFFFFFFFFFFFFFF)


def _counted(s: bytes) -> bytes:
    return bytes((len(s),)) + s


def _section(kind: int, sid: int, body: bytes, idstr: bytes = b"ram", inst: int = 0, ver: int = 4) -> bytes:
    head = bytes((kind,)) + _be32(sid)
    if kind in (1, 4):
        head += _counted(idstr) + _be32(inst) + _be32(ver)
    return head + body + b"\x7e" + _be32(sid)


def _handmade_streams(machine_name: bytes) -> dict[str, bytes]:
    """Streams built as in the vectors README §2.1: PAGE, ZERO (fill 0xab), XBZRLE records, a
    globalstate section, configuration subsections, a PACKAGED command and a vmdesc."""
    pat1 = bytes((i * 7 + 1) & 0xFF for i in range(PAGE))
    pat2 = b"QEMU-EMU" * 512
    eos = _be64(rf.RAM_SAVE_FLAG_EOS)
    mem_size = _be64(RAM_MIB * MiB | rf.RAM_SAVE_FLAG_MEM_SIZE) + _counted(b"ram") + _be64(RAM_MIB * MiB)
    rs = _section(1, 2, mem_size + eos)
    rp = _section(2, 2, _be64(0x1000 | rf.RAM_SAVE_FLAG_PAGE) + _counted(b"ram") + pat1
                  + _be64(0x2000 | rf.RAM_SAVE_FLAG_ZERO | _CONT) + b"\xab"
                  + _be64(0x3000 | rf.RAM_SAVE_FLAG_PAGE | _CONT) + pat2
                  + _be64(0x3000 | rf.RAM_SAVE_FLAG_XBZRLE | _CONT) + b"\x01" + struct.pack(">H", 10)
                  + bytes.fromhex("6404deadbeefb81e0155") + eos)
    re_ = _section(3, 2, eos)
    gs = _section(4, 4, _be32(7) + b"paused".ljust(100, b"\0"), b"globalstate", 0, 1)
    config = b"\x07" + _be32(len(machine_name)) + machine_name
    desc = json.dumps({"page_size": PAGE, "devices": [{"name": "globalstate", "instance_id": 0, "vmsd_name":
                       "globalstate", "version": 1, "fields": [{"name": "size", "type": "uint32", "size": 4},
                                                               {"name": "runstate", "type": "buffer", "size": 100}]}]})
    vmdesc = b"\x06" + _be32(len(desc)) + desc.encode()
    subs = (b"\x05" + _counted(b"configuration/uuid") + _be32(1) + bytes(range(16))
            + b"\x05" + _counted(b"configuration/target-page-bits") + _be32(1) + _be32(12)
            + b"\x05" + _counted(b"configuration/capabilities") + _be32(1) + _be32(1) + _counted(b"xbzrle"))
    inner = rs + rp + re_ + b"\0"
    packaged = b"\x08" + struct.pack(">HH", 7, 4) + _be32(len(inner)) + inner
    return {"minimal": _HEADER + config + rs + rp + re_ + gs + b"\0" + vmdesc,
            "subsections-packaged": _HEADER + config + subs + packaged + gs + b"\0"}


def _saver_stream(machine: Any, runstate: str) -> bytes:
    """A stream of the saver ``migrate`` runs, for a stopped ``machine`` with a few non-zero pages:
    its setup, one round with every page, the completion."""
    from emu.migration.precopy import PrecopySaver
    from emu.migration.stream import QEMU_VM_SECTION_PART, StreamWriter

    block = machine.ram_blocks[0]
    for page, byte in ((0, 0x11), (1, 0x22), (0x7F, 0x33), (block.used_length // PAGE - 1, 0x44)):
        block.fill(page * PAGE, byte, PAGE)
    block.write(0x5000, b"fuzz" * 1024)
    out = io.BytesIO()
    saver = PrecopySaver(StreamWriter(out), machine.ram_blocks, machine.name)
    saver.start()
    saver.send_pages(PrecopySaver.all_pages(machine.ram_blocks), QEMU_VM_SECTION_PART, lambda sent: None)
    saver.finish(saver.sync(), machine.migration_entries(saving=True), runstate)
    return out.getvalue()


def build_seeds() -> list[Seed]:
    """Every seed: the QEMU 7.2 vector, our saver's none and pc streams, the hand-built ones."""
    seeds: list[Seed] = []
    for d in _VECTOR_DIRS:
        path = d / "qemu72-none-16M.mig"
        if path.is_file():
            seeds.append(Seed("qemu72-none-16M", "none", split_stream(path.read_bytes())))
            break
    for machine_type, runstate in (("none", "paused"), ("pc", "prelaunch")):
        data = _saver_stream(_new_machine(machine_type), runstate)
        seeds.append(Seed(f"saver-{machine_type}", machine_type, split_stream(data, machine_type)))
    for name, data in _handmade_streams(b"none").items():
        seeds.append(Seed(name, "none", split_stream(data)))
    return seeds


# ================================================================ mutations

def _interesting(rng: random.Random, value: int, width: int) -> int:
    top = (1 << (8 * width)) - 1
    return rng.choice((0, 1, value - 1, value + 1, value ^ (1 << rng.randrange(8 * width)), top, top >> 1,
                       (top >> 1) + 1, 0xFF, 0x100, 0xFFFF, PAGE, PAGE + 1, rng.randrange(top + 1))) & top


def _mutate_ramword(rng: random.Random, word: int) -> int:
    flags, addr = word & rf.RAM_FLAGS_MASK, word & ~rf.RAM_FLAGS_MASK
    if rng.random() < 0.5:
        flags = rng.choice((rng.choice(_RAM_FLAGS), flags ^ (1 << rng.randrange(12)), rng.randrange(0x1000)))
    else:
        size = RAM_MIB * MiB
        addr = rng.choice((0, PAGE, size - PAGE, size, 128 * MiB, 1 << 40, addr + PAGE, addr - PAGE,
                           0xFFFFFFFFFFFFF000, rng.randrange(size // PAGE) * PAGE))
    return (addr & ~rf.RAM_FLAGS_MASK | flags) & 0xFFFFFFFFFFFFFFFF


def _mutate_int(rng: random.Random, kind: str, raw: bytes) -> bytes:
    width = _INT_WIDTH[kind]
    value = int.from_bytes(raw.ljust(width, b"\0")[:width], "big")
    if kind == "ramword":
        value = _mutate_ramword(rng, value)
    elif kind == "type":
        value = rng.choice((0, 1, 2, 3, 4, 5, 6, 7, 8, 0x7E, 0xFF, rng.randrange(256)))
    elif kind == "cmd16":
        value = rng.choice((0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0x50, 0xFFFF))
    else:
        value = _interesting(rng, value, width)
    return value.to_bytes(width, "big")


def _mutate_blob(rng: random.Random, kind: str, raw: bytes) -> bytes:
    b = bytearray(raw)
    op = rng.randrange(6)
    if kind == "json" and op == 0:
        return rng.choice(_JSON)
    if op == 1 and b:
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif op == 2 and b:
        b[rng.randrange(len(b))] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
    elif op == 3:
        del b[rng.randrange(len(b) + 1):]
    elif op == 4:
        b[rng.randrange(len(b) + 1):0] = rng.randbytes(rng.choice((1, 4, 8, 100)))
    else:
        start = rng.randrange(len(b) + 1)
        b[start:start + rng.randint(1, 64)] = bytes(len(b[start:start + 64]))
    return bytes(b)


def _mutate_field(rng: random.Random, field: Field) -> Field:
    kind, raw = field
    if kind in _INT_WIDTH:
        return kind, _mutate_int(rng, kind, raw)
    if kind == "name8":
        name = rng.choice(_NAMES) if rng.random() < 0.8 else rng.randbytes(rng.randrange(12))
        length = len(name) if rng.random() < 0.8 else rng.randrange(256)
        return kind, bytes((length,)) + name
    return kind, _mutate_blob(rng, kind, raw)


def _synthetic_item(rng: random.Random) -> Item:
    """A plausible item that valid streams of ours rarely carry."""
    choice = rng.randrange(6)
    if choice == 0:  # a command, with a length that may lie
        cmd = rng.choice((1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 0x50))
        payload = rng.choice((b"", _be32(7), bytes(16), rng.randbytes(rng.randrange(40))))
        length = len(payload) if rng.random() < 0.8 else rng.randrange(0x10000)
        return (("type", b"\x08"), ("cmd16", struct.pack(">H", cmd)), ("len16", struct.pack(">H", length)),
                ("raw", payload))
    if choice == 1:  # a subsection at a place where only a section may come
        return (("type", b"\x05"), ("name8", _counted(rng.choice(_NAMES))), ("ver32", _be32(1)))
    if choice == 2:
        return (("type", b"\x06"), ("len32", _be32(rng.choice((0, 2, 0xFFFFFFFF)))), ("json", rng.choice(_JSON)))
    if choice == 3:  # a device section with a body of the wrong size
        return (("type", b"\x04"), ("sid", _be32(rng.randrange(8))), ("name8", _counted(rng.choice(_NAMES))),
                ("inst", _be32(0)), ("ver32", _be32(rng.randrange(1, 4))), ("body", rng.randbytes(rng.randrange(64))),
                ("footer", b"\x7e"), ("sid", _be32(rng.randrange(8))))
    if choice == 4:
        name = rng.choice((b"none", b"pc-i440fx-9.1", b"", b"x" * 300))
        return (("type", b"\x07"), ("len32", _be32(len(name))), ("name", name))
    records: list[Field] = [("ramword", _be64(rng.randrange(RAM_MIB * MiB // PAGE) * PAGE | rf.RAM_SAVE_FLAG_PAGE)),
                            ("name8", _counted(b"ram")), ("page", rng.randbytes(PAGE))]
    records += [("ramword", _be64(0x3000 | rf.RAM_SAVE_FLAG_XBZRLE | _CONT)), ("u8", b"\x01"), ("len16", b"\x00\x03"),
                ("raw", b"\x00\x01\x00")]
    return (("type", b"\x02"), ("sid", _be32(2)), *records, ("ramword", _be64(rf.RAM_SAVE_FLAG_EOS)),
            ("footer", b"\x7e"), ("sid", _be32(2)))


def _wrap_packaged(rng: random.Random, items: list[Item]) -> None:
    """Puts a run of items into a PACKAGED command (a nested stream ending in EOF)."""
    i = rng.randrange(1, len(items) + 1)
    j = rng.randrange(i, len(items) + 1)
    inner = items[i:j] + [(("type", b"\0"),)]
    blen = len(join(inner)) + rng.choice((0, 0, 0, -1, 1, 0x1000))
    items[i:j] = [(("type", b"\x08"), ("cmd16", b"\x00\x07"), ("len16", b"\x00\x04"), ("len32", _be32(blen))),
                  *inner]


def _place(rng: random.Random, n: int) -> int:
    """An item position, rarely before the configuration (that is refused at once)."""
    return rng.randrange(1, n + 1) if rng.random() < 0.1 or n < 2 else rng.randrange(2, n + 1)


def _mutate_items(rng: random.Random, items: list[Item], seeds: list[Seed]) -> None:
    op = rng.randrange(10)
    n = len(items)
    if op < 5:  # a field of an item (the header less often: it ends the load at once)
        k = rng.randrange(n) if rng.random() < 0.3 or n < 2 else rng.randrange(1, n)
        fields = list(items[k])
        f = rng.randrange(len(fields))
        fields[f] = _mutate_field(rng, fields[f])
        items[k] = tuple(fields)
    elif op == 5 and n > 1:
        del items[rng.randrange(1, n)]
    elif op == 6:
        items.insert(_place(rng, n), items[rng.randrange(n)])
    elif op == 7 and n > 2:
        a, b = rng.randrange(1, n), rng.randrange(1, n)
        items[a], items[b] = items[b], items[a]
    elif op == 8:
        other = rng.choice(seeds).items
        items.insert(_place(rng, n), other[rng.randrange(1, len(other))])
    elif rng.random() < 0.5:
        items.insert(_place(rng, n), _synthetic_item(rng))
    else:
        _wrap_packaged(rng, items)


def _mutate_bytes(rng: random.Random, data: bytes, seeds: list[Seed]) -> bytes:
    b = bytearray(data)
    op = rng.randrange(5)
    if op == 0:  # truncation, often near the end where the vmdesc and last sections are
        cut = rng.randrange(len(b) + 1) if rng.random() < 0.5 else max(0, len(b) - rng.randrange(600))
        del b[cut:]
    elif op == 1 and b:
        for _ in range(rng.randint(1, 16)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif op == 2:
        b[rng.randrange(len(b) + 1):0] = rng.randbytes(rng.randint(1, 32))
    elif op == 3 and b:
        start = rng.randrange(len(b))
        if rng.random() < 0.5:
            del b[start:start + rng.randint(1, 64)]
        else:
            b[start:start + 4] = rng.choice((b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\0\0\0\0", b"\0\0\x10\0"))
    else:  # splice: our head, another seed's tail
        other = join(rng.choice(seeds).items)
        b = b[:rng.randrange(len(b) + 1)] + other[rng.randrange(len(other) + 1):]
    return bytes(b)


def mutate(rng: random.Random, seed: Seed, seeds: list[Seed]) -> bytes:
    """One mutant of ``seed``: one to four structural mutations, then often a byte-level one."""
    items = list(seed.items)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
        _mutate_items(rng, items, seeds)
    data = join(items)
    if rng.random() < 0.3:
        data = _mutate_bytes(rng, data, seeds)
    return data


# ================================================================ in-process loading

def _new_machine(machine_type: str) -> Any:
    from emu.machine import find_machine

    cls = find_machine(machine_type)
    assert cls is not None, machine_type
    return cls(RAM_MIB * MiB, manual_clock=True)


def machine_of(data: bytes) -> str:
    """``pc`` when the configuration section names a pc machine type, else ``none``."""
    if len(data) > 13 and data[8] == 0x07:
        n = int.from_bytes(data[9:13], "big")
        if data[13:13 + min(n, 16)].startswith(b"pc"):
            return "pc"
    return "none"


class _Hang(BaseException):
    """Raised by SIGALRM inside a load that took too long (a BaseException: no loader catches it)."""


def _status_kib(field: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _reset_peak_rss() -> bool:
    """Resets VmHWM to the current RSS (Linux ``clear_refs`` 5); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _check_messages(lines: list[str], last_errno: str | None) -> str | None:
    """What is wrong with a loader's stderr lines compared with QEMU's form, or None."""
    for line in lines:  # names from the stream are printed as they came (QEMU does too): any bytes
        if not isinstance(line, str) or not line:
            return f"message not a non-empty string: {line!r}"
        if any(s in line for s in _FOREIGN):
            return f"message with a Python representation: {line!r}"
    if last_errno is None:
        return None
    code = getattr(errno, last_errno, None)
    want = f"load of migration failed: {os.strerror(code)}" if isinstance(code, int) else None
    if not lines or lines[-1] != want:
        return f"last line {lines[-1] if lines else None!r} does not state {last_errno}"
    return None


@dataclass
class Outcome:
    """How one input ended: ``clean`` (refused with QEMU's messages), ``success``, or a finding kind."""

    kind: str
    message: str


class InProcessLoader:
    """Loads inputs with ``load_stream`` into reused machines, with the in-process oracles."""

    def __init__(self, timeout: float, max_growth_mib: int, max_rss_mib: int) -> None:
        self.timeout = timeout
        self.max_growth_kib = max_growth_mib * 1024
        self.max_rss_kib = max_rss_mib * 1024
        self._machines: dict[str, Any] = {}
        self._alarm = threading.current_thread() is threading.main_thread()
        self._hwm = _reset_peak_rss()

    def _machine(self, machine_type: str) -> Any:
        m = self._machines.get(machine_type)
        if m is None:
            m = self._machines[machine_type] = _new_machine(machine_type)
        else:
            for block in m.ram_blocks:  # what the previous input wrote reads as zero again
                block.discard(0, block.used_length // PAGE)
        return m

    def _load(self, data: bytes, machine_type: str) -> Outcome:
        from emu.migration.stream import StreamError, StreamReader, load_stream

        m = self._machine(machine_type)
        devices = m.migration_entries(saving=False)
        try:
            result = load_stream(StreamReader(io.BytesIO(data)), {b.name: b for b in m.ram_blocks}, devices,
                                 m.name)
        except StreamError as e:
            bad = _check_messages(e.messages, e.errno_name)
            return Outcome("invariant", bad) if bad else Outcome("clean", e.messages[-1])
        del self._machines[machine_type]  # the devices take the loaded state: the next input gets a new machine
        m.migration_loaded(devices)
        bad = _check_messages(result.warnings, None)
        if bad is None and result.runstate not in _RUNSTATES:
            bad = f"load ended in unknown runstate {result.runstate!r}"
        return Outcome("invariant", bad) if bad else Outcome("success", result.runstate)

    def run(self, data: bytes, machine_type: str) -> Outcome:
        """Loads ``data`` and applies every oracle."""
        rss_before = _status_kib("VmRSS:")
        if self._hwm:
            _reset_peak_rss()
        if self._alarm:
            old = signal.signal(signal.SIGALRM, _raise_hang)
            signal.setitimer(signal.ITIMER_REAL, self.timeout)
        try:
            outcome = self._load(data, machine_type)
        except _Hang:
            self._machines.pop(machine_type, None)
            return Outcome("hang", f"load did not return within {self.timeout:g} s")
        except Exception as e:  # noqa: BLE001 - every other exception is the finding
            self._machines.pop(machine_type, None)
            where = traceback.extract_tb(e.__traceback__)[-1]
            return Outcome("crash", f"{type(e).__name__}: {e} at {Path(where.filename).name}:{where.lineno}"[:300])
        finally:
            if self._alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, old)
        peak = _status_kib("VmHWM:") if self._hwm else _status_kib("VmRSS:")
        if peak - rss_before > self.max_growth_kib + 2 * len(data) // 1024:
            return Outcome("memory", f"RSS grew by {(peak - rss_before) // 1024} MiB for a {len(data)}-byte input")
        if peak > self.max_rss_kib:
            return Outcome("memory", f"RSS reached {peak // 1024} MiB")
        return outcome


def _raise_hang(signum: int, frame: Any) -> None:
    raise _Hang()


# ================================================================ out-of-process loading

def _is_qemu(binary: str) -> bool:
    return Path(binary).name.startswith("qemu")


def process_argv(binary: str, machine_type: str, path: str, incoming: str = "auto") -> list[str]:
    """The destination's command line for a stream file (``-qmp stdio`` is added by the runner)."""
    if incoming == "auto":
        incoming = "exec" if _is_qemu(binary) else "file"
    uri = f"exec:cat {path}" if incoming == "exec" else f"file:{path}"
    return [binary, "-M", machine_type, "-m", f"{RAM_MIB}M", "-display", "none", "-nodefaults", "-incoming", uri]


class _Qmp:
    """Line-wise QMP over the child's stdin/stdout, every read bounded by a deadline."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        self.buf = b""

    def line(self, timeout: float) -> bytes | None:
        """The next line; ``None`` at end of output; raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise TimeoutError
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def command(self, name: str, timeout: float) -> dict | None:
        """Sends a command; its reply (events skipped), or None once the child is gone."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"execute": name}).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError:
            return None
        while True:
            line = self.line(timeout)
            if line is None:
                return None
            msg = json.loads(line)
            if "return" in msg or "error" in msg:
                return msg


class ProcessLoader:
    """Feeds inputs to a destination process (``process_argv``) and classifies how it ends."""

    POLL = 0.01  # seconds between two query-migrate while a load runs

    def __init__(self, binary: str, timeout: float, max_rss_mib: int, incoming: str = "auto") -> None:
        self.binary = binary
        self.timeout = timeout
        self.max_rss_kib = max_rss_mib * 1024
        self.incoming = incoming
        self.dir = tempfile.TemporaryDirectory(prefix="stream-fuzz-")
        self.path = os.path.join(self.dir.name, "input.mig")

    def _drive(self, proc: subprocess.Popen[bytes]) -> str:
        """Talks QMP until the load ends: ``completed`` (and quit sent), ``gone``, or ``hang``."""
        qmp = _Qmp(proc)
        deadline = time.monotonic() + self.timeout
        try:
            if qmp.line(self.timeout) is None or qmp.command("qmp_capabilities", self.timeout) is None:
                return "gone"
            while time.monotonic() < deadline:
                reply = qmp.command("query-migrate", self.timeout)
                if reply is None:
                    return "gone"
                if reply.get("return", {}).get("status") == "completed":
                    qmp.command("quit", self.timeout)
                    return "completed"
                time.sleep(self.POLL)
        except TimeoutError:
            return "hang"
        except ValueError:
            return "gone"  # a line that is not JSON: the classification reads stderr
        return "hang"

    def _reap(self, proc: subprocess.Popen[bytes], kill: bool) -> tuple[int, int]:
        """(wait status, peak RSS in KiB) of the child, killed first if ``kill``."""
        if kill:
            proc.kill()
        deadline = time.monotonic() + self.timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                return status, usage.ru_maxrss
            if time.monotonic() > deadline:
                proc.kill()
                deadline += self.timeout
            time.sleep(self.POLL)

    def run(self, data: bytes, machine_type: str) -> Outcome:
        with open(self.path, "wb") as f:
            f.write(data)
        argv = process_argv(self.binary, machine_type, self.path, self.incoming) + ["-qmp", "stdio"]
        with tempfile.TemporaryFile(dir=self.dir.name) as err:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
            try:
                state = self._drive(proc)
                status, maxrss = self._reap(proc, kill=state == "hang")
            finally:
                for pipe in (proc.stdin, proc.stdout):
                    try:
                        pipe.close()  # type: ignore[union-attr]
                    except OSError:
                        pass
            err.seek(0)
            text = err.read().decode(errors="replace")
        return self._classify(state, status, maxrss, text)

    def _classify(self, state: str, status: int, maxrss: int, err: str) -> Outcome:
        lines = err.splitlines()
        tail = " | ".join(lines[-3:])
        if state == "hang":
            return Outcome("hang", f"no end of the load or no QMP reply within {self.timeout:g} s; stderr: {tail}")
        if os.WIFSIGNALED(status):
            return Outcome("crash", f"killed by signal {os.WTERMSIG(status)}; stderr: {tail}")
        if "Traceback (most recent call last)" in err or re.search(r": migration-incoming: unexpected \w+", err):
            return Outcome("crash", f"Python exception: {tail}"[:400])
        if maxrss > self.max_rss_kib:
            return Outcome("memory", f"peak RSS {maxrss // 1024} MiB over {self.max_rss_kib // 1024} MiB")
        code = os.WEXITSTATUS(status)
        if state == "completed" and code == 0:
            return Outcome("success", "completed")
        if code == 1 and lines and "load of migration failed: " in lines[-1]:
            return Outcome("clean", lines[-1].split(": ", 1)[-1])
        return Outcome("invariant", f"exit status {code} after {state}; stderr: {tail}"[:400])

    def close(self) -> None:
        self.dir.cleanup()


# ================================================================ the target

class StreamTarget:
    """The ``stream`` fuzz target (see the module docstring); ``args`` as ``add_arguments`` sets up."""

    MINIMISE_RUNS = {"in-process": 400, "process": 40}
    MINIMISE_SECONDS = 60.0

    def __init__(self, args: argparse.Namespace) -> None:
        self.machine = getattr(args, "machine", "auto")
        seeds = build_seeds()
        self.seeds = [s for s in seeds if self.machine in ("auto", s.machine)]
        # smaller seeds load faster: they come up more often (the pc ones are 60 KB)
        self.weights = [1.0 / max(1.0, len(join(s.items)) / 16384) for s in self.seeds]
        timeout = float(getattr(args, "timeout", 10.0))
        max_rss = int(getattr(args, "max_rss_mib", 1024))
        self.inproc = InProcessLoader(timeout, int(getattr(args, "max_growth_mib", 64)), max_rss)
        self.process: ProcessLoader | None = None
        self.process_every = int(getattr(args, "process_every", 0) or 0)
        self.only_process = bool(getattr(args, "process", False))
        if self.only_process or self.process_every:
            self.process = ProcessLoader(getattr(args, "binary", "emu-system-x86_64"), timeout, max_rss,
                                         getattr(args, "incoming", "auto"))
        self.counts: Counter[str] = Counter()
        self.execs = 0

    def valid_inputs(self) -> list[bytes]:
        """Every seed as it is: streams that load (the coverage backend starts from them)."""
        return [join(s.items) for s in self.seeds]

    def generate(self, rng: random.Random) -> bytes:
        """A mutant of a seed chosen at random (smaller seeds more often)."""
        seed = rng.choices(self.seeds, self.weights)[0]
        return mutate(rng, seed, self.seeds)

    def mutate_bytes(self, rng: random.Random, data: bytes) -> bytes:
        """A byte-level mutant of ``data`` (flips, splices with the seeds), for the atheris mutator."""
        return _mutate_bytes(rng, data, self.seeds)

    def _machine_for(self, data: bytes) -> str:
        return machine_of(data) if self.machine == "auto" else self.machine

    def _outcome(self, data: bytes, machine_type: str, mode: str) -> Outcome:
        if mode == "process":
            assert self.process is not None
            return self.process.run(data, machine_type)
        return self.inproc.run(data, machine_type)

    def _finding(self, data: bytes, machine_type: str, mode: str, outcome: Outcome) -> Finding:
        binary = self.process.binary if self.process is not None and mode == "process" else "emu-system-x86_64"
        cmd = " ".join(process_argv(binary, machine_type, "FILE"))
        replay = f"{cmd}   (in process: python -m qtest.fuzz.stream FILE --machine {machine_type})"
        return Finding(outcome.kind, f"[{mode}, -M {machine_type}] {outcome.message}", data, ".mig", replay)

    def run_one(self, data: bytes) -> Finding | None:
        """Runs ``data`` in process (and/or through the process, as configured)."""
        machine_type = self._machine_for(data)
        self.execs += 1
        modes = ["process"] if self.only_process else ["in-process"]
        if self.process_every and not self.only_process and self.execs % self.process_every == 0:
            modes.append("process")
        for mode in modes:
            outcome = self._outcome(data, machine_type, mode)
            self.counts[f"{mode} {outcome.kind}"] += 1
            if outcome.kind not in ("clean", "success"):
                return self._finding(data, machine_type, mode, outcome)
        return None

    def minimise(self, data: bytes, finding: Finding) -> Finding:
        """Shrinks ``data`` (truncation, chunk removal, zeroing) while the same kind of finding
        persists, within ``MINIMISE_RUNS`` loads and ``MINIMISE_SECONDS``."""
        mode = "process" if finding.message.startswith("[process") else "in-process"
        machine_type = self._machine_for(data)
        budget = [self.MINIMISE_RUNS[mode], time.monotonic() + self.MINIMISE_SECONDS]
        kind = finding.kind
        last: list[Outcome] = []

        def still(candidate: bytes) -> bool:
            if budget[0] <= 0 or time.monotonic() > budget[1]:
                return False
            budget[0] -= 1
            outcome = self._outcome(candidate, machine_type, mode)
            if outcome.kind == kind:
                last[:] = [outcome]
                return True
            return False

        best = shrink(data, still)
        if not last:
            return finding
        return self._finding(best, machine_type, mode, last[0]) if best != data else finding

    def close(self) -> None:
        """Prints this worker's outcome counts and removes the process mode's files."""
        if self.counts:
            summary = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
            sys.stderr.write(f"\n[stream pid {os.getpid()}] outcomes: {summary}\n")
        if self.process is not None:
            self.process.close()


def shrink(data: bytes, still: Callable[[bytes], bool]) -> bytes:
    """The smallest variant found of ``data`` for which ``still`` holds: the shortest prefix
    (bisection), then chunks removed, then chunks zeroed, halving the chunk size."""
    lo, hi = 0, len(data)  # still(data[:hi]) holds
    while lo < hi:
        mid = (lo + hi) // 2
        if still(data[:mid]):
            hi = mid
        else:
            lo = mid + 1
    best = data[:hi]
    for zero in (False, True):
        size = max(1, len(best) // 2)
        while size >= 1:
            pos = 0
            while pos < len(best):
                chunk = best[pos:pos + size]
                cand = best[:pos] + (bytes(len(chunk)) if zero else b"") + best[pos + size:]
                if cand != best and still(cand):
                    best = cand
                    if not zero:
                        continue
                pos += size
            size //= 2
            if size and len(best) // size > 512:  # bounded: chunks of a few bytes only on small inputs
                break
    return best


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The stream target's options."""
    parser.add_argument("--machine", choices=("auto", "none", "pc"), default="auto",
                        help="destination machine (auto: pc for streams whose configuration names a pc type)")
    parser.add_argument("--process", action="store_true",
                        help="feed every input to a destination process (--binary) instead of the in-process loader")
    parser.add_argument("--process-every", type=int, default=0, metavar="N",
                        help="also feed every Nth input to a destination process")
    parser.add_argument("--incoming", choices=("auto", "file", "exec"), default="auto",
                        help="how the process gets the stream (auto: exec:cat for qemu-* binaries, else file:)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds before a load counts as a hang")
    parser.add_argument("--max-growth-mib", type=int, default=64,
                        help="in process: peak RSS growth allowed per input (plus twice its size)")
    parser.add_argument("--max-rss-mib", type=int, default=1024, help="peak RSS allowed (process and in-process)")


def make_target(args: argparse.Namespace) -> StreamTarget:
    """The target for a worker (picklable entry point for the runner)."""
    return StreamTarget(args)


_DEFAULT: StreamTarget | None = None


def fuzz_one_input(data: bytes) -> None:
    """Loads ``data`` in process; AssertionError on a finding (for hypothesis or atheris)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = StreamTarget(argparse.Namespace(machine="auto"))
    finding = _DEFAULT.run_one(data)
    if finding is not None:
        raise AssertionError(f"{finding.kind}: {finding.message}")


def main(argv: list[str] | None = None) -> int:
    """``python -m qtest.fuzz.stream FILE...``: replays reproducers; exit 1 if one still fails."""
    parser = argparse.ArgumentParser(prog="python -m qtest.fuzz.stream", description=main.__doc__)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--binary", default="emu-system-x86_64")
    add_arguments(parser)
    args = parser.parse_args(argv)
    target = StreamTarget(args)
    failed = 0
    for path in args.files:
        data = path.read_bytes()
        machine_type = target._machine_for(data)
        mode = "process" if args.process else "in-process"
        outcome = target._outcome(data, machine_type, mode)
        print(f"{path}: [{mode}, -M {machine_type}] {outcome.kind}: {outcome.message}")
        failed |= outcome.kind not in ("clean", "success")
    target.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
