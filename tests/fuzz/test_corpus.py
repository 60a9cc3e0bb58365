"""Replays the regression corpus (``tests/fuzz/corpus``, described in its README) against the
emulator process, as a user would: qtest scripts on the stdin of
``emu-system-x86_64 -M pc -display none -accel qtest -qtest stdio``, migration streams through
``-incoming file:``. Each input must get exactly the replies (or the load outcome and stderr
lines) recorded in ``corpus/expected.json``; the process must stay responsive (a last command is
answered), stay within a memory bound (VmHWM) and end cleanly: no traceback, the expected status.

qtest input is written to a pipe rather than redirected from a file, so that the peak RSS can be
read before and after it: the bytes the server reads are the same.
"""
from __future__ import annotations

import json
import queue
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Any

import pytest

CORPUS = Path(__file__).resolve().parent / "corpus"
EXPECTED: dict[str, dict[str, Any]] = json.loads((CORPUS / "expected.json").read_text())
BIN = shutil.which("emu-system-x86_64") or "emu-system-x86_64"
PROG = "emu-system-x86_64: "
MiB = 1 << 20
MAX_FILE = 4096  # corpus files stay small: big inputs are recipes
TIMEOUT = 60


def corpus(*suffixes: str) -> list[Path]:
    return sorted(p for p in CORPUS.iterdir() if p.name.endswith(suffixes))


def expand(spec: str | list[list[Any]]) -> bytes:
    """A string, or recipe parts ``[[text, count], ...]`` joined (the recipe format of the README)."""
    if isinstance(spec, str):
        return spec.encode()
    return b"".join(str(text).encode() * int(count) for text, count in spec)


def qtest_input(path: Path) -> bytes:
    if path.name.endswith(".recipe"):
        return expand(json.loads(path.read_text())["parts"])
    return path.read_bytes()


def hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


class Child:
    """A process whose stdout lines go to a queue and whose stderr is collected, both by threads
    (so that neither pipe can fill up and block the process)."""

    def __init__(self, argv: list[str]) -> None:
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: queue.Queue[bytes] = queue.Queue()
        self._err = bytearray()
        self._threads = [threading.Thread(target=self._lines, args=(self.p.stdout,), daemon=True),
                         threading.Thread(target=self._collect, args=(self.p.stderr,), daemon=True)]
        for t in self._threads:
            t.start()

    def _lines(self, pipe: IO[bytes]) -> None:
        for line in pipe:
            self.lines.put(line.rstrip(b"\n"))
        self.lines.put(b"<EOF>")

    def _collect(self, pipe: IO[bytes]) -> None:
        while chunk := pipe.read1(1 << 16):  # type: ignore[attr-defined]
            self._err += chunk

    def send(self, data: bytes) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(data)
        self.p.stdin.flush()

    def close_input(self) -> None:
        assert self.p.stdin is not None
        self.p.stdin.close()

    def line(self) -> bytes:
        return self.lines.get(timeout=TIMEOUT)

    def finish(self, expected_status: int) -> str:
        """Waits for the exit; checks its status and that nothing crashed; returns stderr."""
        status = self.p.wait(timeout=TIMEOUT)
        for t in self._threads:
            t.join(TIMEOUT)
        err = self._err.decode(errors="replace")
        assert "Traceback" not in err, err[-3000:]
        assert status == expected_status, err[-3000:]
        return err

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def test_every_corpus_file_has_an_expectation_and_stays_small():
    files = corpus(".qtest", ".recipe", ".mig")
    assert {p.name for p in files} == set(EXPECTED)
    assert all(p.stat().st_size <= MAX_FILE for p in files)


@pytest.mark.subprocess
@pytest.mark.parametrize("path", corpus(".qtest", ".qtest.recipe"), ids=lambda p: p.name)
def test_qtest_corpus_replays_with_the_recorded_replies(path: Path):
    data = qtest_input(path)
    expected = [expand(r) for r in EXPECTED[path.name]["replies"]]
    child = Child([BIN, "-M", "pc", "-display", "none", "-accel", "qtest", "-qtest", "stdio"])
    try:
        child.send(b"endianness\n")
        assert child.line() == b"OK little"
        before = hwm_mib(child.p.pid)
        child.send(data)
        replies: list[bytes] = []
        while len(replies) < len(expected):
            line = child.line()
            if not line.startswith(b"IRQ "):
                replies.append(line)
        assert replies == expected  # the last one answers the final command: still serving
        assert hwm_mib(child.p.pid) - before < len(data) / MiB + 32
        # end of input, as at the end of a ``< file`` replay (QEMU keeps running after it), then
        # libqtest's SIGTERM
        child.close_input()
        child.p.send_signal(signal.SIGTERM)
        assert "terminating on signal 15" in child.finish(0)  # libqtest's way out: status 0
    finally:
        child.kill()


def qmp(child: Child, command: str) -> Any:
    """One QMP command over stdio; events are skipped."""
    child.send(json.dumps({"execute": command}).encode() + b"\n")
    while True:
        msg = json.loads(child.line())
        if "return" in msg or "error" in msg:
            return msg.get("return", msg.get("error"))


@pytest.mark.subprocess
@pytest.mark.parametrize("path", corpus(".mig"), ids=lambda p: p.name)
def test_migration_corpus_loads_with_the_recorded_outcome(path: Path):
    want = EXPECTED[path.name]
    child = Child([BIN, "-M", "none", "-m", "16M", "-display", "none", "-nodefaults",
                   "-incoming", f"file:{path}", "-qmp", "stdio"])
    try:
        assert "QMP" in json.loads(child.line())
        if want["status"] == "running":
            assert qmp(child, "qmp_capabilities") == {}
            deadline = time.monotonic() + TIMEOUT
            while qmp(child, "query-status")["status"] != "running":  # QMP answers throughout the load
                assert time.monotonic() < deadline
            # as in QEMU's process_incoming_migration_bh, the VM runs a moment before the
            # migration is marked completed
            while (status := qmp(child, "query-migrate")["status"]) == "active":
                assert time.monotonic() < deadline
            assert status == "completed"
            assert qmp(child, "quit") == {}
            child.finish(0)
        else:
            err = child.finish(want["status"])
            assert err.splitlines()[-len(want["stderr"]):] == [PROG + s for s in want["stderr"]]
    finally:
        child.kill()
