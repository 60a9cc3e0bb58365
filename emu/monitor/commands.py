"""The handlers of the core schema's QMP commands (``schema_core.py``), registered by :func:`register`.

Each handler is thin: it reads its validated arguments, calls one machine-level function through
``ctx.machine`` (a ``MachineControl``, implemented by emu.control.SystemControl) and shapes the
reply. Handlers return the ``return`` value (None stands for ``{}``) or raise ``QapiError``.

Nothing is registered on import: whoever assembles the monitor calls ``register(registry)``
(``emu.monitor.registry.build_registry()`` does, for the emulator's full command set).
Above ``protocol``, ``qapi``, ``fds`` and ``hmp``; below ``registry``, which alone imports it.
The user-creatable objects (``object-add``) are ``emu.tls``'s: importing it defines their classes,
which is what puts their QOM types in ``qom-list-types``.
"""
from __future__ import annotations

import os
from typing import Any

from emu.errors import QapiError
from emu.monitor.fds import NamedFds
from emu.monitor.hmp import run_hmp
from emu.monitor.protocol import CommandContext, CommandRegistry
from emu.qom import TYPES, QomError, resolve_path, type_ancestry
from emu.tls import ObjectRegistry, TlsError, objects_registry

__all__ = ["register"]


# ---- control.json


def qmp_capabilities(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    """Leave capabilities negotiation mode, optionally enabling ``oob``."""
    session = ctx.session
    if session is None or session.negotiated:
        raise QapiError("Capabilities negotiation is already complete, command ignored", "CommandNotFound")
    enable = args.get("enable", [])
    if "oob" in enable and not ctx.server.offer_oob:
        raise QapiError("Capability oob not available")
    session.negotiate("oob" in enable)
    return {}


def query_version(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    """The VersionInfo we claim (QEMU 9.1.0, package ``qtest-emu``)."""
    version = ctx.server.version
    return {"qemu": dict(version["qemu"]), "package": version["package"]}


def query_commands(ctx: CommandContext, args: dict[str, Any]) -> list[dict[str, str]]:
    """The commands (QEMU builds the list by prepending, hence reversed)."""
    return [{"name": name} for name in reversed(ctx.server.registry.names())]


def quit_(ctx: CommandContext, args: dict[str, Any]) -> None:
    """SHUTDOWN is emitted now; the main loop then closes the monitors and exits 0."""
    ctx.machine.request_shutdown("host-qmp-quit")


def query_qmp_schema(ctx: CommandContext, args: dict[str, Any]) -> list[dict[str, Any]]:
    """SchemaInfo for every command and event of the registry's schema (QEMU's masking)."""
    return ctx.server.registry.schema.introspect()


# ---- run-state.json, machine.json


def query_status(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    """StatusInfo: ``running`` and ``status`` (9.1 dropped ``singlestep``)."""
    machine = ctx.machine
    return {"running": bool(machine.running), "status": machine.runstate}


def stop(ctx: CommandContext, args: dict[str, Any]) -> None:
    """Pause the VM; the machine emits STOP."""
    ctx.machine.stop()


def cont(ctx: CommandContext, args: dict[str, Any]) -> None:
    """Resume the VM; the machine emits RESUME."""
    ctx.machine.cont()


def system_reset(ctx: CommandContext, args: dict[str, Any]) -> None:
    """Reset the machine; RESET (reason ``host-qmp-system-reset``) goes out before the reply."""
    ctx.machine.reset()


def system_powerdown(ctx: CommandContext, args: dict[str, Any]) -> None:
    """Press the power button: POWERDOWN, whatever the guest does with it."""
    ctx.machine.powerdown()


def set_action(ctx: CommandContext, args: dict[str, Any]) -> None:
    """What guest reboot, shutdown, panic and watchdog expiry do from now on."""
    ctx.machine.set_actions(args)


def watchdog_set_action(ctx: CommandContext, args: dict[str, Any]) -> None:
    """The watchdog's action from now on (the same as ``set-action`` with only ``watchdog``)."""
    ctx.machine.set_actions({"watchdog": args["action"]})


def query_name(ctx: CommandContext, args: dict[str, Any]) -> dict[str, str]:
    name = ctx.machine.name
    return {} if name is None else {"name": name}


def query_kvm(ctx: CommandContext, args: dict[str, Any]) -> dict[str, bool]:
    """``present``: this emulator has a KVM accelerator (QEMU: built with KVM), whether or not the
    host has /dev/kvm; ``enabled``: the VM runs with it."""
    return {"enabled": ctx.machine.accel == "kvm", "present": True}


def query_uuid(ctx: CommandContext, args: dict[str, Any]) -> dict[str, str]:
    return {"UUID": ctx.machine.uuid or "00000000-0000-0000-0000-000000000000"}


def query_machines(ctx: CommandContext, args: dict[str, Any]) -> list[dict[str, Any]]:
    """One MachineInfo per machine type (``compat-props``: we set none, so an empty list)."""
    out = []
    for info in ctx.machine.machine_types():
        if args.get("compat-props"):
            info = {**info, "compat-props": []}
        out.append(info)
    return out


def query_cpus_fast(ctx: CommandContext, args: dict[str, Any]) -> list[dict[str, Any]]:
    return ctx.machine.cpus()


def query_chardev(ctx: CommandContext, args: dict[str, Any]) -> list[dict[str, Any]]:
    return ctx.machine.chardevs()


# ---- qom.json


def _qom_object(ctx: CommandContext, path: str) -> Any:
    obj = resolve_path(ctx.machine.qom_root, path)
    if obj is None:
        raise QapiError(f"Device '{path}' not found", "DeviceNotFound")
    return obj


def qom_list(ctx: CommandContext, args: dict[str, Any]) -> list[dict[str, str]]:
    """The properties of an object (absolute or unique partial path)."""
    path = args["path"]
    if path == "":
        raise QapiError("Path '' is ambiguous")
    obj = resolve_path(ctx.machine.qom_root, path)
    if obj is None:
        raise QapiError(f"Device '{path}' not found", "DeviceNotFound")
    return [{"name": p.name, "type": p.type} for p in obj.qom_properties()]


def _qom_prop(obj: Any, name: str) -> Any:
    try:
        return obj.qom_property(name)
    except QomError as e:
        raise QapiError(str(e)) from None


def qom_get(ctx: CommandContext, args: dict[str, Any]) -> Any:
    """One property's value; a child property reads as the child's path."""
    return _qom_prop(_qom_object(ctx, args["path"]), args["property"]).get()


def qom_set(ctx: CommandContext, args: dict[str, Any]) -> None:
    """Set a property; the value is checked against the property's type by the QAPI visitor,
    with the property's name where QEMU reports one."""
    obj = _qom_object(ctx, args["path"])
    prop = _qom_prop(obj, args["property"])
    try:
        obj.check_writable(prop)
    except QomError as e:
        raise QapiError(str(e)) from None
    value = args["value"]
    if prop.qapi_type is not None:
        value = ctx.server.registry.schema.visit(prop.qapi_type, value, prop.name, prop.name)
    try:
        prop.setter(value)
    except QomError as e:
        raise QapiError(str(e)) from None


def qom_list_types(ctx: CommandContext, args: dict[str, Any]) -> list[dict[str, Any]]:
    """Types implementing ``implements`` (all when absent); abstract ones only if asked for."""
    want_abstract = args.get("abstract", False)
    implements = args.get("implements")
    out = []
    for name, (parent, abstract) in TYPES.items():
        if abstract and not want_abstract:
            continue
        if implements is not None and implements not in type_ancestry(name):
            continue
        info: dict[str, Any] = {"name": name}
        if abstract:
            info["abstract"] = True
        if parent is not None:
            info["parent"] = parent
        out.append(info)
    return out


# ---- qom.json: user-creatable objects (emu.tls: TLS credentials, authz-simple)


def _objects(ctx: CommandContext) -> ObjectRegistry:
    """The ``/objects`` registry of the machine's QOM root (``emu.tls.objects_registry``)."""
    return objects_registry(ctx.machine.qom_root)


def object_add(ctx: CommandContext, args: dict[str, Any]) -> None:
    """Create, add under ``/objects/<id>`` and complete (load) a user-creatable object."""
    props = dict(args)
    qom_type, obj_id = props.pop("qom-type"), props.pop("id")
    try:
        _objects(ctx).create(qom_type, obj_id, props)
    except TlsError as e:
        raise QapiError(str(e)) from None


def object_del(ctx: CommandContext, args: dict[str, Any]) -> None:
    try:
        _objects(ctx).delete(args["id"])
    except TlsError as e:
        raise QapiError(str(e)) from None


# ---- misc.json: file descriptors


def _received_fd(ctx: CommandContext) -> int:
    fd = ctx.session.take_fd() if ctx.session is not None else None
    if fd is None:
        raise QapiError("No file descriptor supplied via SCM_RIGHTS")
    return fd


def _named_fds(ctx: CommandContext) -> Any:
    """The monitor's getfd names (the chardev front-end keeps them across reconnects, as QEMU's
    monitor does; a session without one gets its own)."""
    session = ctx.session
    named = getattr(session, "named_fds", None)
    if named is None:
        named = NamedFds()
        if session is not None:
            session.named_fds = named  # type: ignore[attr-defined]
    return named


def getfd(ctx: CommandContext, args: dict[str, Any]) -> None:
    """Name the fd that came with this command (a reused name replaces, and closes, the old fd)."""
    fd = _received_fd(ctx)
    _named_fds(ctx).set(args["fdname"], fd)


def closefd(ctx: CommandContext, args: dict[str, Any]) -> None:
    _named_fds(ctx).close(args["fdname"])


def add_fd(ctx: CommandContext, args: dict[str, Any]) -> dict[str, int]:
    """Put the fd that came with this command into an fd set (a new one unless ``fdset-id``)."""
    fd = _received_fd(ctx)  # QEMU takes the fd before it looks at the set id
    fdset_id = args.get("fdset-id")
    if fdset_id is not None and fdset_id < 0:
        os.close(fd)
        raise QapiError("Parameter 'fdset-id' expects a non-negative value")
    set_id, fd = ctx.machine.fdsets.add(fd, fdset_id, args.get("opaque"))
    return {"fdset-id": set_id, "fd": fd}


def remove_fd(ctx: CommandContext, args: dict[str, Any]) -> None:
    """Close one member (or, without ``fd``, every member) of an fd set, at once (9.1)."""
    ctx.machine.fdsets.remove(args["fdset-id"], args.get("fd"))


def query_fdsets(ctx: CommandContext, args: dict[str, Any]) -> list[dict[str, Any]]:
    """Sets in descending id order (QEMU prepends while walking its sorted list)."""
    return list(reversed(ctx.machine.fdsets.query()))


# ---- HMP


def human_monitor_command(ctx: CommandContext, args: dict[str, Any]) -> str:
    """Run one HMP command line and return its output (``\\n`` sent as ``\\r\\n``)."""
    cpu = args.get("cpu-index")
    if cpu is not None and not 0 <= cpu < len(ctx.machine.cpus()):
        raise QapiError("Parameter 'cpu-index' expects a CPU number")
    session = ctx.session
    state = getattr(session, "hmp_state", None)
    if state is None:
        state = {}
        if session is not None:
            session.hmp_state = state  # type: ignore[attr-defined]  # xp's sticky format and size
    return run_hmp(ctx.machine, args["command-line"], state).replace("\n", "\r\n")


# ---- registration

#: Every handler but ``qmp_capabilities``, by command name, in registration order (which
#: ``query-commands`` reports, reversed).
_HANDLERS = {
    "query-version": query_version, "query-commands": query_commands, "quit": quit_,
    "query-qmp-schema": query_qmp_schema, "query-status": query_status, "stop": stop, "cont": cont,
    "system_reset": system_reset, "system_powerdown": system_powerdown, "set-action": set_action,
    "watchdog-set-action": watchdog_set_action, "query-name": query_name, "query-uuid": query_uuid,
    "query-kvm": query_kvm,
    "query-machines": query_machines, "query-cpus-fast": query_cpus_fast, "query-chardev": query_chardev,
    "qom-list": qom_list, "qom-get": qom_get, "qom-set": qom_set, "qom-list-types": qom_list_types,
    "object-add": object_add, "object-del": object_del, "getfd": getfd, "closefd": closefd, "add-fd": add_fd,
    "remove-fd": remove_fd, "query-fdsets": query_fdsets, "human-monitor-command": human_monitor_command,
}


def register(registry: CommandRegistry) -> None:
    """Register the core commands' handlers in ``registry``, whose schema declares them (``schema_core``)."""
    registry.command("qmp_capabilities", allow_preneg=True)(qmp_capabilities)  # the one allowed before negotiation
    for name, handler in _HANDLERS.items():
        registry.command(name)(handler)
