"""A small VMState description mechanism: device state fields, versions, subsections, vmdesc JSON.

Mirrors the parts of QEMU's ``VMStateDescription`` that the streams of a QEMU 7.2 ``-M none`` machine
need (spec ``migration-stream.md`` §6, §7): scalar fields (big-endian), raw buffers, unused buffers,
variable-length buffers whose length is another field, per-field version ids, subsections with a
``needed`` test, and ``pre_load``/``post_load``/``pre_save`` hooks.

Device state is a plain ``dict`` (field name -> value). Loading follows QEMU's ``vmstate_load_state``
and returns ``0`` or a negative errno, reporting messages through a :class:`LoadContext` exactly as
QEMU 7.2 prints them, so that the stream loader can reproduce QEMU's stderr.

The byte source used by :func:`load_state` is duck-typed (see ``emu.migration.stream._QFile``):
``get(n) -> bytes`` (always ``n`` bytes; zero-padded after an error, like ``QEMUFile``),
``peek(n, offset=0) -> bytes`` (may be short), ``skip(n)`` and ``error`` (0 or a negative errno).
"""
from __future__ import annotations

import errno
import struct
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any

__all__ = [
    "RUNSTATES",
    "VMSTATE_CONFIGURATION",
    "VMSTATE_GLOBALSTATE",
    "VMSTATE_TIMERS",
    "Field",
    "LoadContext",
    "SaveStateEntry",
    "VMStateDescription",
    "globalstate_entry",
    "globalstate_runstate",
    "globalstate_state",
    "load_state",
    "save_state",
    "timer_entry",
    "vmdesc_device",
    "vmdesc_fields",
]

QEMU_VM_SUBSECTION = 0x05

# type name -> (struct format, vmdesc type string)
_SCALARS: dict[str, str] = {
    "int8": ">b", "uint8": ">B", "int16": ">h", "uint16": ">H",
    "int32": ">i", "uint32": ">I", "int64": ">q", "uint64": ">Q", "bool": ">B",
}


@dataclass
class Field:
    """One VMState field.

    ``type``: a scalar type (``int8`` … ``uint64``, ``bool``), ``buffer`` (``size`` raw bytes, or
    ``size_field`` names an earlier field holding the length: QEMU's VBUFFER), or ``unused_buffer``
    (``size`` zero bytes on save, skipped on load). ``version_id``: the field exists only in streams
    whose section version is >= this. ``get``: optional custom decoder ``get(f, state, ctx) -> int``
    (negative errno on failure) for types with their own parser (e.g. the capability list).
    """

    name: str
    type: str
    size: int = 0
    version_id: int = 0
    size_field: str | None = None
    get: Callable[[Any, dict, LoadContext], int] | None = None
    put: Callable[[dict], bytes] | None = None
    vmdesc_type: str | None = None

    def byte_size(self, state: dict | None = None) -> int:
        if self.type in _SCALARS:
            return struct.calcsize(_SCALARS[self.type])
        if self.size_field is not None:
            return int((state or {}).get(self.size_field, 0))
        return self.size


@dataclass
class VMStateDescription:
    """QEMU's ``VMStateDescription``: a named, versioned list of fields plus optional subsections."""

    name: str
    version_id: int
    minimum_version_id: int
    fields: list[Field]
    subsections: list[VMStateDescription] = dc_field(default_factory=list)
    needed: Callable[[dict], bool] | None = None
    pre_load: Callable[[dict, LoadContext], int] | None = None
    post_load: Callable[[dict, int, LoadContext], int] | None = None
    pre_save: Callable[[dict], None] | None = None


@dataclass
class SaveStateEntry:
    """A registered state handler (QEMU's ``SaveStateEntry``): idstr + instance id + vmsd + state."""

    idstr: str
    instance_id: int
    vmsd: VMStateDescription
    state: dict
    section_id: int | None = None

    @property
    def version_id(self) -> int:
        return self.vmsd.version_id


class LoadContext:
    """Collects what QEMU would print on stderr during a load (without the program-name prefix)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def error(self, msg: str) -> None:
        """QEMU's ``error_report``."""
        self.lines.append(msg)

    def warn(self, msg: str) -> None:
        """QEMU's ``warn_report``."""
        self.lines.append("warning: " + msg)


# ---------------------------------------------------------------- save

def save_state(vmsd: VMStateDescription, state: dict) -> bytes:
    """Serializes ``state`` with ``vmsd`` at its current version: fields, then needed subsections."""
    if vmsd.pre_save is not None:
        vmsd.pre_save(state)
    out = bytearray()
    for f in vmsd.fields:
        if f.version_id > vmsd.version_id:
            continue
        out += _put_field(f, state)
    for sub in vmsd.subsections:
        if sub.needed is not None and sub.needed(state):
            name = sub.name.encode()
            out += bytes([QEMU_VM_SUBSECTION, len(name)]) + name + struct.pack(">I", sub.version_id)
            out += save_state(sub, state)
    return bytes(out)


def _put_field(f: Field, state: dict) -> bytes:
    if f.put is not None:
        return f.put(state)
    if f.type in _SCALARS:
        return struct.pack(_SCALARS[f.type], int(state.get(f.name, 0)))
    if f.type == "unused_buffer":
        return bytes(f.size)
    if f.type == "buffer":
        size = f.byte_size(state)
        data = bytes(state.get(f.name, b""))[:size]
        return data + bytes(size - len(data))
    raise ValueError(f"unknown VMState field type {f.type!r}")


def vmdesc_fields(vmsd: VMStateDescription, state: dict | None = None) -> dict:
    """The vmdesc object of a vmsd: ``{"vmsd_name", "version", "fields", ["subsections"]}``."""
    state = state or {}
    desc: dict[str, Any] = {"vmsd_name": vmsd.name, "version": vmsd.version_id, "fields": []}
    for f in vmsd.fields:
        if f.version_id > vmsd.version_id:
            continue
        ftype = f.vmdesc_type or f.type
        desc["fields"].append({"name": f.name, "type": ftype, "size": f.byte_size(state)})
    subs = [vmdesc_fields(s, state) for s in vmsd.subsections if s.needed is not None and s.needed(state)]
    if subs:
        desc["subsections"] = subs
    return desc


def vmdesc_device(entry: SaveStateEntry) -> dict:
    """One ``devices`` element of the vmdesc JSON, keys in QEMU's order."""
    d: dict[str, Any] = {"name": entry.idstr, "instance_id": entry.instance_id}
    d.update(vmdesc_fields(entry.vmsd, entry.state))
    return d


# ---------------------------------------------------------------- load

def load_state(f: Any, vmsd: VMStateDescription, state: dict, version_id: int, ctx: LoadContext) -> int:
    """QEMU 7.2 ``vmstate_load_state``: returns 0 or a negative errno; messages go to ``ctx``."""
    if version_id > vmsd.version_id:
        ctx.error(f"{vmsd.name}: incoming version_id {version_id} is too new for local version_id {vmsd.version_id}")
        return -errno.EINVAL
    if version_id < vmsd.minimum_version_id:
        ctx.error(f"{vmsd.name}: incoming version_id {version_id} is too old for local minimum "
                  f"version_id  {vmsd.minimum_version_id}")
        return -errno.EINVAL
    if vmsd.pre_load is not None:
        ret = vmsd.pre_load(state, ctx)
        if ret:
            return ret
    for fld in vmsd.fields:
        if fld.version_id > version_id:
            continue
        ret = _get_field(f, fld, state, ctx)
        if ret >= 0:
            ret = f.error
        if ret < 0:
            f.set_error(ret)
            ctx.error(f"Failed to load {vmsd.name}:{fld.name}")
            return ret
    ret = _load_subsections(f, vmsd, state, ctx)
    if ret != 0:
        f.set_error(ret)
        return ret
    if vmsd.post_load is not None:
        return vmsd.post_load(state, version_id, ctx)
    return 0


def _get_field(f: Any, fld: Field, state: dict, ctx: LoadContext) -> int:
    if fld.get is not None:
        return fld.get(f, state, ctx)
    if fld.type in _SCALARS:
        fmt = _SCALARS[fld.type]
        state[fld.name] = struct.unpack(fmt, f.get(struct.calcsize(fmt)))[0]
        return 0
    if fld.type == "unused_buffer":
        f.get(fld.size)
        return 0
    if fld.type == "buffer":
        state[fld.name] = f.get(fld.byte_size(state))
        return 0
    raise ValueError(f"unknown VMState field type {fld.type!r}")


def _load_subsections(f: Any, vmsd: VMStateDescription, state: dict, ctx: LoadContext) -> int:
    """QEMU 7.2 ``vmstate_subsection_load``: peek-based; an unknown matching name is -ENOENT, silently."""
    parent = vmsd.name.encode()
    while f.peek(1) == bytes([QEMU_VM_SUBSECTION]):
        hdr = f.peek(2)
        if len(hdr) < 2:
            return 0
        n = hdr[1]
        if n < len(parent) + 1:
            return 0
        name = f.peek(n, 2)
        if len(name) != n:
            return 0
        if not name.startswith(parent):
            return 0
        cname = name.split(b"\0", 1)[0]
        sub = next((s for s in vmsd.subsections if s.name.encode() == cname), None)
        if sub is None:
            return -errno.ENOENT
        f.skip(2 + n)
        sub_version = struct.unpack(">I", f.get(4))[0] & 0xFF  # QEMU keeps it in a uint8_t
        ret = load_state(f, sub, state, sub_version, ctx)
        if ret:
            return ret
    return 0


# ---------------------------------------------------------------- QEMU 7.2 handlers of a -M none machine

VMSTATE_TIMERS = VMStateDescription(
    name="timer",
    version_id=2,
    minimum_version_id=1,
    fields=[
        Field("cpu_ticks_offset", "int64"),
        Field("unused", "unused_buffer", 8),
        Field("cpu_clock_offset", "int64", version_id=2),
    ],
    subsections=[
        VMStateDescription(
            name="timer/icount", version_id=1, minimum_version_id=1,
            fields=[Field("qemu_icount_bias", "int64"), Field("qemu_icount", "int64")],
            needed=lambda s: bool(s.get("icount")),
        ),
    ],
)

#: RunState names of QEMU 7.2 (qapi/run-state.json), accepted in ``globalstate``.
RUNSTATES = (
    "debug", "inmigrate", "internal-error", "io-error", "paused", "postmigrate", "prelaunch",
    "finish-migrate", "restore-vm", "running", "save-vm", "shutdown", "suspended", "watchdog",
    "guest-panicked", "colo",
)


def _globalstate_pre_save(state: dict) -> None:
    rs = state.get("runstate_name", "running").encode()
    state["runstate"] = rs[:99]
    state["size"] = len(state["runstate"]) + 1


def _globalstate_post_load(state: dict, version_id: int, ctx: LoadContext) -> int:
    buf = bytes(state.get("runstate", b""))
    name = buf.split(b"\0", 1)[0][:99]
    state["received"] = True
    text = name.decode("utf-8", "replace")
    if text not in RUNSTATES:
        ctx.error(f"invalid parameter value: {text}")
        return -errno.EINVAL
    state["runstate_name"] = text
    return 0


VMSTATE_GLOBALSTATE = VMStateDescription(
    name="globalstate",
    version_id=1,
    minimum_version_id=1,
    fields=[Field("size", "uint32"), Field("runstate", "buffer", 100)],
    pre_save=_globalstate_pre_save,
    post_load=_globalstate_post_load,
)


def timer_entry(cpu_ticks_offset: int = 0, cpu_clock_offset: int = 0, section_id: int | None = 0) -> SaveStateEntry:
    """The ``timer`` handler (instance 0, version 2); section id 0 as in QEMU 7.2 ``-M none``."""
    return SaveStateEntry("timer", 0, VMSTATE_TIMERS,
                          {"cpu_ticks_offset": cpu_ticks_offset, "cpu_clock_offset": cpu_clock_offset},
                          section_id)


def globalstate_entry(runstate: str = "running", section_id: int | None = 4) -> SaveStateEntry:
    """The ``globalstate`` handler (instance 0, version 1); section id 4 as in QEMU 7.2 ``-M none``."""
    return SaveStateEntry("globalstate", 0, VMSTATE_GLOBALSTATE, globalstate_state(runstate), section_id)


def globalstate_state(runstate: str) -> dict:
    return {"runstate_name": runstate}


def globalstate_runstate(state: dict) -> str | None:
    """The received runstate, or ``None`` if no globalstate section was loaded."""
    return state.get("runstate_name") if state.get("received") else None


# ---------------------------------------------------------------- the configuration section (§3)

#: MigrationCapability names of QEMU 7.2, in enum order.
CAPABILITIES_72 = (
    "xbzrle", "rdma-pin-all", "auto-converge", "zero-blocks", "compress", "events", "postcopy-ram",
    "x-colo", "release-ram", "block", "return-path", "pause-before-switchover", "multifd",
    "dirty-bitmaps", "postcopy-blocktime", "late-block-activate", "x-ignore-shared", "validate-uuid",
    "background-snapshot", "zero-copy-send", "postcopy-preempt",
)
#: the capabilities that 7.2 validates against the source
VALIDATED_CAPABILITIES_72 = ("x-ignore-shared",)
TARGET_PAGE_BITS = 12


def _cfg_pre_load(state: dict, ctx: LoadContext) -> int:
    state["target_page_bits"] = TARGET_PAGE_BITS
    state["caps"] = []
    return 0


def _strncmp_eq(a: bytes, b: bytes, n: int) -> bool:
    """C ``strncmp(a, b, n) == 0`` over NUL-terminated strings."""
    for i in range(n):
        ca = a[i] if i < len(a) else 0
        cb = b[i] if i < len(b) else 0
        if ca != cb:
            return False
        if ca == 0:
            return True
    return True


def _cfg_post_load(state: dict, version_id: int, ctx: LoadContext) -> int:
    local = state["local_machine"].encode()
    rx = bytes(state.get("name", b""))
    n = int(state.get("len", 0))
    try:
        if not _strncmp_eq(rx, local, n):
            shown = rx[:n].split(b"\0", 1)[0].decode("utf-8", "replace")
            ctx.error(f"Machine type received is '{shown}' and local is '{state['local_machine']}'")
            return -errno.EINVAL
        if state["target_page_bits"] != TARGET_PAGE_BITS:
            ctx.error(f"Received TARGET_PAGE_BITS is {state['target_page_bits']} but local is {TARGET_PAGE_BITS}")
            return -errno.EINVAL
        ok = True
        local_caps = state.get("local_capabilities", set())
        for cap in VALIDATED_CAPABILITIES_72:
            src, dst = cap in state["caps"], cap in local_caps
            if src != dst:
                ctx.error(f"Capability {cap} is {'on' if dst else 'off'}, but received capability is "
                          f"{'on' if src else 'off'}")
                ok = False
        return 0 if ok else -errno.EINVAL
    finally:
        state["caps"] = []


def _get_caps(f: Any, state: dict, ctx: LoadContext) -> int:
    for _ in range(int(state.get("caps_count", 0))):
        n = f.get(1)[0]
        name = f.get(n).split(b"\0", 1)[0].decode("utf-8", "replace")
        if f.error:
            return f.error
        if name not in CAPABILITIES_72:
            ctx.error(f"Received unknown capability {name}")
            return -errno.EINVAL
        state["caps"].append(name)
    return 0


def _fmt_uuid(u: bytes) -> str:
    h = u.hex()
    return f"{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def _uuid_post_load(state: dict, version_id: int, ctx: LoadContext) -> int:
    rx = bytes(state.get("uuid.data", b""))
    local = state.get("local_uuid")
    if local is None:
        ctx.warn(f"UUID is received {_fmt_uuid(rx)}, but local uuid isn't set")
        return 0
    if rx != bytes(local):
        ctx.error(f"UUID received is {_fmt_uuid(rx)} and local is {_fmt_uuid(bytes(local))}")
        return -errno.EINVAL
    return 0


VMSTATE_CONFIGURATION = VMStateDescription(
    name="configuration",
    version_id=1,
    minimum_version_id=0,
    fields=[Field("len", "uint32"), Field("name", "buffer", size_field="len")],
    pre_load=_cfg_pre_load,
    post_load=_cfg_post_load,
    subsections=[
        VMStateDescription("configuration/target-page-bits", 1, 1, [Field("target_page_bits", "uint32")],
                           needed=lambda s: False),
        VMStateDescription("configuration/capabilities", 1, 1,
                           [Field("caps_count", "uint32", version_id=1),
                            Field("capabilities", "capability", get=_get_caps, version_id=1)],
                           needed=lambda s: False),
        VMStateDescription("configuration/uuid", 1, 1, [Field("uuid.data", "buffer", 16, version_id=1)],
                           needed=lambda s: False, post_load=_uuid_post_load),
    ],
)
