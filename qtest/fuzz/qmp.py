"""QMP fuzzer: schema-aware QMP messages sent to a long-running ``emu-system-x86_64``.

This module owns the ``qmp`` fuzz target of ``python -m qtest.fuzz qmp``: message generation from
our QAPI schema, the QMP process driver with its oracles, reproducer minimisation and replay
(``python -m qtest.fuzz.qmp --replay FILE [--binary PATH]``).

Generation reads the schema as ``query-qmp-schema`` serves it (``Schema.introspect()`` of the
default registry, core and migration commands) and builds, per input, 1-6 lines, each one JSON
text: mostly valid commands with schema-correct arguments (members, unions, alternates, lists,
enums), then near-misses (wrong member types, missing/extra members, enum near-misses, huge
numbers and strings, deep nesting, odd envelopes, odd ``id`` values, non-object messages) and
broken framing (truncation, stray bytes, invalid UTF-8, single quotes, nesting over the limit).

Oracles, checked after every line (a ``query-status`` sync command follows each one):
- the process stays alive and answers the sync command within ``--timeout`` seconds ("hang");
- it does not die, print a Python traceback or answer ``internal error`` ("crash");
- every reply is a JSON object with ``return`` or ``error`` (``class`` + ``desc``), events have
  ``event`` + ``timestamp``, and the replies match, in number, order and ``id``, what the same
  bytes give QEMU's JSON streamer (``emu.monitor.qjson`` mirrors it) ("invariant");
- its peak RSS (VmHWM) stays under ``--rss-limit-mib`` ("memory").

Commands that end the process (``quit``, HMP ``quit``/``q``) are generated, rarely: when the
process then exits with status 0 after a ``SHUTDOWN`` event of reason ``host-qmp-quit``, it is
restarted and the input goes on. Host safety: a line is never sent when it asks for an ``exec``
migration (any decoded string ``exec`` or ``exec:...``), or when a ``migrate``/``migrate-incoming``
address names a file, socket path or host outside a fixed safe set (relative ``fuzz-*`` names in
the worker's scratch directory, 127.0.0.1 port 1).
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from random import Random
from typing import Any

from qtest.fuzz.common import Finding, peak_rss_kib

#: seconds a reply may take before the input counts as a hang (generous: the CPUs are shared, and
#: a 6 MiB message takes 0.1-0.2 s on an idle machine)
DEFAULT_TIMEOUT = 30.0
#: peak RSS bound of the emulator process (a pc machine idles at about 40 MiB)
DEFAULT_RSS_LIMIT_MIB = 512
REPLAY = "python -m qtest.fuzz.qmp --replay <this .qmp file> [--binary PATH]"
RESYNC = b"\xff\n"  # a lexical error in any parser state: QEMU drops the partial message
SYNC_PREFIX = "qmp-fuzz-sync-"
SAFE_URIS = ("file:fuzz-mig", "file:fuzz-mig,offset=0x1000", "unix:fuzz-nosock", "tcp:127.0.0.1:1",
             "fd:fuzz-fd", "rdma:127.0.0.1:1", "vsock:1:1")
_SAFE_NAME = re.compile(r"fuzz-[a-z0-9-]{1,24}")
_HOST_KEYS = {"filename": _SAFE_NAME, "path": _SAFE_NAME, "host": re.compile(r"127\.0\.0\.1")}
INTERESTING_INTS = (0, 1, -1, 2, 7, 8, 15, 16, 127, 128, 255, 256, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
                    0xFFFFFFFF, 1 << 32, (1 << 63) - 1, 1 << 63, (1 << 64) - 1, 1 << 64, -(1 << 63),
                    -(1 << 63) - 1, 10 ** 30, -(10 ** 30))
INTERESTING_FLOATS = (0.0, -0.0, 0.5, 1e-300, 1.7976931348623157e308, -2.5, 1e100)
HMP_LINES = ("info status", "info version", "info name", "info uuid", "info chardev", "info cpus", "info mtree",
             "info mtree -f", "info qtree", "info", "info bogus", "stop", "cont", "system_reset", "system_powerdown",
             "xp /4x 0", "xp /16xb 0xfffffff0", "xp /2xg 0x400", "xp /8c 0xf0000", "xp /3d 0", "xp /zz 0",
             "xp 0xffffffffffffffff", "xp", "", "   ", "bogus command", "s", "c")
STRING_POOL = ("", "a", "fuzz0", "fuzz1", "fuzz-x", "é", "\u2603", "\U0001F600", "\x00", "a\nb", "\\", "'", "\"",
               "../..", "/", "//", "*", "%s%n", "\ud7ff", "\ufffd", "-", "0x10", "-1", "on", "true", "null")
ID_POOL = ("fuzz0", "fuzz1", "fuzz2", "tls0", "authz0")


# ---------------------------------------------------------------------------------------------
# The schema, as query-qmp-schema serves it


class SchemaModel:
    """``query-qmp-schema``'s SchemaInfo list, indexed: ``types`` by (masked) name, and the
    ``commands`` that have a handler, in schema order."""

    def __init__(self, infos: list[dict[str, Any]], handled: list[str]) -> None:
        self.types = {i["name"]: i for i in infos if i["meta-type"] not in ("command", "event")}
        self.commands = {i["name"]: i for i in infos if i["meta-type"] == "command" and i["name"] in handled}
        self.names = list(self.commands)

    def json_type(self, type_name: str) -> str:
        """The JSON type of a value of this type (``value`` for ``any`` and alternates)."""
        info = self.types[type_name]
        meta = info["meta-type"]
        if meta == "builtin":
            return str(info["json-type"])
        return {"enum": "string", "array": "array", "object": "object"}.get(meta, "value")


def load_schema() -> SchemaModel:
    """Our QAPI schema (core + migration) as the emulator's ``query-qmp-schema`` returns it."""
    from emu.monitor.registry import build_registry

    registry = build_registry()
    return SchemaModel(registry.schema.introspect(), registry.names())


# ---------------------------------------------------------------------------------------------
# Values and messages


class Pools:
    """Strings that reach deep paths: QOM paths, property and type names learnt from the
    running process (``harvest``), plus fixed ones."""

    def __init__(self) -> None:
        self.paths: list[str] = ["/machine", "/machine/unattached", "/machine/peripheral", "/objects", "/", "",
                                 "/nonexistent", "machine", "i440fx", "/machine/unattached/device[0]"]
        self.properties: list[str] = ["type", "realized", "parent_bus", "hotpluggable", "hotplugged", "bogus", ""]
        self.types: list[str] = ["device", "object", "user-creatable", "tls-creds", "bogus", ""]
        self.chardevs: list[str] = ["compat_monitor0", "qtest", "bogus", ""]
        #: (path, property, type) of the live QOM tree, for qom-get/qom-set that reach a property
        self.qom: list[tuple[str, str, str]] = []

    def add(self, pool: list[str], values: list[str], limit: int = 400) -> None:
        for v in values:
            if len(pool) >= limit:
                return
            if v not in pool:
                pool.append(v)


class MessageGenerator:
    """Valid and invalid QMP messages for a :class:`SchemaModel` (see the module docstring)."""

    def __init__(self, schema: SchemaModel, pools: Pools) -> None:
        self.schema = schema
        self.pools = pools
        self._migration = False  # building a migrate/migrate-incoming address: safe names only

    # -- valid values ------------------------------------------------------------------------

    def value(self, rng: Random, type_name: str, member: str = "", depth: int = 0) -> Any:
        """A value of ``type_name``; ``member`` (the member's name) picks a fitting string pool."""
        info = self.schema.types[type_name]
        meta = info["meta-type"]
        if meta == "enum":
            return rng.choice(info["values"])
        if meta == "array":
            n = 0 if depth > 4 else rng.choice((0, 1, 1, 2, 3, rng.randint(0, 40)))
            return [self.value(rng, info["element-type"], member, depth + 1) for _ in range(n)]
        if meta == "object":
            return self._object(rng, info, depth)
        if meta == "alternate":
            return self.value(rng, rng.choice(info["members"])["type"], member, depth + 1)
        return self._builtin(rng, info["json-type"], member, depth)

    def _object(self, rng: Random, info: dict[str, Any], depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        optional = sum("default" in m for m in info["members"])
        keep = min(0.5, 3 / max(optional, 1)) if depth < 5 else 0.0  # a few optional members
        tag = info.get("tag")
        for m in info["members"]:
            if "default" not in m or rng.random() < keep:
                out[m["name"]] = self.value(rng, m["type"], m["name"], depth + 1)
        if tag is not None and tag in out:
            # mostly a branch with members: most ObjectOptions tags have none here
            full = [v["case"] for v in info["variants"] if self.schema.types[v["type"]].get("members")]
            if full and rng.random() < 0.7:
                out[tag] = rng.choice(full)
            variant = next((v["type"] for v in info["variants"] if v["case"] == out[tag]), None)
            if variant is not None:
                out.update(self._object(rng, self.schema.types[variant], depth + 1))
        return out

    def _builtin(self, rng: Random, json_type: str, member: str, depth: int) -> Any:
        if json_type == "string":
            return self.string(rng, member)
        if json_type == "int":
            if member in ("cpu-index", "fdset-id", "fd") and rng.random() < 0.8:
                return 0
            return rng.randint(0, 16) if rng.random() < 0.6 else rng.choice(INTERESTING_INTS)
        if json_type == "number":
            return rng.choice(INTERESTING_FLOATS + (rng.uniform(-1e6, 1e6), rng.randint(0, 9)))
        if json_type == "boolean":
            return rng.random() < 0.5
        if json_type == "null":
            return None
        return self.any_value(rng, depth)

    def string(self, rng: Random, member: str) -> str:
        """A string for member ``member``: from its pool mostly, else anything."""
        pools = {"path": self.pools.paths, "property": self.pools.properties, "implements": self.pools.types,
                 "typename": self.pools.types, "chardev": self.pools.chardevs, "id": ID_POOL,
                 "tls-creds": ID_POOL, "tls-authz": ID_POOL, "fdname": ("fuzzfd", "fd0", ""),
                 "command-line": HMP_LINES, "uri": SAFE_URIS, "filename": ("fuzz-mig",), "host": ("127.0.0.1",),
                 "port": ("1", "0", "x", "65536"), "str": ("fuzz-fd",), "dir": ("fuzz-nodir", ".", "/nonexistent")}
        if self._migration and member in ("path", "filename", "host", "uri"):
            fixed = {"path": "fuzz-sock", "filename": "fuzz-mig", "host": "127.0.0.1"}.get(member)
            return fixed or rng.choice(SAFE_URIS)
        pool = pools.get(member)
        if pool is not None and rng.random() < 0.85:
            return self._hmp_line(rng) if member == "command-line" and rng.random() < 0.3 else rng.choice(pool)
        return self.any_string(rng)

    def _hmp_line(self, rng: Random) -> str:
        if rng.random() < 0.02:
            return rng.choice(("quit", "q"))  # ends the process: the runner restarts it
        count = rng.choice(("", str(rng.randint(0, 64)), str(rng.randint(0, 4096))))
        spec = "".join(rng.choice("xduocbhwg") for _ in range(rng.randint(0, 2)))
        addr = rng.choice(INTERESTING_INTS[:20] + (0xFEC00000, 0xFEE00000, 0xFFFFFFF0, 0xA0000))
        return f"xp /{count}{spec} {addr:#x}"

    def any_string(self, rng: Random) -> str:
        """Short pooled strings mostly; unicode, escapes and long ones sometimes."""
        r = rng.random()
        if r < 0.6:
            return rng.choice(STRING_POOL)
        if r < 0.9:
            return "".join(chr(rng.choice((rng.randint(0x20, 0x7E), rng.randint(0, 0x10FFFF))))
                           for _ in range(rng.randint(1, 24)))
        return rng.choice("A\u00e9x") * rng.choice((256, 4096, 65536))

    def any_value(self, rng: Random, depth: int = 0) -> Any:
        """Any JSON value (for ``any`` members and ``id``)."""
        r = rng.random()
        if r < 0.25:
            return rng.choice(INTERESTING_INTS) if rng.random() < 0.3 else rng.randint(-5, 100)
        if r < 0.5:
            return self.any_string(rng)
        if r < 0.6:
            return rng.choice((None, True, False) + INTERESTING_FLOATS)
        if depth > 3:
            return []
        if r < 0.8:
            return [self.any_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
        return {self.any_string(rng)[:16]: self.any_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}

    def arguments(self, rng: Random, command: str) -> dict[str, Any]:
        """Valid arguments of ``command`` (an empty dict when it takes none)."""
        arg_type = self.schema.commands[command]["arg-type"]
        self._migration = command in ("migrate", "migrate-incoming")
        try:
            args = self.value(rng, arg_type, "", 0) if self.schema.types[arg_type].get("members") else {}
        finally:
            self._migration = False
        if command in ("qom-get", "qom-set") and self.pools.qom and rng.random() < 0.8:
            args["path"], args["property"], prop_type = rng.choice(self.pools.qom)
            if command == "qom-set" and rng.random() < 0.8:
                args["value"] = self._typed(rng, prop_type)
        return args

    def _typed(self, rng: Random, prop_type: str) -> Any:
        """A value for a QOM property of type ``prop_type`` (``bool``, ``uint8``, ``str``...)."""
        if prop_type == "bool":
            return rng.random() < 0.5
        if "int" in prop_type:
            return rng.choice((0, 1, rng.randint(0, 255)) + INTERESTING_INTS[:16])
        if prop_type == "str" or prop_type.startswith("link<"):
            return rng.choice(self.pools.paths + ["", "x"])
        return self.any_value(rng)

    # -- messages ----------------------------------------------------------------------------

    def command_name(self, rng: Random) -> str:
        name = rng.choice(self.schema.names)
        while name == "quit" and rng.random() < 0.98:  # quit costs a restart: keep it rare
            name = rng.choice(self.schema.names)
        return name

    def message(self, rng: Random) -> Any:
        """One request (a dict, mostly valid) or, sometimes, a non-object JSON value."""
        name = self.command_name(rng)
        args = self.arguments(rng, name)
        r = rng.random()
        if r < 0.25:
            args = mutate(rng, args, self)
        msg: dict[str, Any] = {"execute": name}
        if args or rng.random() < 0.2:
            msg["arguments"] = args
        if rng.random() < 0.8:
            msg["id"] = self.any_value(rng) if rng.random() < 0.5 else rng.randint(0, 1 << 20)
        if 0.25 <= r < 0.37:
            mutate_envelope(rng, msg, self)
        elif 0.37 <= r < 0.4:
            return rng.choice((1, "execute", [], [msg], None, True, 2.5, {}))
        items = list(msg.items())
        if rng.random() < 0.3:
            rng.shuffle(items)  # member order must not matter
        return dict(items)

    def line(self, rng: Random) -> bytes:
        """One input line: a serialised message, its framing broken one time in ten."""
        msg = self.message(rng)
        text = json.dumps(msg, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
        if rng.random() < 0.1:
            text = break_framing(rng, text)
        return text.replace(b"\n", b" ")


def _slots(value: Any) -> Iterator[tuple[Any, Any]]:
    """(container, key) of every member and element below ``value``."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield value, k
            yield from _slots(v)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield value, i
            yield from _slots(v)


def _near_miss(rng: Random, s: str) -> str:
    return rng.choice((s[:-1], s.upper(), s + " ", s + "x", s.replace("-", "_"), "", s * 2, "\u00a0" + s))


def _nest(rng: Random, value: Any) -> Any:
    for _ in range(rng.choice((2, 64, 1000, 1100))):  # 1024 is QEMU's nesting limit
        value = [value] if rng.random() < 0.5 else {"a": value}
    return value


def mutate(rng: Random, args: dict[str, Any], gen: MessageGenerator) -> Any:
    """An invalid variant of ``args``: a member of the wrong type, missing or extra, an enum or
    string near-miss, a huge number or string, deep nesting, or no object at all."""
    slots = list(_slots(args))
    op = rng.randrange(8)
    if op == 0 or not slots:
        extra = rng.choice([m for _, m in slots if isinstance(m, str)] + ["bogus", "Path", "id"])
        args[_near_miss(rng, extra) if rng.random() < 0.5 else extra] = gen.any_value(rng)
        return args
    container, key = rng.choice(slots)
    old = container[key]
    if op == 1:
        del container[key]
    elif op == 2 and isinstance(old, str):
        container[key] = _near_miss(rng, old)
    elif op == 3:
        container[key] = rng.choice(INTERESTING_INTS[-8:] + (1e308, -1e308, 2.5, True))
    elif op == 4:
        container[key] = rng.choice("Ax\u20ac") * rng.choice((65536, 1 << 20))
    elif op == 5:
        container[key] = _nest(rng, old)
    elif op == 6:
        return rng.choice(([args], "args", None, 1, []))
    else:
        container[key] = gen.any_value(rng)  # mostly of another JSON type
    return args


def mutate_envelope(rng: Random, msg: dict[str, Any], gen: MessageGenerator) -> None:
    """Envelope errors: exec-oob, odd or missing execute/arguments, unknown members, unknown or
    near-miss command names, a second qmp_capabilities."""
    op = rng.randrange(7)
    if op == 0:
        msg["exec-oob"] = msg.pop("execute")
    elif op == 1:
        msg["execute"] = gen.any_value(rng)
    elif op == 2:
        del msg["execute"]
    elif op == 3:
        msg["arguments"] = rng.choice(([], "x", None, 0, [{}]))
    elif op == 4:
        msg[rng.choice(("control", "Execute", "", "arguments "))] = gen.any_value(rng)
    elif op == 5:
        msg["execute"] = _near_miss(rng, msg["execute"])
    else:
        msg["execute"] = "qmp_capabilities"


def break_framing(rng: Random, text: bytes) -> bytes:
    """Byte-level damage to a serialised message (never a raw newline)."""
    op = rng.randrange(8)
    pos = rng.randint(0, len(text))
    if op == 0:
        return text[:pos]  # truncated: the runner's resync byte ends it
    if op == 1:
        return text[:pos] + bytes([rng.choice(b"\x00\x01\x1b\x7f\x80\xc0\xfe\xff{}[]:,\"'\\@")]) + text[pos:]
    if op == 2:
        return text.replace(b'"', b"'")  # QEMU accepts single-quoted strings
    if op == 3:
        return text + b" " + text  # two messages on one line
    if op == 4:
        depth = rng.choice((1023, 1024, 1025, 5000))
        return b"[" * depth + b"]" * rng.choice((depth, depth - 1, 0))
    if op == 5:
        return text[:pos] + rng.choice((b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\\ud800", b"\\u0000",
                                        b"\\x41", b"\\'")) + text[pos:]
    if op == 6:
        return rng.choice((b"", b"   ", b"junk", b"-", b"01", b"1e", b"0x10", b"nul", b"'", b"\"\\"))
    return text + b"}" * rng.randint(1, 3)


# ---------------------------------------------------------------------------------------------
# Host safety and reply checks


def _strings(value: Any, key: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v, key)


def unsafe_reason(value: Any) -> str | None:
    """Why sending this request could touch the host (None when it cannot): an exec migration,
    or a migration address outside the safe set."""
    for _key, s in _strings(value):
        if s == "exec" or s.startswith("exec:"):
            return f"exec: {s[:40]!r}"
    migration = ("migrate", "migrate-incoming")
    if not isinstance(value, dict) or not (value.get("execute") in migration or value.get("exec-oob") in migration):
        return None
    for key, s in _strings(value.get("arguments")):
        if key == "uri" and ":" in s and s not in SAFE_URIS:
            return f"migration uri {s[:40]!r}"
        pattern = _HOST_KEYS.get(key)
        if pattern is not None and not pattern.fullmatch(s):
            return f"migration {key} {s[:40]!r}"
    return None


def decode_reply(line: bytes) -> Any:
    """One reply line as JSON; QEMU writes non-finite numbers as bare ``inf``/``-inf``/``nan``
    (7.2 does: an ``id`` of ``1e400`` comes back as ``inf``), which is accepted here."""
    try:
        return json.loads(line)
    except ValueError:
        fixed = re.sub(rb"(?<=[:\[,] )(-?)(inf|nan)(?=[,\]}])", lambda m: m.group(1) + (
            b"Infinity" if m.group(2) == b"inf" else b"NaN"), line)
        return json.loads(fixed)


def reply_problem(msg: Any) -> tuple[str, str] | None:
    """(kind, message) when a monitor output line breaks QMP's grammar, or reports an internal
    error; None when it is a well-formed reply or event."""
    if not isinstance(msg, dict):
        return "invariant", f"output is not a JSON object: {str(msg)[:200]}"
    if "event" in msg:
        ts = msg.get("timestamp")
        if not isinstance(msg["event"], str) or not isinstance(ts, dict) or set(ts) != {"seconds", "microseconds"}:
            return "invariant", f"malformed event: {str(msg)[:200]}"
        return None
    keys = set(msg) - {"id"}
    if keys == {"return"}:
        return None
    if keys != {"error"}:
        return "invariant", f"reply members {sorted(msg)}: {str(msg)[:200]}"
    err = msg["error"]
    if not isinstance(err, dict) or set(err) != {"class", "desc"} or not all(
            isinstance(v, str) for v in err.values()):
        return "invariant", f"malformed error: {str(msg)[:200]}"
    if err["desc"].startswith("internal error"):
        return "crash", f"internal error: {err['desc'][:300]}"
    return None


# ---------------------------------------------------------------------------------------------
# The emulator process


class ProcessGone(Exception):
    """The monitor connection closed (the process exited or dropped us)."""


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the fuzzer dies (PR_SET_PDEATHSIG), so that a
    killed worker leaves no emulator behind."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _nonblocking(call: Any, arg: Any) -> Any:
    """``call(arg)`` on a non-blocking socket; None when it would block."""
    try:
        return call(arg)
    except (BlockingIOError, InterruptedError):
        return None


class QmpProcess:
    """``BINARY -M pc -display none -accel qtest -qmp unix:SOCK,server=on,wait=off`` in a scratch
    directory (its cwd), negotiated and ready; stderr goes to a file read after every input."""

    def __init__(self, binary: str, workdir: Path, timeout: float) -> None:
        self.workdir = workdir
        self.timeout = timeout
        sock_path = workdir / "qmp.sock"
        sock_path.unlink(missing_ok=True)
        self.stderr_path = workdir / "emu.stderr"
        self._stderr = open(self.stderr_path, "ab")
        self._stderr_pos = self.stderr_path.stat().st_size
        self.proc = subprocess.Popen(
            [binary, "-M", "pc", "-display", "none", "-accel", "qtest", "-qmp", f"unix:{sock_path},server=on,wait=off"],
            cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
            preexec_fn=_die_with_parent)
        self._buf = b""
        try:
            self.sock = self._connect(sock_path)
            greeting = decode_reply(self.read_line(time.monotonic() + timeout))
            if "QMP" not in greeting:
                raise RuntimeError(f"no QMP greeting: {greeting!r}")
            self.send(b'{"execute": "qmp_capabilities"}\n')
            reply = decode_reply(self.read_line(time.monotonic() + timeout))
            if reply != {"return": {}}:
                raise RuntimeError(f"qmp_capabilities failed: {reply!r}")
        except BaseException:
            self.kill()
            raise

    def _connect(self, path: Path) -> socket.socket:
        deadline = time.monotonic() + max(self.timeout, 60.0)  # start-up is slow on a loaded machine
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"emulator exited with status {self.proc.returncode}: {self.stderr_tail()}")
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(str(path))
                return sock
            except OSError:
                sock.close()
                if time.monotonic() > deadline:
                    raise RuntimeError("QMP socket did not appear") from None
                time.sleep(0.02)

    def send(self, data: bytes) -> None:
        """All of ``data``, reading output meanwhile (a big input can get many replies: neither
        side may block on a full socket); TimeoutError when the process stops reading."""
        view = memoryview(data)
        self.sock.setblocking(False)
        try:
            while view:
                readable, writable, _ = select.select([self.sock], [self.sock], [], self.timeout)
                if not readable and not writable:
                    raise TimeoutError
                if readable:
                    chunk = _nonblocking(self.sock.recv, 1 << 16)
                    if chunk == b"":
                        raise ProcessGone("EOF")
                    self._buf += chunk or b""
                if writable:
                    view = view[_nonblocking(self.sock.send, view[:1 << 16]) or 0:]
        except OSError as e:
            raise ProcessGone(str(e)) from None
        finally:
            self.sock.setblocking(True)

    def read_line(self, deadline: float) -> bytes:
        """One output line; TimeoutError past ``deadline``, ProcessGone at EOF."""
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                raise TimeoutError from None
            except OSError as e:
                raise ProcessGone(str(e)) from None
            if not chunk:
                raise ProcessGone("EOF")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.rstrip(b"\r")

    def new_stderr(self) -> str:
        """What the process wrote on stderr since the last call."""
        with open(self.stderr_path, "rb") as f:
            f.seek(self._stderr_pos)
            data = f.read()
        self._stderr_pos += len(data)
        return data.decode(errors="replace")

    def stderr_tail(self) -> str:
        return self.stderr_path.read_bytes()[-2000:].decode(errors="replace")

    def exit_status(self, wait: float = 5.0) -> int | None:
        try:
            return self.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """Ends the process (idempotent)."""
        if hasattr(self, "sock"):
            self.sock.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._stderr.close()


# ---------------------------------------------------------------------------------------------
# The fuzz target


def split_lines(data: bytes) -> list[bytes]:
    """The messages of an input or reproducer file: one per line (a last empty line ignored)."""
    lines = data.split(b"\n")
    return lines[:-1] if lines and lines[-1] == b"" else lines


def _expected(items: list[tuple[Any, str | None]]) -> list[tuple[bool, Any]]:
    """(has_id, id) of the reply each parsed value or parse error must get, in order."""
    return [(True, v["id"]) if err is None and isinstance(v, dict) and "id" in v else (False, None)
            for v, err in items]


def _shorten_strings(line: bytes) -> bytes:
    """The line with every string over 64 characters (member names aside) cut to 8, if it is
    JSON (short strings stay: they are command names, enum values, paths)."""
    def cut(value: Any) -> Any:
        if isinstance(value, str):
            return value[:8] if len(value) > 64 else value
        if isinstance(value, list):
            return [cut(v) for v in value]
        if isinstance(value, dict):
            return {k: cut(v) for k, v in value.items()}
        return value

    try:
        value = json.loads(line)
    except ValueError:
        return line
    return json.dumps(cut(value)).encode()


def _asks_quit(request: Any) -> bool:
    """A request that ends the process: ``quit``, or HMP ``quit``/``q``."""
    if not isinstance(request, dict) or not isinstance(request.get("arguments", {}), dict):
        return False
    name = request.get("execute", request.get("exec-oob"))
    if name == "quit":
        return True
    words = str(request.get("arguments", {}).get("command-line", "")).split()
    return name == "human-monitor-command" and words[:1] in (["quit"], ["q"])


class QmpTarget:
    """The ``qmp`` fuzz target (see the module docstring); ``workdir`` defaults to a new
    temporary directory, removed by :meth:`close`."""

    def __init__(self, binary: str = "emu-system-x86_64", timeout: float = DEFAULT_TIMEOUT,
                 rss_limit_mib: int = DEFAULT_RSS_LIMIT_MIB, workdir: Path | None = None) -> None:
        self.binary, self.timeout, self.rss_limit_mib = binary, timeout, rss_limit_mib
        # messages nest up to 1100 deep (QEMU's limit is 1024): json.dumps and the mirror parser
        # recurse once per level
        sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="qmp-fuzz-")) if workdir is None else workdir
        self.schema = load_schema()
        self.pools = Pools()
        self.gen = MessageGenerator(self.schema, self.pools)
        self.stats = {"inputs": 0, "messages": 0, "skipped": 0, "restarts": 0, "quits": 0}
        self.peak_kib = 0
        self._sync = 0
        self.proc = self._start()
        self._harvest()

    def _start(self) -> QmpProcess:
        return QmpProcess(self.binary, self.workdir, self.timeout)

    def restart(self) -> None:
        """A fresh process (after a quit, a finding, or for minimisation)."""
        self.peak_kib = max(self.peak_kib, peak_rss_kib(self.proc.proc.pid))
        self.proc.kill()
        self.proc = self._start()
        self.stats["restarts"] += 1

    def _command(self, name: str, args: dict[str, Any] | None = None) -> Any:
        msg: dict[str, Any] = {"execute": name, "id": "harvest"}
        if args:
            msg["arguments"] = args
        self.proc.send(json.dumps(msg).encode() + b"\n")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = decode_reply(self.proc.read_line(deadline))
            if reply.get("id") == "harvest":
                return reply.get("return")

    def _harvest(self) -> None:
        """QOM paths and property names (BFS over child<>/link<> from /machine), type names and
        chardev labels of the live process, for the string pools."""
        self.pools.add(self.pools.types, [t["name"] for t in self._command("qom-list-types", {"abstract": True})])
        self.pools.add(self.pools.chardevs, [c["label"] for c in self._command("query-chardev")])
        queue, seen = ["/machine", "/objects"], 0
        while queue and seen < 150:
            path = queue.pop(0)
            seen += 1
            props = self._command("qom-list", {"path": path}) or []
            self.pools.add(self.pools.paths, [path])
            self.pools.add(self.pools.properties, [p["name"] for p in props])
            self.pools.qom += [(path, p["name"], p["type"]) for p in props if not p["type"].startswith("child<")]
            queue += [f"{path.rstrip('/')}/{p['name']}" for p in props if p["type"].startswith("child<")]

    # -- Target API --------------------------------------------------------------------------

    def generate(self, rng: Random) -> bytes:
        """1-6 lines; a line the host-safety check refuses is generated again."""
        lines = []
        for _ in range(rng.choice((1, 1, 2, 3, 4, 6))):
            for _attempt in range(20):
                line = self.gen.line(rng)
                if self._line_unsafe(line) is None:
                    lines.append(line)
                    break
        return b"".join(line + b"\n" for line in lines)

    @staticmethod
    def _line_unsafe(line: bytes) -> str | None:
        from emu.monitor.qjson import JsonStreamParser

        parser = JsonStreamParser()
        items = parser.feed(line + b"\n") + (parser.feed(RESYNC) if parser.pending else [])
        return next((r for v, _ in items if (r := unsafe_reason(v)) is not None), None)

    def run_one(self, data: bytes) -> Finding | None:
        """Sends every line, then checks the oracles (see the module docstring)."""
        self.stats["inputs"] += 1
        for line in split_lines(data):
            if self._line_unsafe(line) is not None:
                self.stats["skipped"] += 1
                continue
            self.stats["messages"] += 1
            problem = self._exchange(line)
            if problem is not None:
                kind, message = problem
                self.restart()
                return Finding(kind, message, data, ".qmp", REPLAY)
        return None

    def _exchange(self, line: bytes) -> tuple[str, str] | None:
        """One line (plus a resync byte if it left a partial message), its replies, then a sync
        command and its reply; (kind, message) of a broken oracle, or None. The sync goes out
        only once the line is answered: a quit closes the socket, and unread input would reset it."""
        from emu.monitor.qjson import JsonStreamParser

        mirror = JsonStreamParser()
        items = mirror.feed(line + b"\n")
        out = line + b"\n"
        if mirror.pending:
            items += mirror.feed(RESYNC)
            out += RESYNC
        expected = _expected(items)
        quit_asked = any(_asks_quit(v) for v, err in items if err is None)
        self._sync += 1
        sync_id = f"{SYNC_PREFIX}{self._sync}"
        replies: list[Any] = []
        try:
            self.proc.send(out)
            problem = self._read(replies, lambda: sum("event" not in r for r in replies) >= len(expected))
            if problem is None:
                self.proc.send(json.dumps({"execute": "query-status", "id": sync_id}).encode() + b"\n")
                problem = self._read(replies, lambda: bool(replies) and replies[-1].get("id") == sync_id)
        except TimeoutError:
            problem = ("hang", f"no reply within {self.timeout:g} s ({len(replies)} lines read)")
        except ProcessGone:
            return self._gone(replies, quit_asked)
        if problem is None:
            problem = self._match(expected, replies[:-1], replies[-1])
        return problem or self._after_checks()

    def _read(self, replies: list[Any], done: Callable[[], bool]) -> tuple[str, str] | None:
        """Reads output lines into ``replies`` until ``done()``; checks each one's grammar."""
        deadline = time.monotonic() + self.timeout
        while not done():
            raw = self.proc.read_line(deadline)
            try:
                msg = decode_reply(raw)
            except ValueError:
                return "invariant", f"output is not JSON: {raw[:200]!r}"
            problem = reply_problem(msg)
            if problem is not None:
                return problem
            replies.append(msg)
        return None

    @staticmethod
    def _match(expected: list[tuple[bool, Any]], replies: list[Any], sync: Any) -> tuple[str, str] | None:
        """The replies (events aside) match the parsed values and errors, in order, ids echoed;
        the sync command got its StatusInfo."""
        if not isinstance(sync.get("return"), dict) or "status" not in sync["return"]:
            return "invariant", f"sync reply {str(sync)[:200]}"
        answers = [r for r in replies if "event" not in r]
        if len(answers) != len(expected):
            return "invariant", f"{len(answers)} replies for {len(expected)} messages: {str(answers)[:300]}"
        for (has_id, want), got in zip(expected, answers):
            if has_id != ("id" in got) or (has_id and got["id"] != want):
                return "invariant", f"id {str(want)[:100] if has_id else '(none)'} answered as {str(got)[:200]}"
        return None

    def _gone(self, replies: list[Any], quit_asked: bool) -> tuple[str, str] | None:
        """The connection closed: after a quit (restart, no finding) or a crash."""
        status = self.proc.exit_status()
        quit_seen = quit_asked or any(r.get("event") == "SHUTDOWN" and r.get("data", {}).get("reason") ==
                                      "host-qmp-quit" for r in replies)
        err = self.proc.new_stderr()
        if status == 0 and quit_seen and "Traceback" not in err:
            self.stats["quits"] += 1
            self.restart()
            return None
        return "crash", f"process ended (status {status}, quit={quit_seen}): {err[-1500:]}"

    def _after_checks(self) -> tuple[str, str] | None:
        err = self.proc.new_stderr()
        if "Traceback" in err or "internal error" in err:
            return "crash", f"stderr: {err[-1500:]}"
        kib = peak_rss_kib(self.proc.proc.pid)
        self.peak_kib = max(self.peak_kib, kib)
        if kib > self.rss_limit_mib * 1024:
            return "memory", f"VmHWM {kib // 1024} MiB over the {self.rss_limit_mib} MiB bound"
        return None

    def minimise(self, data: bytes, finding: Finding) -> Finding:
        """Drops lines, then cuts long strings, while a fresh process still
        shows the same kind of finding (at most 24 runs, 6 for hangs); keeps the whole input when
        a fresh process does not show it."""
        budget = [6 if finding.kind == "hang" else 24]

        def same(candidate: list[bytes]) -> Finding | None:
            budget[0] -= 1
            self.restart()
            got = self.run_one(b"".join(line + b"\n" for line in candidate))
            return got if got is not None and got.kind == finding.kind else None

        lines = split_lines(data)
        best = same(lines)
        if best is None:
            finding.message += " (not shown by a fresh process: depends on earlier inputs)"
            return finding
        for i in reversed(range(len(lines))):
            if budget[0] <= 0 or len(lines) == 1:
                break
            got = same(lines[:i] + lines[i + 1:])
            if got is not None:
                lines, best = lines[:i] + lines[i + 1:], got
        for i, line in enumerate(lines):
            short = _shorten_strings(line)
            if budget[0] > 0 and short != line and (got := same(lines[:i] + [short] + lines[i + 1:])) is not None:
                lines[i], best = short, got
        return best

    def close(self) -> None:
        """Stops the process, removes the scratch directory, prints this worker's numbers."""
        self.peak_kib = max(self.peak_kib, peak_rss_kib(self.proc.proc.pid))
        self.proc.kill()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        s = self.stats
        sys.stderr.write(f"\n[qmp worker {os.getpid()}] {s['inputs']} inputs, {s['messages']} messages "
                         f"({s['skipped']} refused as unsafe), {s['restarts']} restarts ({s['quits']} quits), "
                         f"peak VmHWM {self.peak_kib // 1024} MiB\n")


# ---------------------------------------------------------------------------------------------
# Entry points


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--timeout`` (hang bound, seconds) and ``--rss-limit-mib`` (memory bound)."""
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds before a hang")
    parser.add_argument("--rss-limit-mib", type=int, default=DEFAULT_RSS_LIMIT_MIB, help="VmHWM bound")


def make_target(args: argparse.Namespace) -> QmpTarget:
    """The target for one worker process."""
    return QmpTarget(args.binary, args.timeout, args.rss_limit_mib)


_DEFAULT: QmpTarget | None = None


def fuzz_one_input(data: bytes) -> None:
    """Runs one input (lines of QMP messages) on a shared process started on first use;
    AssertionError on a finding. ``QMP_FUZZ_BINARY`` overrides the emulator binary."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = QmpTarget(os.environ.get("QMP_FUZZ_BINARY", "emu-system-x86_64"))
        atexit.register(_DEFAULT.close)
    finding = _DEFAULT.run_one(data)
    if finding is not None:
        raise AssertionError(f"{finding.kind}: {finding.message}")


def replay(path: Path, binary: str = "emu-system-x86_64", timeout: float = DEFAULT_TIMEOUT,
           rss_limit_mib: int = DEFAULT_RSS_LIMIT_MIB) -> Finding | None:
    """Replays a reproducer file on a fresh process; the finding, or None."""
    target = QmpTarget(binary, timeout, rss_limit_mib)
    try:
        return target.run_one(path.read_bytes())
    finally:
        target.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m qtest.fuzz.qmp --replay FILE [--binary PATH]``: exit status 1 on a finding."""
    parser = argparse.ArgumentParser(prog="python -m qtest.fuzz.qmp", description="Replay a QMP reproducer.")
    parser.add_argument("--replay", type=Path, required=True, help="file of QMP messages, one per line")
    parser.add_argument("--binary", default="emu-system-x86_64")
    add_arguments(parser)
    args = parser.parse_args(argv)
    finding = replay(args.replay, args.binary, args.timeout, args.rss_limit_mib)
    if finding is None:
        print(f"{args.replay}: no finding")
        return 0
    print(f"{args.replay}: {finding.kind}: {finding.message}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
