"""``python -m qtest.fuzz {qtest,stream,qmp} --time S | --count N [--jobs N] [--binary PATH]``."""
from __future__ import annotations

import argparse
import importlib
import sys

from qtest.fuzz.common import add_common_arguments, run_jobs

TARGETS = {"qtest": "qtest.fuzz.generic", "stream": "qtest.fuzz.stream", "qmp": "qtest.fuzz.qmp"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qtest.fuzz", description=__doc__)
    sub = parser.add_subparsers(dest="target", required=True)
    for name, module_name in TARGETS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        add_common_arguments(p)
        module.add_arguments(p)
    args = parser.parse_args(argv)
    module = importlib.import_module(TARGETS[args.target])
    return run_jobs(args.target, module.make_target, args)


if __name__ == "__main__":
    sys.exit(main())
