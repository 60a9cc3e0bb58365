"""Tests for qtest.pytest_plugin, run through pytester against a real binary."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from importlib.metadata import entry_points

import pytest

from qtest.pytest_plugin import binaries_under_test, binary_has_qtest_accel

pytest_plugins = ["pytester"]

BINARIES = binaries_under_test()


def plugin_args() -> list[str]:
    """``-p qtest.pytest_plugin`` unless the installed pytest11 entry point already loads it."""
    installed = any(ep.value == "qtest.pytest_plugin" for ep in entry_points(group="pytest11"))
    if installed and not os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        return []
    return ["-p", "qtest.pytest_plugin"]


@pytest.fixture(params=BINARIES)
def binary(request: pytest.FixtureRequest) -> str:
    return request.param[0]  # type: ignore[no-any-return]


@pytest.fixture
def run(pytester: pytest.Pytester, binary: str):  # type: ignore[no-untyped-def]
    def runner(*args: str) -> pytest.RunResult:
        return pytester.runpytest(
            *plugin_args(),
            "-p", "no:cacheprovider",
            "-p", "no:xdist",
            "-p", "no:benchmark",
            "-W", "ignore::pytest.PytestAssertRewriteWarning",
            f"--qtest-binary={binary}",
            *args,
        )  # fmt: skip

    return runner


@pytest.fixture
def logdir() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="qt", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_binary_has_qtest_accel() -> None:
    assert binary_has_qtest_accel("emu-system-x86_64")
    assert binary_has_qtest_accel("/usr/local/bin/emu-system-x86_64")
    assert not binary_has_qtest_accel("/usr/bin/qemu-system-x86_64")


def test_factory_and_qts(pytester: pytest.Pytester, run, binary: str) -> None:  # type: ignore[no-untyped-def]
    pytester.makepyfile(
        """
        def test_factory(qtest_factory, qtest_binary):
            a = qtest_factory(["-M", "pc", "-m", "64M", "-nodefaults", "-S"])
            b = qtest_factory(["-M", "pc", "-m", "64M", "-nodefaults", "-S"])
            assert a.pid != b.pid
            a.qtest.writeb(0x1000, 0x11)
            b.qtest.writeb(0x1000, 0x22)
            assert a.qtest.readb(0x1000) == 0x11
            assert b.qtest.readb(0x1000) == 0x22
            assert a.binary == qtest_binary

        def test_qts(qts):
            qts.qtest.outb(0x70, 0x0e)
            qts.qtest.outb(0x71, 0x5a)
            qts.qtest.outb(0x70, 0x0e)
            assert qts.qtest.inb(0x71) == 0x5a
            assert qts.qmp.cmd("query-status")["status"] in ("prelaunch", "running")
            assert "-m" in qts.argv and "128M" in qts.argv
        """
    )
    result = run("-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"qtest: binary {binary}*"])


def test_failure_report_has_emulator_stderr(pytester: pytest.Pytester, run) -> None:  # type: ignore[no-untyped-def]
    pytester.makepyfile(
        """
        def test_fails(qts):
            qts.qtest.readb(0x1234)
            assert False, "deliberate"
        """
    )
    result = run("--qtest-log=stderr")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*emulator 0 stderr (pid *)*", "*] readb 0x1234*"])


def test_unexpected_exit_fails_teardown(pytester: pytest.Pytester, run) -> None:  # type: ignore[no-untyped-def]
    pytester.makepyfile(
        """
        import os, signal

        def test_killed(qtest_factory):
            m = qtest_factory(["-M", "pc", "-m", "64M", "-nodefaults", "-S"])
            os.kill(m.pid, signal.SIGKILL)
        """
    )
    result = run()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*ExitStatusError: emulator died from signal 9*"])


def test_launch_error_is_reported(pytester: pytest.Pytester, run) -> None:  # type: ignore[no-untyped-def]
    pytester.makepyfile(
        """
        from qtest.machine import LaunchError
        import pytest

        def test_bad(qtest_factory):
            with pytest.raises(LaunchError, match="invalid option"):
                qtest_factory(["-bogus"])
        """
    )
    run().assert_outcomes(passed=1)


def test_log_directory(pytester: pytest.Pytester, run, logdir: str) -> None:  # type: ignore[no-untyped-def]
    pytester.makepyfile(
        """
        def test_log(qts):
            qts.qtest.readb(0x2000)
            assert qts.log_path is not None
        """
    )
    run(f"--qtest-log={logdir}").assert_outcomes(passed=1)
    logs = os.listdir(logdir)
    assert len(logs) == 1 and logs[0].startswith("test_log-")
    with open(os.path.join(logdir, logs[0])) as f:
        assert "] readb 0x2000" in f.read()


def test_missing_binary_skips(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_needs(qts):
            pass
        """
    )
    result = pytester.runpytest(
        *plugin_args(), "-p", "no:xdist", "-p", "no:benchmark", "-rs",
        "-W", "ignore::pytest.PytestAssertRewriteWarning",
        "--qtest-binary=/nonexistent/emu-system-x86_64",
    )  # fmt: skip
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*qtest binary*not found*"])
