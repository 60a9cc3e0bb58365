"""pytest plugin: ready emulator instances for tests (entry point ``pytest11: qtest``).

Options:

* ``--qtest-binary PATH``: emulator to launch (default ``$QTEST_QEMU_BINARY``,
  else ``emu-system-x86_64``);
* ``--qtest-log none|stderr|DIR|FILE``: ``-qtest-log`` target. ``stderr`` logs
  into the emulator's captured stderr (shown on failure); an existing
  directory gets one file per machine; anything else is used as a file path.

Fixtures: ``qtest_binary`` (session), ``qtest_factory`` (launch any number of
machines, all stopped at test end), ``qts`` (one ``-M pc -m 128M -nodefaults``
machine). On a failing test, the tail of each machine's stderr is attached
to the report.

The module only imports :mod:`qtest.machine` inside fixtures, so loading the
plugin costs nothing for test runs that do not use it.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from qtest.machine import QTestMachine

DEFAULT_BINARY_NAME = "emu-system-x86_64"
QTS_ARGS = ("-M", "pc", "-m", "128M", "-nodefaults")
STDERR_TAIL_LINES = 50

_machines_key = pytest.StashKey[list["QTestMachine"]]()


def binary_has_qtest_accel(binary: str | os.PathLike[str]) -> bool:
    """Whether ``binary`` accepts ``-accel qtest``.

    Deliberately simple: True for this project's emulator (basename starting
    with ``emu``), False for anything else. Debian/Ubuntu QEMU packages delete
    the qtest accelerator module; a QEMU built from source does have it, in
    which case pass ``accel_qtest=True`` to ``qtest_factory`` explicitly.
    """
    return os.path.basename(os.fspath(binary)).startswith("emu")


REAL_QEMU_NAME = "qemu-system-x86_64"
PROBE_ARGS = ("-M", "pc", "-m", "64M", "-nodefaults", "-S")


@functools.cache
def _candidates() -> tuple[tuple[str, str, bool, str | None], ...]:
    """(id, path, accel_qtest, skip reason) for each binary found; probes run once per process."""
    from qtest.machine import probe_binary

    found: list[tuple[str, str, bool, str | None]] = []
    qemu = shutil.which(REAL_QEMU_NAME)
    if qemu:
        found.append(("qemu", qemu, False, None))
    # Our emulator's failures count by default; "auto" (probe first, skip if broken) is opt-in.
    mode = os.environ.get("QTEST_TEST_EMU", "1").strip().lower()
    emu = shutil.which(DEFAULT_BINARY_NAME)
    if emu and mode not in ("0", "no", "off"):
        reason = None
        if mode not in ("1", "yes", "on"):
            broken = probe_binary(emu, PROBE_ARGS, accel_qtest=True)
            reason = (f"{DEFAULT_BINARY_NAME} not usable (QTEST_TEST_EMU=1 to fail instead): {broken}"
                      if broken else None)
        found.append(("emu", emu, True, reason))
    return tuple(found)


def binaries_under_test() -> list[Any]:
    """``pytest.param((path, accel_qtest), id=...)`` for every binary to run real-binary tests on.

    * ``qemu``: ``qemu-system-x86_64`` if on PATH (a distro build: no
      ``-accel qtest``), marked ``qemu``;
    * ``emu``: ``emu-system-x86_64`` if on PATH, as ``$QTEST_TEST_EMU`` says:
      ``0`` never, ``1`` (default) always, so its failures fail, ``auto`` only
      if :func:`qtest.machine.probe_binary` passes, else skipped with the reason.

    With neither, one skipped placeholder keeps the tests visible.
    """
    params = []
    for ident, path, accel, reason in _candidates():
        marks = [pytest.mark.qemu] if ident == "qemu" else []
        if reason:
            marks.append(pytest.mark.skip(reason=reason))
        params.append(pytest.param((path, accel), id=ident, marks=marks))
    if not params:
        params.append(pytest.param(None, id="none", marks=pytest.mark.skip(reason="no emulator binary found")))
    return params


def _default_binary() -> str:
    return os.environ.get("QTEST_QEMU_BINARY") or DEFAULT_BINARY_NAME


def _resolve(binary: str) -> str | None:
    """Absolute path of ``binary`` (a path or a name on PATH), or None if missing."""
    if os.sep in binary:
        return binary if os.path.isfile(binary) and os.access(binary, os.X_OK) else None
    return shutil.which(binary)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("qtest", "qtest emulator harness")
    group.addoption(
        "--qtest-binary",
        action="store",
        default=None,
        metavar="PATH",
        help="emulator binary to launch (default: $QTEST_QEMU_BINARY or emu-system-x86_64)",
    )
    group.addoption(
        "--qtest-log",
        action="store",
        default="none",
        metavar="none|stderr|DIR|FILE",
        help="-qtest-log target: none (default), stderr, a directory (one file per machine), or a file",
    )


def _binary_option(config: pytest.Config) -> str:
    return config.getoption("--qtest-binary", None) or _default_binary()


def pytest_report_header(config: pytest.Config) -> str:
    binary = _binary_option(config)
    resolved = _resolve(binary)
    where = resolved if resolved else "not found"
    accel = "with" if binary_has_qtest_accel(binary) else "without"
    return f"qtest: binary {binary} ({where}), {accel} -accel qtest"


@pytest.fixture(scope="session")
def qtest_binary(pytestconfig: pytest.Config) -> str:
    """Path of the emulator under test; skips the test if it cannot be found."""
    binary = _binary_option(pytestconfig)
    resolved = _resolve(binary)
    if resolved is None:
        pytest.skip(f"qtest binary {binary!r} not found (set --qtest-binary or $QTEST_QEMU_BINARY)")
    return resolved


def _log_target(option: str, node_name: str, index: int) -> str | None:
    if option in ("", "none"):
        return None
    if option == "stderr":
        return "stderr"  # QTestMachine omits -qtest-log: unbuffered log on stderr
    if os.path.isdir(option):
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", node_name)[-80:]
        return os.path.join(option, f"{safe}-{os.getpid()}-{index}.log")
    return option


@pytest.fixture
def qtest_factory(
    request: pytest.FixtureRequest, qtest_binary: str
) -> Generator[Callable[..., QTestMachine], None, None]:
    """Launch machines: ``qtest_factory(extra_args, **kw) -> QTestMachine``.

    ``kw`` goes to :class:`qtest.machine.QTestMachine`; ``binary`` defaults to
    ``qtest_binary``, ``accel_qtest`` to :func:`binary_has_qtest_accel`, and
    ``qtest_log`` to the ``--qtest-log`` choice. Every machine is quit at test
    end; an unexpected exit status fails the test (in teardown).
    """
    from qtest.machine import QTestMachine

    machines: list[QTestMachine] = []
    request.node.stash[_machines_key] = machines
    log_option: str = request.config.getoption("--qtest-log", "none") or "none"

    def factory(extra_args: Sequence[str] = (), **kw: Any) -> QTestMachine:
        binary = kw.pop("binary", qtest_binary)
        kw.setdefault("accel_qtest", binary_has_qtest_accel(binary))
        kw.setdefault("qtest_log", _log_target(log_option, request.node.name, len(machines)))
        # A failed launch raises LaunchError (with stderr) and leaves nothing running.
        machine = QTestMachine(binary, extra_args, **kw)
        machines.append(machine)
        return machine

    yield factory

    errors: list[BaseException] = []
    for machine in reversed(machines):
        try:
            machine.quit()
        except Exception as e:  # report all of them, not just the first
            errors.append(e)
    if errors:
        raise errors[0]


@pytest.fixture
def qts(qtest_factory: Callable[..., QTestMachine], qtest_binary: str) -> QTestMachine:
    """A launched ``-M pc -m 128M -nodefaults`` machine.

    With a binary lacking the qtest accelerator (a distro QEMU) ``-S`` is
    added, so that the guest firmware does not run and change state.
    """
    args = list(QTS_ARGS)
    if not binary_has_qtest_accel(qtest_binary):
        args.append("-S")
    return qtest_factory(args)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """Attach each machine's stderr (and qtest log) tail to a failing test's report."""
    report = yield
    if report.failed:
        machines: list[QTestMachine] = item.stash.get(_machines_key, [])
        for i, machine in enumerate(machines):
            try:
                text = machine.stderr_text()
            except Exception:  # never let reporting break the run
                continue
            try:
                label = f"emulator {i} stderr (pid {machine.pid})"
            except RuntimeError:
                label = f"emulator {i} stderr"
            tail = "\n".join(text.splitlines()[-STDERR_TAIL_LINES:])
            report.sections.append((label, tail or "(empty)"))
            log = machine.log_path
            if log and not log.startswith("/dev/") and os.path.isfile(log):
                try:
                    with open(log, "rb") as f:
                        lines = f.read().decode("utf-8", "replace").splitlines()
                except OSError:
                    continue
                report.sections.append((f"emulator {i} qtest log", "\n".join(lines[-STDERR_TAIL_LINES:])))
    return report
