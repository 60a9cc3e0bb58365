"""QMP monitor: QEMU-compatible JSON, the protocol core and the commands.

``emu.monitor.qjson``     streaming parser and QEMU's serializer
``emu.monitor.protocol``  QmpServer / QmpSession / registry / MachineControl
``emu.monitor.commands``  the built-in commands and the default registry

Nothing is imported here so that ``import emu.monitor.qjson`` stays cheap.
"""
