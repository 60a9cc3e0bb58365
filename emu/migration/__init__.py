"""Live migration: ``uri``/``channels`` addressing (``address``), its QAPI schema (``schema``),
and, below them, the transports and the migration stream (see DESIGN.md "Migration")."""
