"""What every fuzz target shares: findings and their reproducers, peak-RSS measurement, the
worker loop, the parallel runner and the live progress line."""
from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

#: Outcome kinds a target reports (anything but these is a clean run)
KINDS = ("crash", "hang", "memory", "invariant")


@dataclass
class Finding:
    """A crash, hang, memory blow-up or broken invariant, with the input that caused it.

    ``reproducer`` is the file content that replays it (a qtest script, a stream file...);
    ``suffix`` its file extension; ``replay`` the command line that replays it.
    """

    kind: str
    message: str
    reproducer: bytes
    suffix: str
    replay: str = ""


class Target(Protocol):
    """A fuzz target (see the package docstring)."""

    def generate(self, rng: random.Random) -> bytes: ...

    def run_one(self, data: bytes) -> Finding | None: ...

    def minimise(self, data: bytes, finding: Finding) -> Finding: ...

    def close(self) -> None: ...


def peak_rss_kib(pid: int) -> int:
    """The process's peak resident set (VmHWM) in KiB, or 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def save_finding(out_dir: Path, finding: Finding, index: int) -> Path:
    """Writes the reproducer as ``<kind>-<n><suffix>`` with a ``.txt`` note beside it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{finding.kind}-{os.getpid()}-{index}{finding.suffix}"
    path.write_bytes(finding.reproducer)
    path.with_suffix(path.suffix + ".txt").write_text(
        f"{finding.kind}: {finding.message}\nreplay: {finding.replay or '(see the target docs)'}\n")
    return path


def worker(make_target: Callable[[argparse.Namespace], Target], args: argparse.Namespace, seed: int,
           queue: Any) -> None:
    """One fuzzing process: generate, run, report every finding and its running exec count."""
    rng = random.Random(seed)
    target = make_target(args)
    deadline = time.monotonic() + args.time if args.time else None
    execs = found = 0
    last_report = time.monotonic()
    try:
        while (deadline is None or time.monotonic() < deadline) and (args.count is None or execs < args.count):
            data = target.generate(rng)
            finding = target.run_one(data)
            execs += 1
            if finding is not None:
                finding = target.minimise(data, finding)
                found += 1
                path = save_finding(Path(args.out), finding, found)
                queue.put(("finding", seed, finding.kind, finding.message, str(path)))
            if time.monotonic() - last_report > 0.5:
                queue.put(("execs", seed, execs))
                last_report = time.monotonic()
    finally:
        target.close()
        queue.put(("execs", seed, execs))
        queue.put(("done", seed, execs))


def run_jobs(name: str, make_target: Callable[[argparse.Namespace], Target], args: argparse.Namespace) -> int:
    """Runs ``args.jobs`` worker processes (sharing ``args.count`` inputs, or each for
    ``args.time`` seconds), prints a live line (execs, execs/s, findings) on stderr and a summary;
    returns 1 when anything was found, else 0."""
    jobs = max(1, args.jobs)
    counts = ([args.count // jobs + (1 if i < args.count % jobs else 0) for i in range(jobs)]
              if args.count is not None else [None] * jobs)
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = []
    for i in range(jobs):
        job_args = argparse.Namespace(**{**vars(args), "count": counts[i]})
        proc = ctx.Process(target=worker, args=(make_target, job_args, args.seed + i, results), daemon=True)
        proc.start()
        procs.append(proc)
    execs: dict[int, int] = {}
    findings: list[tuple[str, str, str]] = []
    start = time.monotonic()
    finished: set[int] = set()
    while len(finished) < jobs:
        try:
            msg = results.get(timeout=1.0)
        except queue.Empty:
            if all(not p.is_alive() for p in procs):
                break  # a worker died without saying so: its exit code is reported below
            continue
        kind, seed = msg[0], msg[1]
        if kind == "finding":
            findings.append((msg[2], msg[3], msg[4]))
            sys.stderr.write(f"\n[{name}] {msg[2]}: {msg[3]} -> {msg[4]}\n")
        else:
            execs[seed] = msg[2]
            if kind == "done":
                finished.add(seed)
        total = sum(execs.values())
        elapsed = max(time.monotonic() - start, 1e-6)
        sys.stderr.write(f"\r[{name}] {elapsed:7.1f}s  {total} execs  {total / elapsed:8.1f}/s  "
                         f"{len(findings)} finding(s)   ")
    for p in procs:
        p.join(timeout=10)
        if p.exitcode not in (0, None):
            findings.append(("crash", f"fuzz worker exited with status {p.exitcode}", ""))
    total = sum(execs.values())
    elapsed = time.monotonic() - start
    sys.stderr.write(f"\n[{name}] {total} execs in {elapsed:.1f}s ({total / max(elapsed, 1e-6):.1f}/s), "
                     f"{len(findings)} finding(s)\n")
    for kind, message, path in findings:
        sys.stderr.write(f"  {kind}: {message} {path}\n")
    return 1 if findings else 0


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """--time/--count, --jobs, --seed, --out, --binary (the emulator or a real QEMU)."""
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--time", type=float, help="seconds to fuzz (per worker)")
    budget.add_argument("--count", type=int, help="number of inputs in total")
    parser.add_argument("--jobs", type=int, default=1, help="parallel worker processes")
    parser.add_argument("--seed", type=int, default=0, help="first worker's random seed")
    parser.add_argument("--out", default="fuzz-findings", help="directory for reproducers")
    parser.add_argument("--binary", default="emu-system-x86_64", help="emulator binary for out-of-process targets")
