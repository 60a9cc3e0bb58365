"""Tests for qtest.machine: the launcher, the QMP client and qtest_stdio.

Process tests run against every binary in ``BINARIES``
(:func:`qtest.pytest_plugin.binaries_under_test`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator

import pytest

from qtest.client import QTestEOF
from qtest.machine import (
    QMPEOF,
    ExitStatusError,
    LaunchError,
    QMPConnection,
    QMPError,
    QTestMachine,
    default_binary,
    qtest_stdio,
    short_tempdir,
)
from qtest.pytest_plugin import binaries_under_test

REAL_QEMU = shutil.which("qemu-system-x86_64")
MACHINE_ARGS = ["-M", "pc", "-m", "64M", "-nodefaults", "-S"]


BINARIES = binaries_under_test()
needs_real_qemu = pytest.mark.skipif(REAL_QEMU is None, reason="qemu-system-x86_64 not installed")


@pytest.fixture(params=BINARIES)
def binary(request: pytest.FixtureRequest) -> tuple[str, bool]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def scratch() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="qt", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def launch(binary: tuple[str, bool], *extra: str, **kw: object) -> QTestMachine:
    path, accel = binary
    return QTestMachine(path, [*MACHINE_ARGS, *extra], accel_qtest=accel, **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- launcher


def test_launch_and_quit(binary: tuple[str, bool]) -> None:
    m = launch(binary)
    assert m.running
    tmpdir = m.tmpdir
    assert tmpdir is not None and os.path.isdir(tmpdir)
    assert len(m.qtest_socket_path.encode()) < 107
    assert not os.path.exists(m.qtest_socket_path)  # unlinked once accepted
    argv = m.argv
    assert argv[0] == binary[0]
    assert argv[1:4] == ["-qtest", f"unix:{m.qtest_socket_path}", "-qtest-log"]
    assert argv[4] == "/dev/null"
    assert argv[5:11] == [
        "-chardev", f"socket,path={m.qmp_socket_path},id=char0",
        "-mon", "chardev=char0,mode=control",
        "-display", "none",
    ]  # fmt: skip
    assert (argv[-2:] == ["-accel", "qtest"]) == binary[1]
    assert m.qtest.readb(0) == 0
    assert m.qmp.greeting is not None and "QMP" in m.qmp.greeting
    pid = m.pid
    assert m.quit() == 0
    assert m.exitcode == 0
    assert not m.running
    assert not os.path.exists(tmpdir)
    assert m.quit() == 0  # idempotent
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_context_manager(binary: tuple[str, bool]) -> None:
    path, accel = binary
    with QTestMachine(path, MACHINE_ARGS, accel_qtest=accel, launch=False) as m:
        assert m.qtest.endianness() == "little"
    assert m.exitcode == 0


def test_context_manager_does_not_mask_exception(binary: tuple[str, bool]) -> None:
    with pytest.raises(KeyError):
        with launch(binary) as m:
            m.set_expected_status(3)  # would fail quit(), but the KeyError wins
            raise KeyError("boom")
    assert m.exitcode == 0


def test_qmp_commands_and_events(binary: tuple[str, bool]) -> None:
    with launch(binary) as m:
        qmp = m.qmp
        assert qmp.cmd("query-status")["status"] == "prelaunch"
        assert qmp.cmd("qom-get", {"path": "/machine", "property": "type"}).endswith("-machine")
        with pytest.raises(QMPError) as ei:
            qmp.cmd("no-such-command")
        assert ei.value.error_class == "CommandNotFound"
        assert "no-such-command" in ei.value.desc
        raw = qmp.cmd_raw("query-status")
        assert "return" in raw
        qmp.cmd("cont")
        ev = qmp.wait_event("RESUME", timeout=30)
        assert ev["event"] == "RESUME" and "timestamp" in ev
        qmp.cmd("stop")
        assert qmp.wait_event("STOP", timeout=30)["event"] == "STOP"
        assert qmp.cmd("query-status")["status"] == "paused"
        qmp.clear_events()
        assert qmp.get_events() == []


def test_qmp_quit_then_wait(binary: tuple[str, bool]) -> None:
    m = launch(binary)
    m.qmp.cmd("quit")
    assert m.wait(timeout=30) == 0


def test_expected_status_mismatch(binary: tuple[str, bool]) -> None:
    m = launch(binary)
    m.set_expected_status(1)
    with pytest.raises(ExitStatusError, match="exited with status 0, expected 1") as ei:
        m.quit()
    assert ei.value.status == 0 and ei.value.expected == 1


def test_death_by_signal_is_reported(binary: tuple[str, bool]) -> None:
    m = launch(binary)
    os.kill(m.pid, signal.SIGKILL)
    with pytest.raises(QTestEOF):
        m.qtest.readb(0)
    with pytest.raises(ExitStatusError, match="died from signal 9") as ei:
        m.quit()
    assert ei.value.status == -signal.SIGKILL
    assert m.quit(check=False) == -signal.SIGKILL


def test_kill(binary: tuple[str, bool]) -> None:
    m = launch(binary)
    assert m.kill() == -signal.SIGKILL
    assert not m.running


def test_stderr_and_qtest_log(binary: tuple[str, bool], scratch: str) -> None:
    log = os.path.join(scratch, "qtest.log")
    m = launch(binary, qtest_log=log)
    assert m.log_path == log
    m.qtest.readb(0x1000)
    m.qtest.raw("foo")
    m.quit()
    with open(log) as f:
        text = f.read()
    assert "OPENED" in text
    assert "] readb 0x1000" in text
    assert "FAIL Unknown command 'foo'" in text
    assert isinstance(m.stderr_text(), str)  # still readable after the temp dir is gone


def test_qtest_log_to_stderr(binary: tuple[str, bool]) -> None:
    m = launch(binary, qtest_log="stderr")
    assert "-qtest-log" not in m.argv
    assert m.log_path is None
    m.qtest.readb(0x1000)  # its "[R +t]" line is logged before it runs
    assert "] readb 0x1000" in m.stderr_text()  # unbuffered: visible while running
    m.quit()
    assert "OPENED" in m.stderr_text()


# --------------------------------------------------------------------------- launch errors


def test_nonexistent_binary() -> None:
    with pytest.raises(LaunchError, match="cannot execute") as ei:
        QTestMachine("/nonexistent/emu-system-x86_64", [])
    assert ei.value.exit_code is None
    assert "No such file" in ei.value.stderr


def test_bad_option(binary: tuple[str, bool]) -> None:
    with pytest.raises(LaunchError, match="exited before connecting") as ei:
        launch(binary, "-bogus")
    assert ei.value.exit_code == 1
    assert "-bogus: invalid option" in ei.value.stderr
    assert "-bogus" in ei.value.argv


@needs_real_qemu
def test_debian_qemu_rejects_accel_qtest() -> None:
    with pytest.raises(LaunchError) as ei:
        QTestMachine(REAL_QEMU, MACHINE_ARGS, accel_qtest=True)
    assert ei.value.exit_code == 1
    assert "invalid accelerator qtest" in ei.value.stderr


def test_connect_timeout_kills_the_process(scratch: str) -> None:
    script = os.path.join(scratch, "never-connects")
    pidfile = os.path.join(scratch, "pid")
    with open(script, "w") as f:
        f.write(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 60\n")
    os.chmod(script, 0o755)
    with pytest.raises(LaunchError, match="did not connect within 0.5 s") as ei:
        QTestMachine(script, [], timeout=0.5)
    assert ei.value.exit_code is None
    with open(pidfile) as f:
        pid = int(f.read())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_handshake_failure_is_a_launch_error(scratch: str) -> None:
    # A fake "emulator" that connects to both sockets, then exits without answering.
    script = os.path.join(scratch, "fake-emu")
    with open(script, "w") as f:
        f.write(
            "#!/usr/bin/env python3\n"
            "import socket, sys\n"
            "a = sys.argv\n"
            "q = a[a.index('-qtest') + 1][len('unix:'):]\n"
            "m = a[a.index('-chardev') + 1].split(',')[1][len('path='):]\n"
            "for p in (q, m):\n"
            "    socket.socket(socket.AF_UNIX).connect(p)\n"
            "sys.stderr.write('fake emulator gives up\\n')\n"
            "sys.exit(3)\n"
        )
    os.chmod(script, 0o755)
    with pytest.raises(LaunchError, match="handshake") as ei:
        QTestMachine(script, [])
    assert ei.value.exit_code == 3
    assert "fake emulator gives up" in ei.value.stderr


def test_default_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QTEST_QEMU_BINARY", "/opt/x/qemu-system-x86_64")
    assert default_binary() == "/opt/x/qemu-system-x86_64"
    monkeypatch.delenv("QTEST_QEMU_BINARY")
    assert default_binary().endswith("emu-system-x86_64")


def test_short_tempdir() -> None:
    d = short_tempdir()
    try:
        assert len(os.path.join(d, "qtest.sock").encode()) < 107
        assert os.stat(d).st_mode & 0o777 == 0o700
    finally:
        os.rmdir(d)


# --------------------------------------------------------------------------- QMP client (fake server)


class FakeQMP:
    """A scripted QMP peer on a socketpair."""

    def __init__(self) -> None:
        self.client, self.server = socket.socketpair()
        self.rfile = self.server.makefile("rb")

    def send(self, *msgs: object) -> None:
        self.server.sendall(b"".join(json.dumps(m).encode() + b"\r\n" for m in msgs))

    def recv(self) -> dict[str, object]:
        return json.loads(self.rfile.readline())  # type: ignore[no-any-return]

    def close(self) -> None:
        self.rfile.close()
        self.server.close()
        self.client.close()


@pytest.fixture
def fake_qmp() -> Iterator[FakeQMP]:
    f = FakeQMP()
    yield f
    f.close()


GREETING = {"QMP": {"version": {"qemu": {"major": 9, "minor": 1, "micro": 0}, "package": ""}, "capabilities": []}}


def test_qmp_greeting_negotiation_and_events(fake_qmp: FakeQMP) -> None:
    fake_qmp.send(GREETING)
    qmp = QMPConnection(fake_qmp.client, timeout=30)
    assert qmp.greeting == GREETING
    fake_qmp.send({"return": {}})
    qmp.negotiate()
    assert fake_qmp.recv() == {"execute": "qmp_capabilities"}
    # Events arriving before a reply are queued; the reply is returned.
    fake_qmp.send(
        {"event": "STOP", "data": {}, "timestamp": {"seconds": 1, "microseconds": 2}},
        {"event": "MIGRATION", "data": {"status": "setup"}},
        {"event": "MIGRATION", "data": {"status": "active"}},
        {"return": {"status": "paused"}},
    )
    assert qmp.cmd("query-status") == {"status": "paused"}
    assert fake_qmp.recv() == {"execute": "query-status"}
    assert [e["event"] for e in qmp.pending_events] == ["STOP", "MIGRATION", "MIGRATION"]
    ev = qmp.wait_event("MIGRATION", match=lambda e: e["data"]["status"] == "active")
    assert ev["data"] == {"status": "active"}
    assert qmp.wait_event("STOP")["event"] == "STOP"
    fake_qmp.send({"event": "RESUME", "data": {}})
    assert qmp.wait_event("RESUME", timeout=30)["event"] == "RESUME"
    assert [e["data"] for e in qmp.get_events()] == [{"status": "setup"}]
    with pytest.raises(TimeoutError):
        qmp.wait_event("SHUTDOWN", timeout=0.05)
    # Arguments: dict (hyphenated names) plus keywords.
    fake_qmp.send({"error": {"class": "GenericError", "desc": "nope"}})
    with pytest.raises(QMPError, match="GenericError: nope") as ei:
        qmp.cmd("migrate-set-parameters", {"max-bandwidth": 1}, downtime_limit=5)
    assert ei.value.error_class == "GenericError" and ei.value.desc == "nope"
    assert fake_qmp.recv() == {
        "execute": "migrate-set-parameters",
        "arguments": {"max-bandwidth": 1, "downtime_limit": 5},
    }
    fake_qmp.server.shutdown(socket.SHUT_WR)
    with pytest.raises(QMPEOF):
        qmp.cmd("query-status")


def test_qmp_bad_greeting(fake_qmp: FakeQMP) -> None:
    fake_qmp.send({"hello": 1})
    with pytest.raises(QMPError, match="GreetingError"):
        QMPConnection(fake_qmp.client, timeout=30)


def test_qmp_fd_passing(fake_qmp: FakeQMP) -> None:
    fake_qmp.send(GREETING)
    qmp = QMPConnection(fake_qmp.client, timeout=30)
    r, w = os.pipe()
    try:
        fake_qmp.send({"return": {}})
        assert qmp.cmd_fds("getfd", [w], fdname="x") == {}
        msg, fds, _flags, _addr = socket.recv_fds(fake_qmp.server, 4096, 4)
        assert json.loads(msg) == {"execute": "getfd", "arguments": {"fdname": "x"}}
        assert len(fds) == 1
        os.write(fds[0], b"hi")
        os.close(fds[0])
        assert os.read(r, 2) == b"hi"
        qmp.send_fd_scm(w)
        msg, fds, _flags, _addr = socket.recv_fds(fake_qmp.server, 4096, 4)
        assert msg == b" " and len(fds) == 1
        os.close(fds[0])
    finally:
        os.close(r)
        os.close(w)


# --------------------------------------------------------------------------- qtest_stdio


def stdio_args(binary: tuple[str, bool]) -> list[str]:
    args = [*MACHINE_ARGS, "-display", "none", "-qtest-log", "none"]
    return args + (["-accel", "qtest"] if binary[1] else [])


def test_qtest_stdio_script(binary: tuple[str, bool]) -> None:
    script = b"endianness\nwriteb 0x1000 0x11\nreadb 0x1000\nirq_intercept_in ioapic\n" + (
        b"set_irq_in ioapic unnamed-gpio-in 4 1\nfoo\n"
    )
    out, err, rc = qtest_stdio(binary[0], stdio_args(binary), script, timeout=60)
    assert out.decode().splitlines() == [
        "OK little",
        "OK",
        "OK 0x0000000000000011",
        "OK",
        "IRQ raise 4",
        "OK",
        "FAIL Unknown command 'foo'",
    ]
    assert rc == 0


@needs_real_qemu
def test_qtest_stdio_real_qemu_crash() -> None:
    # An empty line aborts real QEMU (spec §1.5); the reply before it still arrives.
    out, err, rc = qtest_stdio(REAL_QEMU, stdio_args((REAL_QEMU, False)), b"endianness\n\nreadb 0x0\n", timeout=60)
    assert out.startswith(b"OK little\n")
    assert rc == -signal.SIGABRT
    assert b"assertion failed" in err


def test_qtest_stdio_timeout(scratch: str) -> None:
    script = os.path.join(scratch, "mute")
    with open(script, "w") as f:
        f.write("#!/bin/sh\nexec sleep 60\n")
    os.chmod(script, 0o755)
    with pytest.raises(subprocess.TimeoutExpired):
        qtest_stdio(script, [], b"endianness\n", timeout=0.3)


def test_qtest_stdio_big_script_no_deadlock(binary: tuple[str, bool]) -> None:
    n = 50000
    out, _err, rc = qtest_stdio(binary[0], stdio_args(binary), b"readb 0x0\n" * n, timeout=120)
    assert out.count(b"\n") == n
    assert rc == 0


def test_machine_threads_independent(binary: tuple[str, bool]) -> None:
    # Two machines driven from two threads at once (xdist-style parallelism in one process).
    errors: list[BaseException] = []

    def work(val: int) -> None:
        try:
            with launch(binary) as m:
                m.qtest.writeb(0x1000, val)
                assert m.qtest.pipeline(["readb 0x1000"] * 2000) == [f"OK 0x{val:016x}"] * 2000
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(v,)) for v in (0x11, 0x22)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
