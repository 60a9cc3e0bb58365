"""emu: the emulator (machine, devices, vCPU, QMP monitor, migration) started as ``emu-system-x86_64``.

The package itself is a leaf: it imports nothing, so importing any submodule costs only that
submodule. Its layers are in ``docs/layers.md``.
"""
