"""Coverage-guided fuzzing with atheris (libFuzzer): ``python -m qtest.fuzz {qtest,stream} --atheris``.

The ``qtest`` (always ``--in-process``) and ``stream`` (in process) targets run the emulator's code
in the fuzzing process, so libFuzzer's coverage is the emulator's own: every ``emu.*`` module is
instrumented as the worker imports it (the fuzzer's own modules are not, so they do not count as
coverage). Each worker is a ``python -m qtest.fuzz.coverage`` process running libFuzzer on one
target. Its output goes to ``OUT/atheris/worker-N.log``, and all workers share one corpus
(``OUT/atheris/corpus``, which libFuzzer reloads). Each worker first adds inputs made by the
target's own generator to that corpus.

Mutation is mixed: a quarter of the inputs are new ones from the target's generator (a
structure-aware stream mutant, a generic-fuzz op sequence), the ``stream`` target byte-splices
another quarter with its seeds, and the rest are libFuzzer's own mutations. A finding (any oracle of
the target) is minimised and saved as the plain runner saves it, with a reproducer and a ``.txt``
note, and fuzzing goes on. A worker that dies with an input (a crash in C, the hang watchdog)
leaves it as the plain runner's workers do. libFuzzer's own ``-timeout`` is off, because the
targets time their inputs with SIGALRM themselves.

The parent prints a live line (execs, execs/s, the workers' highest ``cov``, the corpus size,
findings) read from the workers' logs, and libFuzzer's final statistics at the end.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qtest.fuzz.common import (
    Finding,
    dead_worker_finding,
    inflight_path,
    save_finding,
    split_count,
    watchdog_path,
)

#: the targets that run the emulator's code in the fuzzing process, and the module of each
MODULES = {"qtest": "qtest.fuzz.generic", "stream": "qtest.fuzz.stream"}
#: libFuzzer's largest input per target (stream seeds reach about 60 KB; generic-fuzz inputs are short)
MAX_LEN = {"qtest": 4096, "stream": 1 << 20}
SEEDS_PER_WORKER = 32
FINDING_MARK = "[qtest.fuzz] finding "  # a worker's log line for each saved finding: JSON follows
_STATUS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: \d+ corp: (\d+)", re.M)
_DONE = re.compile(r"^Done (\d+) runs in", re.M)


class CoverageError(Exception):
    """An option combination the atheris backend cannot run (the text says why)."""


def check_args(args: argparse.Namespace) -> None:
    """Refuses what the atheris backend does not do, rather than ignoring it."""
    if args.target not in MODULES:
        raise CoverageError(f"--atheris: the {args.target} target runs the emulator in other processes, so "
                            "coverage would not see it; use --atheris with the qtest or stream target")
    if getattr(args, "process", False) or getattr(args, "process_every", 0):
        raise CoverageError("--atheris runs the stream target in process: --process and --process-every "
                            "do not apply")
    if args.sanitize:
        raise CoverageError("--atheris and --sanitize cannot be combined: atheris's libFuzzer is not built "
                            "with the sanitizer runtime")
    try:
        import atheris  # noqa: F401
    except ImportError:
        raise CoverageError("atheris is not installed (pip install '.[fuzz]'): the atheris backend is "
                            "unavailable") from None


def _work_dir(args: argparse.Namespace) -> Path:
    return Path(args.out) / "atheris"


# ----------------------------------------------------------------------------- the worker

def _libfuzzer_argv(args: argparse.Namespace, index: int, count: int | None) -> list[str]:
    work = _work_dir(args)
    argv = [sys.argv[0], str(work / "corpus"), f"-seed={args.seed + index + 1}", "-timeout=0",
            f"-max_len={MAX_LEN[args.target]}", f"-artifact_prefix={Path(args.out).resolve()}/",
            "-print_final_stats=1", "-reload=1", "-close_fd_mask=0"]
    argv.append(f"-runs={count}" if count is not None else f"-max_total_time={max(1, round(args.time))}")
    return argv + list(getattr(args, "libfuzzer", None) or ())


def _seed_corpus(target: Any, corpus: Path, seed: int) -> None:
    """The target's own valid inputs, unmutated (every structure it knows reaches libFuzzer, not
    just those the generator happens to pick), then inputs from its generator, so libFuzzer starts
    from structure it cannot guess."""
    rng = random.Random(seed)
    corpus.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(getattr(target, "valid_inputs", lambda: [])()):
        (corpus / f"valid-{seed}-{i}").write_bytes(data)
    for i in range(SEEDS_PER_WORKER):
        (corpus / f"seed-{seed}-{i}").write_bytes(target.generate(rng))


def _make_target(args: argparse.Namespace) -> Any:
    """The in-process target, its ``emu.*`` modules instrumented as they are imported (the
    target's construction imports the devices and the machine)."""
    import atheris

    with atheris.instrument_imports(include=["emu"]):
        module = importlib.import_module(MODULES[args.target])
        if args.target == "qtest":
            args.in_process = True
        return module.make_target(args)


class _Worker:
    """What libFuzzer calls: one input at a time, and the mixed mutator."""

    def __init__(self, args: argparse.Namespace, target: Any) -> None:
        self.args = args
        self.target = target
        self.found = 0
        self.inflight = inflight_path(args, os.getpid())
        self.inflight.parent.mkdir(parents=True, exist_ok=True)

    def one_input(self, data: bytes) -> None:
        self.inflight.write_bytes(data)
        finding = self.target.run_one(data)
        if finding is not None:
            self._report(self.target.minimise(data, finding))

    def _report(self, finding: Finding) -> None:
        self.found += 1
        path = save_finding(Path(self.args.out), finding, self.found)
        line = json.dumps({"kind": finding.kind, "message": finding.message, "path": str(path)})
        sys.stderr.write(f"\n{FINDING_MARK}{line}\n")
        sys.stderr.flush()

    def mutate(self, data: bytes, max_size: int, seed: int) -> bytes:
        import atheris

        rng = random.Random(seed)
        choice = rng.random()
        if choice < 0.25:
            out = self.target.generate(rng)
        elif choice < 0.5 and hasattr(self.target, "mutate_bytes"):
            out = self.target.mutate_bytes(rng, data)
        else:
            out = atheris.Mutate(data, max_size)
        return bytes(out[:max_size])


def worker_main(args: argparse.Namespace, index: int, count: int | None) -> None:
    """One worker process: build the instrumented target, seed the corpus, run libFuzzer (which
    ends the process when its budget is spent)."""
    import atheris

    target = _make_target(args)
    _seed_corpus(target, _work_dir(args) / "corpus", args.seed + index)
    worker = _Worker(args, target)
    atheris.Setup(_libfuzzer_argv(args, index, count), worker.one_input, custom_mutator=worker.mutate)
    atheris.Fuzz()


# ----------------------------------------------------------------------------- the parent

class _Log:
    """What the parent reads from one worker's log: execs, coverage, corpus size, findings."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.execs = self.cov = self.corpus = 0
        self.done: int | None = None
        self.findings: list[dict[str, str]] = []

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return
        end = chunk.rfind(b"\n") + 1  # only whole lines; the rest is read next time
        self.offset += end
        text = chunk[:end].decode(errors="replace")
        for m in _STATUS.finditer(text):
            self.execs, self.cov, self.corpus = int(m.group(1)), int(m.group(2)), int(m.group(3))
        for m in _DONE.finditer(text):
            self.done = self.execs = int(m.group(1))
        for line in text.splitlines():
            if line.startswith(FINDING_MARK):
                self.findings.append(json.loads(line[len(FINDING_MARK):]))

    def final_stats(self) -> list[str]:
        text = self.path.read_text(errors="replace") if self.path.exists() else ""
        return [line for line in text.splitlines() if line.startswith("stat::")]


def _spawn(args: argparse.Namespace, index: int, count: int | None, log: Path) -> subprocess.Popen[bytes]:
    payload = json.dumps({"args": vars(args), "index": index, "count": count})
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "qtest.fuzz.coverage", payload],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)


def run_atheris(args: argparse.Namespace, write: Callable[[str], Any] = sys.stderr.write) -> int:
    """Runs ``args.jobs`` atheris workers (sharing ``args.count`` inputs, or each for ``args.time``
    seconds), prints a live line and a summary; returns 1 when anything was found, else 0."""
    check_args(args)
    work = _work_dir(args)
    (work / "corpus").mkdir(parents=True, exist_ok=True)
    jobs = max(1, args.jobs)
    counts = split_count(args.count, jobs)
    logs = [_Log(work / f"worker-{i}.log") for i in range(jobs)]
    procs = [_spawn(args, i, counts[i], logs[i].path) for i in range(jobs)]
    start = time.monotonic()
    name = f"{args.target}/atheris"
    while any(p.poll() is None for p in procs):
        time.sleep(0.5)  # a progress display's refresh, not synchronisation
        _progress(name, logs, work, start, write)
    _progress(name, logs, work, start, write)
    findings = [(f["kind"], f["message"], f["path"]) for log in logs for f in log.findings]
    for proc, log in zip(procs, logs, strict=True):
        if proc.returncode != 0 or log.done is None:
            findings.append(_dead_worker(args, proc, log))
        else:  # libFuzzer ended the process: the target never closed, its last input is no finding
            inflight = inflight_path(args, proc.pid)
            inflight.unlink(missing_ok=True)
            watchdog_path(args, proc.pid).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        inflight_path(args, 0).parent.rmdir()
    elapsed = time.monotonic() - start
    total = sum(log.execs for log in logs)
    write(f"\n[{name}] {total} execs in {elapsed:.1f}s ({total / max(elapsed, 1e-6):.1f}/s), "
          f"cov {max(log.cov for log in logs)}, corpus {_corpus_size(work)}, {len(findings)} finding(s)\n")
    for index, log in enumerate(logs):
        write(f"  worker {index}: " + ", ".join(s.split("::", 1)[1].replace(" ", "") for s in log.final_stats())
              + f" (log {log.path})\n")
    for kind, message, path in findings:
        write(f"  {kind}: {message} {path}\n")
    return 1 if findings else 0


def _corpus_size(work: Path) -> int:
    return sum(1 for _ in (work / "corpus").iterdir())


def _progress(name: str, logs: list[_Log], work: Path, start: float, write: Callable[[str], Any]) -> None:
    for log in logs:
        log.poll()
    total = sum(log.execs for log in logs)
    elapsed = max(time.monotonic() - start, 1e-6)
    found = sum(len(log.findings) for log in logs)
    write(f"\r[{name}] {elapsed:7.1f}s  {total} execs  {total / elapsed:8.1f}/s  cov {max(log.cov for log in logs)}"
          f"  corpus {_corpus_size(work)}  {found} finding(s)   ")


def _dead_worker(args: argparse.Namespace, proc: subprocess.Popen[bytes], log: _Log) -> tuple[str, str, str]:
    """A worker that ended without libFuzzer's ``Done``: its in-flight input as a finding, or
    libFuzzer's own crash report (its artifact is in OUT) when it left none."""
    finding = dead_worker_finding(args, proc.pid, proc.returncode)
    if finding is not None:
        path = save_finding(Path(args.out), finding, 0)
        return finding.kind, finding.message, str(path)
    tail = log.path.read_text(errors="replace").strip().splitlines()[-3:] if log.path.exists() else []
    return "crash", f"atheris worker exited with status {proc.returncode}: {' | '.join(tail)}", str(log.path)


def _main(payload: str) -> None:
    data = json.loads(payload)
    args = argparse.Namespace(**data["args"])
    worker_main(args, int(data["index"]), data["count"])


if __name__ == "__main__":
    _main(sys.argv[1])
