"""Live migration: ``uri``/``channels`` addressing (``address``), its QAPI schema as plain data
(``schema``, ``schema_params``, ``schema_state``), capabilities and parameters (``params``), and,
below them, the transports and the migration stream (see DESIGN.md "Migration").

A service below the front ends: nothing here imports ``emu.monitor`` (the migration QMP commands
are ``emu.monitor.migration_commands``; a QAPI error is ``emu.errors.QapiError``).
``emu.migration.vmstate`` is a leaf that the devices import.
"""
