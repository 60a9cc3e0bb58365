"""What every fuzz target shares: findings and their reproducers, peak-RSS measurement, the
worker loop, the parallel runner and the live progress line, and the ``--sanitize`` plumbing
(sanitizer reports attached to findings; :mod:`qtest.fuzz.sanitize` owns the build)."""
from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import queue
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from qtest.fuzz import sanitize

#: Outcome kinds a target reports (anything but these is a clean run)
KINDS = ("crash", "hang", "memory", "invariant")


@dataclass
class Finding:
    """A crash, hang, memory blow-up or broken invariant, with the input that caused it.

    ``reproducer`` is the file content that replays it (a qtest script, a stream file...);
    ``suffix`` its file extension; ``replay`` the command line that replays it; ``report`` the
    sanitizer report that goes with it (``--sanitize``), if any.
    """

    kind: str
    message: str
    reproducer: bytes
    suffix: str
    replay: str = ""
    report: str = ""


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
    if finding.report:
        path.with_suffix(path.suffix + ".sanitizer.txt").write_text(finding.report)
    return path


def sanitizer_dir(args: argparse.Namespace) -> Path:
    """Where a ``--sanitize`` run's processes write their sanitizer reports."""
    return Path(args.out) / "sanitizer"


def _inflight(report_dir: Path, pid: int) -> Path:
    return report_dir / f"inflight-{pid}"


def inflight_path(args: argparse.Namespace, pid: int) -> Path:
    """Where worker ``pid`` keeps the input it is running, for when it dies with it (under
    ``--sanitize`` in the sanitizer directory, else in ``<out>/inflight``)."""
    return _inflight(sanitizer_dir(args) if getattr(args, "memcore", None) else Path(args.out) / "inflight", pid)


def watchdog_path(args: argparse.Namespace, pid: int) -> Path:
    """Where an in-process target's watchdog (faulthandler) writes the stacks of a hung worker."""
    path = inflight_path(args, pid)
    return path.with_name(path.name + ".watchdog")


def _watchdog_note(path: Path) -> str:
    """The innermost frame of the main thread in a faulthandler dump ('' when there is none);
    the dump is consumed. faulthandler lists threads newest first, so the main thread is last."""
    text = path.read_text(errors="replace") if path.exists() else ""
    path.unlink(missing_ok=True)
    blocks = text.split("\nThread ")
    frames = [line.strip() for line in blocks[-1].splitlines() if line.strip().startswith("File ")]
    return frames[0] if frames else ""


def with_reports(finding: Finding, reports: list[Path]) -> Finding:
    """``finding`` as the crash its sanitizer reports (oldest first) show; the reports are
    consumed: the first is kept with the finding, the others (minimisation replays) summarised."""
    texts = [p.read_text(errors="replace") for p in reports]
    for p in reports:
        p.unlink(missing_ok=True)
    first = sanitize.summary(texts[0])
    others = sorted({sanitize.summary(t) for t in texts[1:]} - {first})
    message = f"{first} [{finding.message or 'no other oracle noticed it'}]"
    if len(texts) > 1:
        message += f"; {len(texts) - 1} more report(s) from replays" + (f": {'; '.join(others)}" if others else "")
    return Finding("crash", message, finding.reproducer, finding.suffix, finding.replay, texts[0])


class SanitizerWatch:
    """A ``--sanitize`` worker's view of the reports: the in-flight input is kept on disk (what
    remains when a report kills the worker itself, in-process targets), and every report that
    appeared while an input ran turns its outcome into a crash finding carrying the report."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.memcore: str = args.memcore
        # the processes this worker starts report into a directory of its own (other workers'
        # reports are not this worker's findings); the worker's own reports, into the run's
        self.dir = sanitizer_dir(args) / f"worker-{os.getpid()}"
        self.dir.mkdir(parents=True, exist_ok=True)
        os.environ.update(sanitize.environment(self.memcore, self.dir))
        self.seen = sanitize.report_files(self.dir)
        self.inflight = inflight_path(args, os.getpid())
        self.suffix, self.replay = sanitize.RAW_INPUTS.get(getattr(args, "target", ""), (".bin", ""))

    def before(self, data: bytes) -> None:
        """Called before an input runs."""
        self.inflight.write_bytes(data)

    def after(self, finding: Finding | None, data: bytes) -> Finding | None:
        """The input's finding with any new report attached (a report alone is a finding too),
        its replay line prefixed with the sanitized environment."""
        new = sorted(sanitize.report_files(self.dir) - self.seen, key=lambda p: p.stat().st_mtime_ns)
        self.seen |= set(new)
        if finding is None and not new:
            return None
        if finding is None:
            finding = Finding("crash", "", data, self.suffix, self.replay)
        finding.replay = sanitize.replay_prefix(self.memcore) + finding.replay
        if not new and finding.kind in ("hang", "memory"):
            # ASan's realloc always copies: CPython code that grows a buffer in place under glibc
            # can turn quadratic (str.translate of a long non-ASCII string, see docs/fuzzing.md)
            finding.message += " [no sanitizer report: replay it without --sanitize before trusting it]"
        return with_reports(finding, new) if new else finding

    def close(self) -> None:
        """Removes the in-flight input (the worker ends normally) and the empty report directory."""
        self.inflight.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.dir.rmdir()


def dead_worker_finding(args: argparse.Namespace, pid: int, status: int) -> Finding | None:
    """A worker that died: its in-flight input, with its own sanitizer report (``--sanitize``)
    or, when an in-process target's watchdog ended it, as a hang with the frame it hung in;
    None when it left neither input nor report (it died before its first input)."""
    memcore = getattr(args, "memcore", None)
    inflight = inflight_path(args, pid)
    report = sanitizer_dir(args) / f"{sanitize.REPORT_PREFIX}.{pid}" if memcore else None
    note = _watchdog_note(watchdog_path(args, pid))
    if not inflight.exists() and not (report is not None and report.exists()):
        return None
    data = inflight.read_bytes() if inflight.exists() else b""
    inflight.unlink(missing_ok=True)
    suffix, replay = sanitize.RAW_INPUTS.get(getattr(args, "target", ""), (".bin", ""))
    kind, message = "crash", f"fuzz worker exited with status {status} while running this input"
    if note:
        kind, message = "hang", f"the watchdog ended the fuzz worker (status {status}) inside {note}"
    finding = Finding(kind, message, data, suffix, (sanitize.replay_prefix(memcore) if memcore else "") + replay)
    return with_reports(finding, [report]) if report is not None and report.exists() else finding


def worker(make_target: Callable[[argparse.Namespace], Target], args: argparse.Namespace, seed: int,
           queue: Any) -> None:
    """One fuzzing process: generate, run, report every finding and its running exec count."""
    rng = random.Random(seed)
    watch = SanitizerWatch(args) if getattr(args, "memcore", None) else None
    target = make_target(args)
    # an in-process target can die with its input (a hang in C code ended by its watchdog)
    keep = inflight_path(args, os.getpid()) if watch is None and getattr(target, "in_process", False) else None
    if keep is not None:
        keep.parent.mkdir(parents=True, exist_ok=True)
    if watch is not None and "emu._memcore" in sys.modules:  # an in-process target: say which core it runs
        sys.stderr.write(f"[sanitize] worker {os.getpid()}: emu._memcore is {sys.modules['emu._memcore'].__file__}\n")
    deadline = time.monotonic() + args.time if args.time else None
    execs = found = 0
    last_report = time.monotonic()
    data = b""

    def report(finding: Finding | None) -> None:
        nonlocal found
        if watch is not None:
            finding = watch.after(finding, data)
        if finding is not None:
            found += 1
            path = save_finding(Path(args.out), finding, found)
            queue.put(("finding", seed, finding.kind, finding.message, str(path)))

    try:
        while (deadline is None or time.monotonic() < deadline) and (args.count is None or execs < args.count):
            data = target.generate(rng)
            if watch is not None:
                watch.before(data)
            elif keep is not None:
                keep.write_bytes(data)
            finding = target.run_one(data)
            execs += 1
            report(None if finding is None else target.minimise(data, finding))
            if time.monotonic() - last_report > 0.5:
                queue.put(("execs", seed, execs))
                last_report = time.monotonic()
    finally:
        target.close()
        if keep is not None:
            keep.unlink(missing_ok=True)
        if watch is not None:
            report(None)  # a report written while the target shut down
            watch.close()
        queue.put(("execs", seed, execs))
        queue.put(("done", seed, execs))


def split_count(count: int | None, jobs: int) -> list[int | None]:
    """``count`` inputs shared out over ``jobs`` workers (None each: no count, a time budget)."""
    if count is None:
        return [None] * jobs
    return [count // jobs + (1 if i < count % jobs else 0) for i in range(jobs)]


def run_jobs(name: str, make_target: Callable[[argparse.Namespace], Target], args: argparse.Namespace) -> int:
    """Runs ``args.jobs`` worker processes (sharing ``args.count`` inputs, or each for
    ``args.time`` seconds), prints a live line (execs, execs/s, findings) on stderr and a summary;
    returns 1 when anything was found, else 0."""
    jobs = max(1, args.jobs)
    counts = split_count(args.count, jobs)
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = []
    memcore = getattr(args, "memcore", None)
    if memcore:
        sanitizer_dir(args).mkdir(parents=True, exist_ok=True)
    # spawned workers, and every emulator they start, inherit the sanitized environment
    env = sanitize.environment(memcore, sanitizer_dir(args)) if memcore else None
    with sanitize.applied(env) if env else contextlib.nullcontext():
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
    findings += _ends(name, procs, args)
    total = sum(execs.values())
    elapsed = time.monotonic() - start
    sys.stderr.write(f"\n[{name}] {total} execs in {elapsed:.1f}s ({total / max(elapsed, 1e-6):.1f}/s), "
                     f"{len(findings)} finding(s)\n")
    for kind, message, path in findings:
        sys.stderr.write(f"  {kind}: {message} {path}\n")
    return 1 if findings else 0


def _ends(name: str, procs: list[Any], args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """Findings of the workers' ends: a worker that died, and (``--sanitize``) a report nobody
    claimed (say, an emulator that aborted after its worker had died)."""
    findings = []
    for index, p in enumerate(procs, 1):
        p.join(timeout=10)
        if p.exitcode in (0, None):
            continue
        finding = dead_worker_finding(args, p.pid, p.exitcode)
        if finding is None:
            findings.append(("crash", f"fuzz worker exited with status {p.exitcode}", ""))
            continue
        path = save_finding(Path(args.out), finding, index)
        findings.append((finding.kind, finding.message, str(path)))
        sys.stderr.write(f"\n[{name}] {finding.kind}: {finding.message} -> {path}\n")
    with contextlib.suppress(OSError):  # the in-flight directory, empty once every worker is accounted for
        (Path(args.out) / "inflight").rmdir()
    if getattr(args, "memcore", None):
        for report in sorted(sanitize.report_files(sanitizer_dir(args), recursive=True)):
            text = report.read_text(errors="replace")
            findings.append(("crash", f"sanitizer report with no input: {sanitize.summary(text)}", str(report)))
        for leftover in sanitizer_dir(args).glob("worker-*"):  # those of workers that died
            with contextlib.suppress(OSError):
                leftover.rmdir()
    return findings


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """--time/--count, --jobs, --seed, --out, --binary (the emulator or a real QEMU), --sanitize,
    --atheris and its --libfuzzer flags."""
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--time", type=float, help="seconds to fuzz (per worker)")
    budget.add_argument("--count", type=int, help="number of inputs in total")
    parser.add_argument("--jobs", type=int, default=1, help="parallel worker processes")
    parser.add_argument("--seed", type=int, default=0, help="first worker's random seed")
    parser.add_argument("--out", default="fuzz-findings", help="directory for reproducers")
    parser.add_argument("--binary", default="emu-system-x86_64", help="emulator binary for out-of-process targets")
    parser.add_argument("--sanitize", action="store_true",
                        help="run every process on an ASan/UBSan build of csrc/ (built once, cached; docs/fuzzing.md)")
    parser.add_argument("--atheris", action="store_true",
                        help="coverage-guided workers (atheris/libFuzzer; qtest and stream targets, in process)")
    parser.add_argument("--libfuzzer", action="append", metavar="FLAG",
                        help="with --atheris: a libFuzzer flag for every worker, e.g. --libfuzzer=-dict=FILE")
