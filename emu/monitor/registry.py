"""The emulator's QMP command set: :func:`build_registry` assembles it explicitly.

The top of ``emu.monitor`` below the front-end wiring: it imports the command modules and calls
their ``register(registry)``; no module registers anything as a side effect of being imported.
Only the assemblers (``frontend``, tests, the fuzzers) import this module.
"""
from __future__ import annotations

from emu.monitor import commands, migration_commands
from emu.monitor.protocol import CommandRegistry
from emu.monitor.qapi import Schema
from emu.monitor.schema_core import SCHEMA

__all__ = ["build_registry"]


def build_registry() -> CommandRegistry:
    """A new registry with every command the emulator implements: the core schema and commands, then the
    migration schema and commands (in that order, which ``query-commands`` and ``query-qmp-schema`` show)."""
    registry = CommandRegistry(Schema(SCHEMA))
    commands.register(registry)
    migration_commands.register(registry)
    return registry
