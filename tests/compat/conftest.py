"""Opt-in runner for QEMU's own qtest programs (``tests/compat/test_qemu_qtests.py``).

QEMU's qtest programs (migration-test, rtc-test...) are C programs built outside the repository
by ``../shared/tools/build-qemu72-qtests.sh``. Given their build directory, every case they list
becomes one pytest test, run against our ``emu-system-x86_64`` (or against another binary, e.g.
QEMU's own, to produce the comparison table)::

    pytest tests/compat/test_qemu_qtests.py --qemu-qtests ~/qemu72/build
    QEMU_QTESTS_DIR=~/qemu72/build pytest tests/compat/test_qemu_qtests.py -n auto
    pytest ... --qemu-qtests-programs rtc-test,fw_cfg-test --qemu-qtests-timeout 120
    pytest ... --qemu-qtests-binary ~/qemu72/build/qemu-system-x86_64

Every option has an environment variable (``QEMU_QTESTS_DIR``, ``QEMU_QTESTS_PROGRAMS``,
``QEMU_QTESTS_BINARY``, ``QEMU_QTESTS_TIMEOUT``) which is the option's default: the variables work
for any invocation, while the command-line options are only known when pytest loads this conftest
at startup (see ``docs/qemu-qtests.md``).

Without a directory the single placeholder test is skipped ("QEMU's qtest programs not given"):
CI does not build QEMU, and this is the one allowed skip.

libqtest derives the target architecture from the binary's *name* (``*-system-x86_64``), so the
binary under test is reached through a link with such a name in a private per-process directory.
Cases are enumerated with ``PROG -l`` (which needs ``QTEST_QEMU_BINARY``; some programs even start
the binary to list), once per process, in a private working directory with its own ``TMPDIR``.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

#: The programs ``build-qemu72-qtests.sh`` builds (the last two with ``QTESTS=...``, see
#: docs/qemu-qtests.md), in the order they are run; those not built are left out.
DEFAULT_PROGRAMS = ("migration-test", "fw_cfg-test", "rtc-test", "i440fx-test", "endianness-test",
                    "boot-order-test", "pvpanic-test", "pvpanic-pci-test")
NOT_GIVEN = "QEMU's qtest programs not given: --qemu-qtests DIR (or QEMU_QTESTS_DIR=DIR)"
LIST_TIMEOUT = 60.0
OUR_SCRIPT = "emu-system-x86_64"


# --------------------------------------------------------------------------------------
# Options and marker
# --------------------------------------------------------------------------------------

def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "qemu_qtests: runs one case of QEMU's own qtest programs (opt-in: --qemu-qtests DIR)")


def pytest_report_header(config: pytest.Config) -> str | None:
    d = _opt(config, "qemu_qtests", "QEMU_QTESTS_DIR")
    if not d:
        return None
    binary = _opt(config, "qemu_qtests_binary", "QEMU_QTESTS_BINARY") or OUR_SCRIPT
    return f"qemu-qtests: {d} against {binary}"


def _opt(config: pytest.Config, name: str, env: str, default=None):
    """The option's value; falls back on the environment when the option was never declared."""
    try:
        return config.getoption(name)
    except ValueError:
        return os.environ.get(env) or default


# --------------------------------------------------------------------------------------
# Session setup: programs, binary link, qemu-img
# --------------------------------------------------------------------------------------

@dataclass
class Case:
    program: str            # e.g. "rtc-test"
    path: str               # e.g. "/x86_64/rtc/check-time/bcd"; "" for a setup/listing failure
    exclude: list[str] = field(default_factory=list)   # listed sub-cases of ``path`` (``-s``)
    error: str = ""         # why the case could not be enumerated

    @property
    def id(self) -> str:
        return f"{self.program}:{self.path or '(list)'}"


@dataclass
class Setup:
    """What every case needs; built once per process (each xdist worker has its own)."""
    qtest_dir: Path | None = None
    qemu_img: str | None = None
    binary: str = ""          # the link named *-system-x86_64 handed to QTEST_QEMU_BINARY
    target: str = ""          # what the link points at (for messages)
    timeout: float = 300.0
    workdir: Path | None = None
    cases: list[Case] = field(default_factory=list)
    error: str = ""

    def run(self, program: str, args: list[str], d: Path, timeout: float) -> Run:
        """Runs ``program args`` with cwd ``d/cwd``, TMPDIR ``d/tmp``, output in ``d/stdout``
        and ``d/stderr``."""
        argv = [str(self.qtest_dir / program), *args]
        out, err = d / "stdout", d / "stderr"
        status = run_group(argv, d / "cwd", qtest_env(self, d / "tmp"), timeout, out, err)
        return Run(argv, status, out.read_text(errors="replace"), err.read_text(errors="replace"))


@dataclass
class Run:
    argv: list[str]
    status: int | None        # None: timed out (the process group was killed)
    stdout: str
    stderr: str


_SETUP_KEY = pytest.StashKey[Setup]()


def short_tempdir(prefix: str) -> Path:
    """A private directory with a short path: sockets under TMPDIR must fit AF_UNIX's 107 bytes."""
    base = tempfile.gettempdir()
    if len(base) > 40 and os.path.isdir("/tmp"):
        base = "/tmp"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def _qtest_dir(arg: str) -> tuple[Path | None, str | None]:
    """(tests/qtest directory, qemu-img) from a build directory or a tests/qtest directory."""
    d = Path(arg).expanduser().resolve()
    if (d / "tests" / "qtest").is_dir():
        build, qdir = d, d / "tests" / "qtest"
    elif d.is_dir():
        qdir = d
        build = d.parent.parent if d.name == "qtest" and d.parent.name == "tests" else d
    else:
        return None, None
    img = os.environ.get("QTEST_QEMU_IMG")
    if not img:
        for cand in (build / "qemu-img", qdir / "qemu-img"):
            if os.access(cand, os.X_OK):
                img = str(cand)
                break
        else:
            img = shutil.which("qemu-img")
    return qdir, img


def _our_script() -> str:
    """The real console script file of ``emu-system-x86_64`` (never a pyenv/asdf shim, whose
    name-based dispatch breaks under another name); "" when there is none."""
    scripts = sysconfig.get_path("scripts")
    cand = Path(scripts) / OUR_SCRIPT if scripts else None
    if cand is not None and os.access(cand, os.X_OK):
        return str(cand)
    found = shutil.which(OUR_SCRIPT)
    if found:
        real = os.path.realpath(found)
        try:
            head = Path(real).read_bytes()[:2048]
        except OSError:
            head = b""
        if b"pyenv" not in head and b"asdf" not in head and "/shims/" not in real:
            return real
    return ""


def _make_binary(workdir: Path, other: str | None) -> tuple[str, str]:
    """(link for QTEST_QEMU_BINARY, what it runs)."""
    bindir = workdir / "bin"
    bindir.mkdir()
    if other:
        target = shutil.which(other) or other
        target = os.path.realpath(target)
        if not os.access(target, os.X_OK):
            raise FileNotFoundError(f"--qemu-qtests-binary {other}: not an executable file")
        name = os.path.basename(target)
        link = bindir / (name if name.endswith("-system-x86_64") else "qemu-system-x86_64")
        link.symlink_to(target)
        return str(link), target
    link = bindir / OUR_SCRIPT
    script = _our_script()
    if script:
        link.symlink_to(script)
        return str(link), script
    # No console script found: a wrapper that runs emu.cli with this very interpreter.
    link.write_text(
        "#!/bin/sh\n"
        f"exec '{sys.executable}' -c 'import sys; sys.argv[0] = \"{OUR_SCRIPT}\"; "
        "from emu.cli import main; sys.exit(main())' \"$@\"\n")
    link.chmod(0o755)
    return str(link), f"{sys.executable} -c 'from emu.cli import main' (wrapper)"


def qtest_env(setup: Setup, tmpdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["QTEST_QEMU_BINARY"] = setup.binary
    if setup.qemu_img:
        env["QTEST_QEMU_IMG"] = setup.qemu_img
    env["TMPDIR"] = str(tmpdir)
    env.pop("QTEST_LOG", None)
    return env


def run_group(argv: list[str], cwd: Path, env: dict[str, str], timeout: float,
              out: Path, err: Path) -> int | None:
    """Runs ``argv`` in its own session with output to files (a leftover child holding a pipe
    cannot block us); returns the exit status, or None on timeout. The whole process group is
    killed in every case, so no emulator outlives its case."""
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=fo, stderr=fe,
                                start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()


def _list_cases(setup: Setup, program: str) -> list[Case]:
    prog = setup.qtest_dir / program
    if not os.access(prog, os.X_OK):
        return [Case(program, "", error=f"{prog}: not built (see ../shared/tools/build-qemu72-qtests.sh)")]
    d = setup.workdir / f"list-{program}"
    (d / "tmp").mkdir(parents=True)
    out, err = d / "stdout", d / "stderr"
    status = run_group([str(prog), "-l"], d, qtest_env(setup, d / "tmp"), LIST_TIMEOUT, out, err)
    paths = [line.strip() for line in out.read_text(errors="replace").splitlines() if line.startswith("/")]
    if not paths:
        what = "timed out" if status is None else f"exit status {status}"
        return [Case(program, "", error=f"`{prog} -l` listed no case ({what}) with QTEST_QEMU_BINARY="
                     f"{setup.binary}\n--- stdout\n{tail(out)}\n--- stderr\n{tail(err)}")]
    cases = []
    for p in dict.fromkeys(paths):   # keep order, drop duplicates
        # -p PATH also runs PATH/...: skip the listed sub-cases, they are tests of their own.
        cases.append(Case(program, p, exclude=[q for q in paths if q.startswith(p + "/")]))
    return cases


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _setup(config: pytest.Config) -> Setup:
    if _SETUP_KEY in config.stash:
        return config.stash[_SETUP_KEY]
    setup = Setup()
    config.stash[_SETUP_KEY] = setup
    arg = _opt(config, "qemu_qtests", "QEMU_QTESTS_DIR")
    if not arg:
        return setup
    setup.timeout = float(_opt(config, "qemu_qtests_timeout", "QEMU_QTESTS_TIMEOUT", 300))
    setup.qtest_dir, setup.qemu_img = _qtest_dir(arg)
    if setup.qtest_dir is None:
        setup.error = f"--qemu-qtests {arg}: no such directory"
        return setup
    wanted = _opt(config, "qemu_qtests_programs", "QEMU_QTESTS_PROGRAMS")
    if wanted:
        programs = [p.strip() for p in wanted.split(",") if p.strip()]
    else:
        programs = [p for p in DEFAULT_PROGRAMS if os.access(setup.qtest_dir / p, os.X_OK)]
        if not programs:
            setup.error = (f"no qtest program ({', '.join(DEFAULT_PROGRAMS)}) in {setup.qtest_dir}: "
                           "build them with ../shared/tools/build-qemu72-qtests.sh")
            return setup
    setup.workdir = short_tempdir("qqs-")
    try:
        setup.binary, setup.target = _make_binary(
            setup.workdir, _opt(config, "qemu_qtests_binary", "QEMU_QTESTS_BINARY"))
    except FileNotFoundError as e:
        setup.error = str(e)
        return setup
    if not setup.binary:
        setup.error = f"{OUR_SCRIPT} is not installed: pip install -e ."
        return setup
    for program in programs:
        setup.cases.extend(_list_cases(setup, program))
    return setup


def _cleanup(config: pytest.Config) -> None:
    setup = config.stash.get(_SETUP_KEY, None)
    if setup is not None and setup.workdir is not None:
        shutil.rmtree(setup.workdir, ignore_errors=True)


def pytest_sessionfinish(session: pytest.Session) -> None:
    # Here rather than only at unconfigure: an xdist worker may be torn down before it unconfigures.
    _cleanup(session.config)


def pytest_unconfigure(config: pytest.Config) -> None:
    _cleanup(config)


# --------------------------------------------------------------------------------------
# Parametrization and fixtures for tests/compat/test_qemu_qtests.py
# --------------------------------------------------------------------------------------

def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "qemu_qtest_case" not in metafunc.fixturenames:
        return
    setup = _setup(metafunc.config)
    if setup.qtest_dir is None and not setup.error:
        params = [pytest.param(None, id="not-given", marks=pytest.mark.skip(reason=NOT_GIVEN))]
    elif setup.error:
        params = [pytest.param(Case("setup", "", error=setup.error), id="setup")]
    else:
        params = [pytest.param(c, id=c.id) for c in setup.cases]
    metafunc.parametrize("qemu_qtest_case", params)


@pytest.fixture(scope="session")
def qemu_qtests_setup(pytestconfig: pytest.Config) -> Setup:
    return _setup(pytestconfig)


@pytest.fixture
def qemu_qtest_tmp() -> Iterator[Path]:
    """A per-case directory with a short path: ``cwd/`` is the case's working directory,
    ``tmp/`` its TMPDIR (libqtest's and migration-test's sockets and files)."""
    d = short_tempdir("qqt-")
    (d / "cwd").mkdir()
    (d / "tmp").mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)
