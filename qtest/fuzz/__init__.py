"""Fuzzers for the emulator: generic qtest ops (QEMU's generic-fuzz encoding), migration streams and
QMP messages. ``python -m qtest.fuzz {qtest,stream,qmp} --time S | --count N [--jobs N]``.

Each target module (``generic``, ``stream``, ``qmp``) offers ``add_arguments(parser)`` and
``Target(args)`` with ``run_one(data: bytes) -> Finding | None`` and ``generate(rng) -> bytes``;
:mod:`qtest.fuzz.common` runs them, in parallel workers, with a live progress line, and saves
every finding as a minimised reproducer.
"""
