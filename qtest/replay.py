"""Replay a qtest script (a crash reproducer, a corpus file) through ``-qtest stdio``.

    python -m qtest.replay SCRIPT [--binary BIN] [--strict] [-- EMULATOR ARGS...]

Prints ``> command`` / ``< reply`` pairs (IRQ lines included), then stops the emulator with
SIGTERM. The same file runs unchanged against real QEMU (``--binary qemu-system-x86_64``), which is
how reproducers stay portable. Exit status: 0, or 1 with ``--strict`` when a reply was not ``OK``,
or 2 when the emulator died or did not answer.
"""
from __future__ import annotations

import argparse
import subprocess
import sys

from qtest.machine import default_binary, qtest_stdio

DEFAULT_ARGS = ["-M", "pc", "-m", "128M", "-nodefaults", "-S", "-display", "none", "-qtest-log", "none"]


def pair_replies(script: bytes, output: bytes) -> list[tuple[bytes, list[bytes]]]:
    """(command, reply lines) in order; IRQ lines caused by a command precede its reply."""
    commands = iter(script.split(b"\n")[:-1])
    pairs: list[tuple[bytes, list[bytes]]] = []
    pending: list[bytes] = []
    for line in output.split(b"\n")[:-1]:
        pending.append(line)
        if not line.startswith(b"IRQ "):
            pairs.append((next(commands, b"?"), pending))
            pending = []
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qtest.replay", description=__doc__.split("\n\n")[0])
    parser.add_argument("script", help="qtest script file, one command per line ('-' for stdin)")
    parser.add_argument("--binary", default=None,
                        help="emulator binary (default: $QTEST_QEMU_BINARY or emu-system-x86_64)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any reply is not OK")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("args", nargs="*", help="emulator arguments (after --); default: " + " ".join(DEFAULT_ARGS))
    opts = parser.parse_args(argv)
    script = sys.stdin.buffer.read() if opts.script == "-" else open(opts.script, "rb").read()
    if script and not script.endswith(b"\n"):
        script += b"\n"
    binary = opts.binary or default_binary()
    try:
        out, err, rc = qtest_stdio(binary, opts.args or DEFAULT_ARGS, script, timeout=opts.timeout)
    except subprocess.TimeoutExpired as e:
        sys.stderr.write(f"no complete answer within {opts.timeout} s\n")
        sys.stdout.buffer.write(e.output or b"")
        return 2
    failed = False
    pairs = pair_replies(script, out)
    for cmd, replies in pairs:
        sys.stdout.buffer.write(b"> " + cmd + b"\n" + b"".join(b"< " + r + b"\n" for r in replies))
        failed |= not replies[-1].startswith(b"OK")
    answered = len(pairs)
    if answered < script.count(b"\n"):
        sys.stderr.write(err.decode(errors="replace"))
        sys.stderr.write(f"emulator stopped answering after {answered} commands (exit status {rc})\n")
        return 2
    return 1 if failed and opts.strict else 0


if __name__ == "__main__":
    sys.exit(main())
