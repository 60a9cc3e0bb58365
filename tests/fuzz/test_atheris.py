"""The atheris backend (``python -m qtest.fuzz {qtest,stream} --atheris``, :mod:`qtest.fuzz.coverage`):
coverage-guided runs of both in-process targets, a finding's way from a worker to the summary,
a worker that libFuzzer itself ends, and the refusals."""
from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from qtest.fuzz import coverage
from qtest.fuzz.common import Finding

SUMMARY = re.compile(r"^\[(\w+)/atheris\] (\d+) execs in [\d.]+s \([\d.]+/s\), cov (\d+), corpus (\d+), "
                     r"(\d+) finding\(s\)$", re.M)


def run_fuzz(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qtest.fuzz", *argv, "--out", str(tmp_path / "out")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(("target", "count", "jobs"), [("qtest", 400, 1), ("stream", 300, 2)])
def test_coverage_guided_run(tmp_path: Path, target: str, count: int, jobs: int) -> None:
    proc = run_fuzz(tmp_path, target, "--atheris", "--count", str(count), "--jobs", str(jobs))
    assert proc.returncode == 0, proc.stderr
    m = SUMMARY.search(proc.stderr)
    assert m is not None, proc.stderr
    assert m.group(1) == target and int(m.group(2)) == count and m.group(5) == "0"
    # coverage is the emulator's: far more edges than the fuzzer's callback alone, and the
    # corpus grew past the seeds (the target's valid inputs and the generator's)
    assert int(m.group(3)) > 500
    corpus = tmp_path / "out" / "atheris" / "corpus"
    files = list(corpus.iterdir())
    valid = [f for f in files if f.name.startswith("valid-")]
    assert int(m.group(4)) == len(files) > len(valid) + coverage.SEEDS_PER_WORKER * jobs
    stats = [line for line in proc.stderr.splitlines() if line.startswith("  worker ")]
    assert len(stats) == jobs and all("number_of_executed_units:" in s for s in stats)
    assert sum(int(re.search(r"number_of_executed_units:(\d+)", s).group(1)) for s in stats) == count  # type: ignore[union-attr]
    assert not (tmp_path / "out" / "inflight").exists()  # nothing in flight once libFuzzer is done


def test_worker_finding_is_saved_and_read_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    class Target:
        def generate(self, rng: random.Random) -> bytes:
            return b"x"

        def run_one(self, data: bytes) -> Finding | None:
            return Finding("invariant", f"bad reply to {data!r}", data, ".bin", "replay it") if data else None

        def minimise(self, data: bytes, finding: Finding) -> Finding:
            return Finding(finding.kind, finding.message, data[:1], finding.suffix, finding.replay)

    args = argparse.Namespace(out=str(tmp_path / "out"))
    worker = coverage._Worker(args, Target())
    worker.one_input(b"")
    worker.one_input(b"AB")
    err = capsys.readouterr().err
    log_path = tmp_path / "w.log"
    log_path.write_text("#3\tNEW    cov: 7 ft: 9 corp: 2/2b lim: 4 exec/s: 0 rss: 1Mb\n" + err + "Done 3 runs in 0 second(s)\n")
    log = coverage._Log(log_path)
    log.poll()
    assert (log.execs, log.cov, log.corpus, log.done) == (3, 7, 2, 3)
    [found] = log.findings
    assert found["kind"] == "invariant" and found["message"] == "bad reply to b'AB'"
    saved = Path(found["path"])
    assert saved.read_bytes() == b"A"  # the minimised input
    assert saved.with_suffix(".bin.txt").read_text() == "invariant: bad reply to b'AB'\nreplay: replay it\n"
    assert worker.inflight.read_bytes() == b"AB"


def test_worker_ended_by_libfuzzer_is_a_finding(tmp_path: Path) -> None:
    """libFuzzer's own RSS limit ends the worker: the runner reports it with its input, and
    libFuzzer's artifact lands in the output directory."""
    proc = run_fuzz(tmp_path, "qtest", "--atheris", "--time", "60", "--libfuzzer=-rss_limit_mb=1")
    assert proc.returncode == 1, proc.stderr
    m = SUMMARY.search(proc.stderr)
    assert m is not None and m.group(5) == "1", proc.stderr
    assert re.search(r"^  crash: fuzz worker exited with status \d+ while running this input ", proc.stderr, re.M)
    out = tmp_path / "out"
    assert [p.name.startswith("oom-") for p in out.iterdir() if p.is_file() and "-" in p.name].count(True) == 1
    assert "ERROR: libFuzzer: out-of-memory" in (out / "atheris" / "worker-0.log").read_text()


@pytest.mark.parametrize(("argv", "error"), [
    (["qmp", "--atheris", "--count", "1"], "--atheris: the qmp target runs the emulator in other processes"),
    (["stream", "--atheris", "--process", "--count", "1"], "--process and --process-every do not apply"),
    (["qtest", "--atheris", "--sanitize", "--count", "1"], "--atheris and --sanitize cannot be combined"),
])
def test_refusals(tmp_path: Path, argv: list[str], error: str) -> None:
    proc = run_fuzz(tmp_path, *argv)
    assert proc.returncode == 2 and error in proc.stderr.splitlines()[-1]


def test_worker_payload_round_trips(tmp_path: Path) -> None:
    """The parent hands its options to a worker as JSON: every option of both targets survives."""
    from qtest.fuzz.__main__ import TARGETS
    from qtest.fuzz.common import add_common_arguments

    for name in coverage.MODULES:
        parser = argparse.ArgumentParser()
        add_common_arguments(parser)
        __import__(TARGETS[name][0], fromlist=["add_arguments"]).add_arguments(parser)
        args = parser.parse_args(["--count", "5", "--libfuzzer=-dict=x"])
        assert json.loads(json.dumps(vars(args))) == vars(args)
        argv = coverage._libfuzzer_argv(argparse.Namespace(**vars(args), target=name), 1, 5)
        assert "-runs=5" in argv and "-timeout=0" in argv and argv[-1] == "-dict=x"
