"""``python -m qtest.fuzz {qtest,stream,qmp} --time S | --count N [--jobs N] [--binary PATH] [--sanitize]
[--atheris]``."""
from __future__ import annotations

import argparse
import importlib
import sys

from qtest.fuzz import sanitize
from qtest.fuzz.common import add_common_arguments, run_jobs

TARGETS = {
    "qtest": ("qtest.fuzz.generic", "QEMU's generic-fuzz ops against the emulator's qtest server"),
    "stream": ("qtest.fuzz.stream", "mutated migration streams fed to the destination"),
    "qmp": ("qtest.fuzz.qmp", "schema-aware QMP messages"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m qtest.fuzz", description=__doc__)
    sub = parser.add_subparsers(dest="target", required=True)
    for name, (module_name, summary) in TARGETS.items():
        p = sub.add_parser(name, help=summary)
        if argv and argv[0] == name:  # only the chosen target's module is imported
            add_common_arguments(p)
            importlib.import_module(module_name).add_arguments(p)
    args = parser.parse_args(argv)
    if args.atheris:
        from qtest.fuzz import coverage

        try:
            return coverage.run_atheris(args)
        except coverage.CoverageError as e:
            parser.error(str(e))
    if args.sanitize:
        sanitize.prepare(args)
    module = importlib.import_module(TARGETS[args.target][0])
    return run_jobs(args.target, module.make_target, args)


if __name__ == "__main__":
    sys.exit(main())
