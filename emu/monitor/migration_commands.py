"""The migration QMP commands: their schema and handlers, which call the VM's ``MigrationManager``.

:func:`register` declares the migration schema (``emu.migration.schema``, ``schema_params`` and
``schema_state``: plain data) in a registry built on the core schema and registers the handlers;
``emu.monitor.registry.build_registry()`` calls it after the core commands. Nothing happens on
import. A front end above ``emu.migration``: it calls down into it, and ``emu.migration`` imports
nothing of the monitor.
"""
from __future__ import annotations

from typing import Any

from emu.errors import QapiError
from emu.migration import dirtyrate, schema, schema_params, schema_state
from emu.migration.address import MigrationAddress, MigrationAddressError, resolve_migrate_args
from emu.migration.manager import MigrationError, MigrationManager
from emu.monitor.protocol import CommandContext, CommandRegistry

__all__ = ["register"]


def _manager(ctx: CommandContext) -> MigrationManager:
    return ctx.machine.migration


def _address(ctx: CommandContext, args: dict[str, Any], incoming: bool) -> MigrationAddress:
    mgr = _manager(ctx)
    caps = {c["capability"]: c["state"] for c in mgr.config.query_capabilities()}
    try:
        return resolve_migrate_args(args, incoming=incoming, caps=caps,
                                    direct_io=bool(mgr.config.parameter("direct-io")))
    except MigrationAddressError as e:
        raise QapiError(str(e)) from None


def migrate(ctx: CommandContext, args: dict[str, Any]) -> None:
    addr = _address(ctx, args, incoming=False)  # 9.1: the uri/channels preamble comes first
    try:
        if args.get("resume"):
            _manager(ctx).resume(addr)
        else:
            _manager(ctx).migrate(addr)
    except MigrationError as e:
        raise QapiError(str(e)) from None


def migrate_start_postcopy(ctx: CommandContext, args: dict[str, Any]) -> None:
    try:
        _manager(ctx).start_postcopy()
    except MigrationError as e:
        raise QapiError(str(e)) from None


def migrate_recover(ctx: CommandContext, args: dict[str, Any]) -> None:
    mgr = _manager(ctx)
    if mgr.in_status != "postcopy-paused":  # checked before the uri is looked at, as QEMU does
        raise QapiError("Migrate recover can only be run when postcopy is paused.")
    addr = _address(ctx, {"uri": args["uri"]}, incoming=True)
    try:
        mgr.recover(addr)
    except MigrationError as e:
        raise QapiError(str(e)) from None


def migrate_pause(ctx: CommandContext, args: dict[str, Any]) -> None:
    mgr = _manager(ctx)
    if not mgr.pause_source() and not mgr.pause_destination():
        raise QapiError("migrate-pause is currently only supported during postcopy-active or postcopy-recover state")


def migrate_incoming(ctx: CommandContext, args: dict[str, Any]) -> None:
    mgr = _manager(ctx)
    if mgr.incoming_started:
        raise QapiError("The incoming migration has already been started")
    if ctx.machine.runstate != "inmigrate":
        raise QapiError("'-incoming' was not specified on the command line")
    addr = _address(ctx, args, incoming=True)
    try:
        mgr.incoming(addr, args.get("exit-on-error", True))
    except MigrationError as e:
        raise QapiError(str(e)) from None


def migrate_cancel(ctx: CommandContext, args: dict[str, Any]) -> None:
    _manager(ctx).cancel()


def migrate_continue(ctx: CommandContext, args: dict[str, Any]) -> None:
    try:
        _manager(ctx).continue_from(args["state"])
    except MigrationError as e:
        raise QapiError(str(e)) from None


def query_migrate(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    return _manager(ctx).info()


def migrate_set_capabilities(ctx: CommandContext, args: dict[str, Any]) -> None:
    mgr = _manager(ctx)
    # postcopy-preempt: 9.1 refuses it once the listener is up, since its listener sorts channels by
    # the capabilities it started with; ours sorts each connection as it comes, so it can be set
    # until the main channel is in (and again once that load ended), as 7.2 allowed (QEMU 7.2's
    # migration-test sets it while the destination listens)
    mgr.config.set_capabilities(args["capabilities"], mgr.status, incoming_started=mgr.incoming_listening,
                                inmigrate=ctx.machine.runstate == "inmigrate",
                                preempt_locked=mgr.in_status == "active" or mgr.in_status.startswith("postcopy"))


def query_migrate_capabilities(ctx: CommandContext, args: dict[str, Any]) -> list[dict[str, Any]]:
    return _manager(ctx).config.query_capabilities()


def migrate_set_parameters(ctx: CommandContext, args: dict[str, Any]) -> None:
    _manager(ctx).config.set_parameters(args)


def query_migrate_parameters(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    return _manager(ctx).config.query_parameters()


def calc_dirty_rate(ctx: CommandContext, args: dict[str, Any]) -> None:
    _manager(ctx).dirtyrate.calc(args)


def query_dirty_rate(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    return _manager(ctx).dirtyrate.query(args.get("calc-time-unit", "second"))


def set_vcpu_dirty_limit(ctx: CommandContext, args: dict[str, Any]) -> None:
    if not args["dirty-rate"]:  # QEMU: 0 cancels
        _manager(ctx).dirtyrate.cancel_limit(args)
        return
    _manager(ctx).dirtyrate.set_limit(args)


def cancel_vcpu_dirty_limit(ctx: CommandContext, args: dict[str, Any]) -> None:
    _manager(ctx).dirtyrate.cancel_limit(args)


def query_vcpu_dirty_limit(ctx: CommandContext, args: dict[str, Any]) -> list[dict[str, int]]:
    return _manager(ctx).dirtyrate.query_limit()


#: The handlers by command name, in registration order (``query-commands`` reports it reversed).
_HANDLERS = {
    "migrate": migrate, "migrate-incoming": migrate_incoming, "migrate_cancel": migrate_cancel,
    "migrate-continue": migrate_continue, "query-migrate": query_migrate,
    "migrate-set-capabilities": migrate_set_capabilities, "query-migrate-capabilities": query_migrate_capabilities,
    "migrate-set-parameters": migrate_set_parameters, "query-migrate-parameters": query_migrate_parameters,
    "migrate-start-postcopy": migrate_start_postcopy, "migrate-recover": migrate_recover,
    "migrate-pause": migrate_pause, "calc-dirty-rate": calc_dirty_rate, "query-dirty-rate": query_dirty_rate,
    "set-vcpu-dirty-limit": set_vcpu_dirty_limit, "cancel-vcpu-dirty-limit": cancel_vcpu_dirty_limit,
    "query-vcpu-dirty-limit": query_vcpu_dirty_limit,
}


def register(registry: CommandRegistry) -> None:
    """Declare the migration schema in ``registry`` (built on the core schema) and register the handlers."""
    defined = registry.schema.entities
    # an alternate the registry's schema already has (StrOrNull, once another module declared it) is not redefined
    registry.schema.extend(schema.SCHEMA + [e for e in schema_params.SCHEMA if e.get("alternate") not in defined]
                           + schema_state.SCHEMA + dirtyrate.SCHEMA)
    for name, handler in _HANDLERS.items():
        registry.command(name)(handler)
