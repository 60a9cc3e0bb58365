"""Generic qtest fuzzer: QEMU's generic-fuzz input encoding run against the emulator.

This module is the ``qtest`` fuzz target's front (``python -m qtest.fuzz qtest ...``; with
``--atheris`` see :mod:`qtest.fuzz.coverage`): its options, the target factory (in process with
``--in-process``), the one-input entry point for hypothesis, and the target's public names.
The work lives below it, each module importing only the ones listed before it:

* :mod:`qtest.fuzz.generic_ops`        the input encoding, the reply oracle, input generation
* :mod:`qtest.fuzz.generic_discovery`  the fuzzable ranges of a running emulator, the PCI set-up
* :mod:`qtest.fuzz.generic_target`     :class:`GenericFuzzTarget` (an emulator process), replay
* :mod:`qtest.fuzz.inprocess`          :class:`InProcessFuzzTarget` (the machine in this process)
"""
from __future__ import annotations

import argparse
import atexit
from typing import Any

from qtest.fuzz.generic_ops import Decoder
from qtest.fuzz.generic_target import GenericFuzzTarget
from qtest.fuzz.inprocess import InProcessFuzzTarget
from qtest.machine import default_binary

# Decoder is named here for users (a finding's README says to decode inputs with it).
__all__ = ["Decoder", "GenericFuzzTarget", "InProcessFuzzTarget", "add_arguments", "make_target", "default_args",
           "fuzz_one_input", "close_shared"]


# ----------------------------------------------------------------------------- entry points

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``qtest`` target (the common ones come from :mod:`qtest.fuzz.common`)."""
    parser.add_argument("--machine", default="pc", help="machine type (-M)")
    parser.add_argument("--args", default="", help='extra emulator arguments, e.g. --args="-device sb16"')
    parser.add_argument("--objects", default="*",
                        help="space-separated globs for QOM type names and MemoryRegion names (QEMU_FUZZ_OBJECTS)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds without a reply that make a hang")
    parser.add_argument("--rss-limit-mib", type=float, default=1024, help="emulator peak RSS bound (VmHWM)")
    parser.add_argument("--minimise-time", type=float, default=60, help="seconds spent minimising each finding")
    parser.add_argument("--in-process", action="store_true",
                        help="run the machine in the fuzz worker, answering device DMA with the input's patterns")
    parser.add_argument("--avoid-double-fetch", action="store_true",
                        help="with --in-process: fill the parts of a DMA read around ranges already filled since "
                             "the last op (QEMU_AVOID_DOUBLE_FETCH)")


def make_target(args: argparse.Namespace) -> GenericFuzzTarget:
    """The target the runner's workers use (in process with ``--in-process``)."""
    if getattr(args, "in_process", False):
        return InProcessFuzzTarget(args)
    return GenericFuzzTarget(args)


def default_args(**overrides: Any) -> argparse.Namespace:
    """The target's options at their defaults (binary: ``$QTEST_QEMU_BINARY`` or
    ``emu-system-x86_64``), with ``overrides``."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    args.binary = default_binary()
    for name, value in overrides.items():
        setattr(args, name, value)
    return args


_shared: GenericFuzzTarget | None = None


def fuzz_one_input(data: bytes) -> None:
    """Runs one input on a shared emulator (started on first use, default options); raises
    AssertionError with the finding and its qtest trace. For hypothesis."""
    global _shared
    if _shared is None:
        _shared = make_target(default_args())
        atexit.register(close_shared)
    finding = _shared.run_one(data)
    if finding is not None:
        raise AssertionError(f"{finding.kind}: {finding.message}\nqtest trace:\n{finding.reproducer.decode()}")


def close_shared() -> None:
    """Stops the emulator :func:`fuzz_one_input` uses (it restarts on the next call)."""
    global _shared
    if _shared is not None:
        _shared.close()
        _shared = None
