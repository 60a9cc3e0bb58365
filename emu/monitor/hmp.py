"""A subset of the human monitor (HMP), for ``human-monitor-command``.

``info status|version|name|uuid|chardev|cpus|mtree|qtree``, ``xp``, and the run-state commands.
Output follows QEMU's formats (docs/qmp-facts.md §2.8); the caller turns ``\\n`` into ``\\r\\n``.
Above the protocol (it reads the version and the ``MachineControl`` it is given); only the command
modules import it.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from emu.errors import QapiError
from emu.memory import MemoryRegion
from emu.monitor.protocol import QEMU_PACKAGE, QEMU_VERSION, MachineControl

INFO_HELP = {
    "chardev": "show the character devices",
    "cpus": "show infos for each CPU",
    "mtree": "show memory tree (-f: show flat view for address spaces)",
    "name": "show the current VM name",
    "qtree": "show device tree",
    "status": "show the current VM status (running|paused)",
    "uuid": "show the current VM UUID",
    "version": "show the version of QEMU",
}


class HmpError(Exception):
    """A command-line error; the text is printed as the command's output."""


def run_hmp(machine: MachineControl, line: str, state: dict[str, Any]) -> str:
    """Runs one HMP command line against the monitor's ``MachineControl``; returns its output."""
    words = line.split()
    if not words:
        return ""
    cmd, rest = words[0], words[1:]
    try:
        if cmd == "info":
            if not rest:
                return "".join(f"info {name:<12}-- {text}\n" for name, text in INFO_HELP.items())
            handler = _INFO.get(rest[0])
            if handler is None:
                return f"unknown command: '{_span(line, 2)}'\n"
            return handler(machine, rest[1:])
        if cmd == "xp":
            return _xp(machine, rest, state)
        if cmd in ("stop", "s"):
            machine.stop()
        elif cmd in ("cont", "c"):
            machine.cont()
        elif cmd == "system_reset":
            machine.reset()
        elif cmd == "system_powerdown":
            machine.powerdown()
        elif cmd in ("quit", "q"):
            machine.request_shutdown("host-qmp-quit")
        else:
            return f"unknown command: '{_span(line, 1)}'\n"
    except QapiError as e:
        return f"Error: {e.desc}\n"
    except HmpError as e:
        return str(e)
    return ""


def _span(line: str, words: int) -> str:
    """The command line from its start to the end of its ``words``-th word (as QEMU quotes it)."""
    pos = 0
    for _ in range(words):
        while pos < len(line) and line[pos].isspace():
            pos += 1
        while pos < len(line) and not line[pos].isspace():
            pos += 1
    return line[:pos].lstrip()


# ---- info


def _info_status(machine: MachineControl, args: list[str]) -> str:
    if machine.running:
        return "VM status: running\n"
    state = machine.runstate
    return "VM status: paused\n" if state == "paused" else f"VM status: paused ({state})\n"


def _info_version(machine: MachineControl, args: list[str]) -> str:
    return ".".join(map(str, QEMU_VERSION)) + QEMU_PACKAGE + "\n"


def _info_name(machine: MachineControl, args: list[str]) -> str:
    return f"{machine.name}\n" if machine.name is not None else ""


def _info_uuid(machine: MachineControl, args: list[str]) -> str:
    return (machine.uuid or "00000000-0000-0000-0000-000000000000") + "\n"


def _info_chardev(machine: MachineControl, args: list[str]) -> str:
    return "".join(f"{c['label']}: filename={c['filename']}\n" for c in machine.chardevs())


def _info_cpus(machine: MachineControl, args: list[str]) -> str:
    return "".join(f"{'*' if c['cpu-index'] == 0 else ' '} CPU #{c['cpu-index']}: thread_id={c['thread-id']}\n"
                   for c in machine.cpus())


def _info_mtree(machine: MachineControl, args: list[str]) -> str:
    m = machine.memory
    owners = "-o" in args
    # QEMU lists the address spaces sharing a flat view under it, in creation order
    spaces = [(["memory", "cpu-memory-0"] if m.cpus else ["memory"], m.address_space_memory),
              (["I/O"], m.address_space_io)]
    if "-f" in args:
        return "".join(_flat_view(n, names, asp, owners) for n, (names, asp) in enumerate(spaces))
    out: list[str] = []
    aliased: list[MemoryRegion] = []
    for names, asp in spaces:
        for name in sorted(names):
            out.append(f"address-space: {name}\n")
        _mtree(asp.root, 0, 1, out, aliased)
        out.append("\n")
    done = 0
    while done < len(aliased):  # each alias target is printed once, in the order met
        target = aliased[done]
        done += 1
        out.append(f"memory-region: {target.name}\n")
        _mtree(target, 0, 1, out, aliased)
        out.append("\n")
    return "".join(out)


def _flat_view(n: int, names: list[str], asp: Any, owners: bool) -> str:
    """One ``FlatView #n`` of ``info mtree -f [-o]``, as mtree_print_flatview prints it: neighbouring
    pieces of one region merged (flatview_simplify), a piece's offset in its region after ``@``."""
    out = [f"FlatView #{n}\n"] + [f' AS "{name}", root: {asp.root.name}\n' for name in names]
    out.append(f" Root memory region: {asp.root.name}\n")
    merged: list[list[Any]] = []  # [start, last, mr, offset, readonly]
    for fr in asp.iter_ranges():
        prev = merged[-1] if merged else None
        if (prev is not None and prev[2] is fr.mr and prev[4] == fr.readonly and prev[1] + 1 == fr.start
                and prev[3] + (fr.start - prev[0]) == fr.offset):
            prev[1] = fr.last
        else:
            merged.append([fr.start, fr.last, fr.mr, fr.offset, fr.readonly])
    for start, last, mr, offset, readonly in merged:
        kind = "rom" if readonly else _mr_type(mr)
        text = f"  {start:016x}-{last:016x} (prio {mr.priority}, {kind}): {mr.name}"
        if offset:
            text += f" @{offset:016x}"
        out.append(text + (_mr_owner(mr) if owners else "") + "\n")
    if not merged:
        out.append("  No rendered FlatView\n")
    return "".join(out) + "\n"


def _mr_owner(mr: MemoryRegion) -> str:
    """`` owner:{dev path=...}`` (or ``id=`` for a device given one), as mtree_print_mr_owner; a
    region created without an owner hangs under ``/machine/unattached`` in QEMU."""
    owner = mr.owner
    if owner is None or getattr(owner, "parent", None) is None:
        return " parent:{obj path=/machine/unattached}"
    from emu.devices.base import Device

    label = "dev" if isinstance(owner, Device) else "obj"
    # a device given an id (-device ...,id=ID) lives at /machine/peripheral/ID
    if label == "dev" and owner.parent.path == "/machine/peripheral":
        return f" owner:{{dev id={owner.qom_name}}}"
    return f" owner:{{{label} path={owner.path}}}"


def _mr_type(mr: MemoryRegion) -> str:
    while mr.kind == "alias" and mr.alias_target is not None:
        mr = mr.alias_target
    return {"ram": "ram", "rom": "rom"}.get(mr.kind, "i/o")


def _mtree(mr: MemoryRegion, base: int, level: int, out: list[str], aliased: list[MemoryRegion]) -> None:
    start = base + mr.addr if mr.parent is not None else base
    last = start + mr.size - 1
    if mr.enabled:
        text = f"{'  ' * level}{start:016x}-{last:016x} (prio {mr.priority}, {_mr_type(mr)}): "
        if mr.kind == "alias" and mr.alias_target is not None:
            target = mr.alias_target
            if target not in aliased:
                aliased.append(target)
            text += (f"alias {mr.name} @{target.name} {mr.alias_offset:016x}-"
                     f"{mr.alias_offset + mr.size - 1:016x}")
        else:
            text += mr.name
        out.append(text + "\n")
        level += 1  # a disabled region is not printed, but its subregions are, one level deeper
    for sub in sorted(mr.subregions, key=lambda s: (s.addr, -s.priority)):
        _mtree(sub, start, level + (0 if mr.enabled else 1), out, aliased)


def _info_qtree(machine: MachineControl, args: list[str]) -> str:
    from emu.devices.base import Device

    m = machine.memory
    mmio: dict[int, list[tuple[int, int]]] = {}
    for fr_owner in _mapped_io(m.system_memory, 0):
        owner, addr, size = fr_owner
        mmio.setdefault(id(owner), []).append((addr, size))
    out = ["bus: main-system-bus\n", "  type System\n"]
    for dev in (d for d in m.root.walk() if isinstance(d, Device)):
        out.append(f'  dev: {dev.type_name}, id ""\n')
        for name, lines in dev.gpio_in.items():
            out.append(f'    gpio-in "{name or ""}" {len(lines)}\n')
        for name, outs in dev.gpio_out.items():
            out.append(f'    gpio-out "{name or ""}" {len(outs)}\n')
        for addr, size in mmio.get(id(dev), []):
            out.append(f"    mmio {addr:016x}/{size:016x}\n")
    return "".join(out)


def _mapped_io(mr: MemoryRegion, base: int) -> list[tuple[Any, int, int]]:
    found = []
    for sub in mr.subregions:
        if sub.kind == "io" and sub.owner is not None:
            found.append((sub.owner, base + sub.addr, sub.size))
        found.extend(_mapped_io(sub, base + sub.addr))
    return found


_INFO: dict[str, Callable[[MachineControl, list[str]], str]] = {
    "status": _info_status, "version": _info_version, "name": _info_name, "uuid": _info_uuid,
    "chardev": _info_chardev, "cpus": _info_cpus, "mtree": _info_mtree, "qtree": _info_qtree,
}


# ---- xp


_SIZES = {"b": 1, "h": 2, "w": 4, "g": 8}


def _xp(machine: MachineControl, args: list[str], state: dict[str, Any]) -> str:
    """``xp /[count][format][size] addr``: physical memory; format and size stick between calls."""
    fmt, size = state.get("fmt", "x"), state.get("size", 4)
    count = 1
    if args and args[0].startswith("/"):
        spec = args.pop(0)[1:]
        count_text = ""
        while spec and spec[0].isdigit():
            count_text, spec = count_text + spec[0], spec[1:]
        count = int(count_text) if count_text else 1
        for ch in spec:
            if ch in _SIZES:
                size = _SIZES[ch]
            elif ch in "xduoc":
                fmt = ch
            else:
                raise HmpError(f"invalid char in format: '{ch}'\n")
        state["fmt"], state["size"] = fmt, size
    if not args:
        raise HmpError('unexpected end of expression\nTry "help xp" for more information\n')
    try:
        addr = int(args[0], 0) & ((1 << 64) - 1)
    except ValueError:
        raise HmpError("invalid char in expression\nTry \"help xp\" for more information\n") from None
    if fmt == "c":
        size = 1
    digits = {"x": size * 2, "o": (size * 8 + 2) // 3, "u": (size * 80 + 32) // 33, "d": (size * 80 + 32) // 33}
    asp = machine.memory.address_space_memory
    line_size = 8 if size == 1 else 16
    left = size * count
    out = []
    while left > 0:
        n = min(left, line_size)
        text = f"{addr:016x}:"
        if not asp.covered(addr, n):
            out.append(text + " Cannot access memory\n")
            break
        data = asp.read(addr, n)
        for i in range(0, n, size):
            v = int.from_bytes(data[i:i + size], "little")
            if fmt == "x":
                text += f" 0x{v:0{digits['x']}x}"
            elif fmt == "o":
                text += " " + f"{v:#o}".replace("0o", "0").rjust(digits["o"])
            elif fmt == "u":
                text += f" {v:{digits['u']}d}"
            elif fmt == "d":
                signed = v - (1 << (8 * size)) if v >> (8 * size - 1) else v
                text += f" {signed:{digits['d']}d}"
            else:
                text += " " + _char(v)
        out.append(text + "\n")
        addr = (addr + n) & ((1 << 64) - 1)
        left -= n
    return "".join(out)


def _char(c: int) -> str:
    special = {0x27: "\\'", 0x5C: "\\\\", 0x0A: "\\n", 0x0D: "\\r"}
    return "'" + special.get(c, chr(c) if 32 <= c <= 126 else f"\\x{c:02x}") + "'"
