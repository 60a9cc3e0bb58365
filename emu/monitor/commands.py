"""The built-in QMP commands and the default command registry.

Other modules add commands to the same registry with the decorator::

    from emu.monitor.commands import Arg, command

    @command("migrate-set-capabilities", args=[Arg("capabilities", "[MigrationCapabilityStatus]")])
    def migrate_set_capabilities(ctx, args): ...

Handlers receive a :class:`~emu.monitor.protocol.CommandContext` and the
validated argument dict (QAPI member names, absent optionals left out) and
return the ``return`` value (None stands for ``{}``), or raise ``QmpError``.
"""

from __future__ import annotations

from typing import Any

from emu.monitor.protocol import Arg, CommandContext, CommandRegistry, QmpError

__all__ = ["REGISTRY", "command", "Arg"]

#: The registry every QmpServer uses unless given another one.
REGISTRY = CommandRegistry()
#: Decorator registering a command in :data:`REGISTRY`.
command = REGISTRY.command

REGISTRY.define_enum("QMPCapability", ("oob",))


@command("qmp_capabilities", args=[Arg("enable", "[QMPCapability]", optional=True)], allow_preneg=True)
def qmp_capabilities(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    """Leave capabilities negotiation mode, optionally enabling ``oob``."""
    session = ctx.session
    if session is None or session.negotiated:
        raise QmpError("Capabilities negotiation is already complete, command ignored", "CommandNotFound")
    enable = args.get("enable", [])
    if "oob" in enable and not ctx.server.offer_oob:
        raise QmpError("Capability oob not available")
    session.negotiate("oob" in enable)
    return {}


@command("query-version")
def query_version(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    """Return the VersionInfo we claim (QEMU 9.1.0, package ``qtest-emu``)."""
    version = ctx.server.version
    return {"qemu": dict(version["qemu"]), "package": version["package"]}


@command("query-status")
def query_status(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    """Return StatusInfo. ``singlestep`` is always false (kept as 7.2 prints it)."""
    machine = ctx.machine
    # Schema member order; dumps() turns it into QEMU's status, singlestep, running.
    return {"running": bool(machine.running), "singlestep": False, "status": machine.runstate}


@command("stop")
def stop(ctx: CommandContext, args: dict[str, Any]) -> None:
    """Pause the VM; the machine emits STOP."""
    ctx.machine.stop()


@command("cont")
def cont(ctx: CommandContext, args: dict[str, Any]) -> None:
    """Resume the VM; the machine emits RESUME."""
    ctx.machine.cont()


@command("quit")
def quit_(ctx: CommandContext, args: dict[str, Any]) -> None:
    """Request shutdown: reply now; the main loop then emits SHUTDOWN, closes and exits."""
    ctx.machine.request_shutdown("host-qmp-quit")


@command("query-commands")
def query_commands(ctx: CommandContext, args: dict[str, Any]) -> list[dict[str, str]]:
    """List the commands (QEMU builds the list by prepending, hence reversed)."""
    return [{"name": name} for name in reversed(ctx.server.registry.names())]


def _qom_resolve(ctx: CommandContext, path: str) -> Any:
    from emu.qom import resolve_path

    obj = resolve_path(ctx.machine.qom_root, path)
    if obj is None:
        raise QmpError(f"Device '{path}' not found", "DeviceNotFound")
    return obj


def _qom_properties(obj: Any) -> list[tuple[str, str, Any]]:
    """(name, QOM type, value) of an object's properties: ``type``, its children, device state."""
    props: list[tuple[str, str, Any]] = [("type", "string", obj.type_name)]
    from emu.devices.base import Device

    if isinstance(obj, Device):
        props.append(("realized", "bool", True))
    props.extend((name, f"child<{child.type_name}>", child.path) for name, child in obj.children.items())
    props.extend((name, type(value).__name__, value) for name, value in obj.properties.items())
    return props


@command("qom-list", args=[Arg("path", "str")])
def qom_list(ctx: CommandContext, args: dict[str, Any]) -> list[dict[str, str]]:
    """The properties of the object at ``path`` (absolute or a unique partial path)."""
    obj = _qom_resolve(ctx, args["path"])
    return [{"name": name, "type": typ} for name, typ, _ in _qom_properties(obj)]


@command("qom-get", args=[Arg("path", "str"), Arg("property", "str")])
def qom_get(ctx: CommandContext, args: dict[str, Any]) -> Any:
    """One property's value; child properties give the child's path, as in QEMU."""
    obj = _qom_resolve(ctx, args["path"])
    for name, _, value in _qom_properties(obj):
        if name == args["property"]:
            return value
    raise QmpError(f"Property '{args['property']}' not found")
