"""The migration QMP commands: declared in the schema, handled by the VM's MigrationManager.

Importing this module adds them to the default registry (``emu.monitor.commands.REGISTRY``).
"""
from __future__ import annotations

from typing import Any

from emu.migration import schema, schema_params, schema_state
from emu.migration.address import MigrationAddressError, parse_migration_uri, resolve_migrate_args
from emu.migration.manager import MigrationError
from emu.monitor.commands import REGISTRY, command
from emu.monitor.protocol import CommandContext, QmpError

REGISTRY.schema.extend(schema.SCHEMA + [e for e in schema_params.SCHEMA if "alternate" not in e or
                                        e["alternate"] not in REGISTRY.schema.entities] + schema_state.SCHEMA)


def _manager(ctx: CommandContext) -> Any:
    return ctx.machine.migration


def _address(ctx: CommandContext, args: dict[str, Any], incoming: bool) -> Any:
    mgr = _manager(ctx)
    caps = {c["capability"]: c["state"] for c in mgr.config.query_capabilities()}
    try:
        return resolve_migrate_args(args, incoming=incoming, caps=caps,
                                    direct_io=bool(mgr.config.parameter("direct-io")))
    except MigrationAddressError as e:
        raise QmpError(str(e)) from None


@command("migrate")
def migrate(ctx: CommandContext, args: dict[str, Any]) -> None:
    addr = _address(ctx, args, incoming=False)  # 9.1: the uri/channels preamble comes first
    if args.get("resume"):  # migrate_prepare: no postcopy here, so nothing is ever paused
        raise QmpError("Cannot resume if there is no paused migration")
    try:
        _manager(ctx).migrate(addr)
    except MigrationError as e:
        raise QmpError(str(e)) from None


@command("migrate-incoming")
def migrate_incoming(ctx: CommandContext, args: dict[str, Any]) -> None:
    mgr = _manager(ctx)
    if mgr.incoming_started:
        raise QmpError("The incoming migration has already been started")
    if ctx.machine.runstate != "inmigrate":
        raise QmpError("'-incoming' was not specified on the command line")
    addr = _address(ctx, args, incoming=True)
    try:
        mgr.incoming(addr, args.get("exit-on-error", True))
    except MigrationError as e:
        raise QmpError(str(e)) from None


@command("migrate_cancel")
def migrate_cancel(ctx: CommandContext, args: dict[str, Any]) -> None:
    _manager(ctx).cancel()


@command("migrate-continue")
def migrate_continue(ctx: CommandContext, args: dict[str, Any]) -> None:
    try:
        _manager(ctx).continue_from(args["state"])
    except MigrationError as e:
        raise QmpError(str(e)) from None


@command("query-migrate")
def query_migrate(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    return _manager(ctx).info()


@command("migrate-set-capabilities")
def migrate_set_capabilities(ctx: CommandContext, args: dict[str, Any]) -> None:
    mgr = _manager(ctx)
    mgr.config.set_capabilities(args["capabilities"], mgr.status, incoming_started=mgr.incoming_listening,
                                inmigrate=ctx.machine.runstate == "inmigrate")


@command("query-migrate-capabilities")
def query_migrate_capabilities(ctx: CommandContext, args: dict[str, Any]) -> list[dict[str, Any]]:
    return _manager(ctx).config.query_capabilities()


@command("migrate-set-parameters")
def migrate_set_parameters(ctx: CommandContext, args: dict[str, Any]) -> None:
    _manager(ctx).config.set_parameters(args)


@command("query-migrate-parameters")
def query_migrate_parameters(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    return _manager(ctx).config.query_parameters()


__all__ = ["parse_migration_uri"]
