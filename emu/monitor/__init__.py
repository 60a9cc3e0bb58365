"""QMP monitor: QEMU-compatible JSON, the protocol core, the QAPI schema and the commands.

``emu.monitor.qjson``        streaming parser and QEMU's serializer (QDict key order)
``emu.monitor.protocol``     QmpServer / QmpSession / command registry / MachineControl
``emu.monitor.qapi``         the schema engine: QEMU's input visitor and introspection
``emu.monitor.ghash``        which unexpected argument QEMU names first (GLib hash order)
``emu.monitor.schema_core``  the core schema, transcribed from QEMU 9.1's qapi/*.json
``emu.monitor.commands``     the handlers of the core commands and the default registry
``emu.monitor.hmp``          the human monitor subset behind human-monitor-command
``emu.monitor.fds``          getfd names and fd sets
``emu.monitor.frontend``     wiring to chardevs and the VM

Nothing is imported here so that ``import emu.monitor.qjson`` stays cheap.
"""
