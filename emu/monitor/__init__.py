"""QMP monitor: QEMU-compatible JSON, the protocol core, the QAPI schema and the commands.

Modules, lowest first (of the monitor, each imports only modules listed before it):

``emu.monitor.qjson``               streaming parser and QEMU's serializer (QDict key order)
``emu.monitor.ghash``               which unexpected argument QEMU names first (GLib hash order)
``emu.monitor.schema_core``         the core schema, transcribed from QEMU 9.1's qapi/*.json (plain data)
``emu.monitor.fds``                 getfd names and fd sets
``emu.monitor.qapi``                the schema engine: QEMU's input visitor and introspection
``emu.monitor.protocol``            QmpServer / QmpSession / CommandRegistry / MachineControl
``emu.monitor.hmp``                 the human monitor subset behind human-monitor-command
``emu.monitor.commands``            the handlers of the core commands; ``register(registry)``
``emu.monitor.migration_commands``  the migration schema and commands; ``register(registry)``
``emu.monitor.registry``            ``build_registry()``: the emulator's full command set
``emu.monitor.frontend``            wiring to chardevs and the VM

Commands are registered explicitly by whoever assembles the monitor, never on import.
Nothing is imported here so that ``import emu.monitor.qjson`` stays cheap.
"""
