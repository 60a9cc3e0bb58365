"""QEMU's own qtest programs against our binary: one pytest test per qtest case (opt-in).

    pytest tests/compat/test_qemu_qtests.py --qemu-qtests ~/qemu72/build [-n auto]
    QEMU_QTESTS_DIR=~/qemu72/build pytest tests/compat/test_qemu_qtests.py

Options, enumeration and the binary link live in ``tests/compat/conftest.py``; see also
``docs/qemu-qtests.md``. Test ids are ``PROGRAM:CASE``, e.g.
``migration-test:/x86_64/migration/precopy/unix/plain``.

Each case runs as ``PROGRAM --tap -k -p CASE`` (plus ``-s SUB`` for listed sub-cases of CASE, which
are tests of their own) with ``QTEST_QEMU_BINARY`` set to a ``*-system-x86_64`` link to the binary
under test and ``QTEST_QEMU_IMG`` to the build's qemu-img, in its own working directory with its
own ``TMPDIR`` (libqtest puts its sockets there): parallel-safe, no fixed ports. Verdicts come from
the TAP stream: ``ok`` passes, ``ok ... # SKIP reason`` skips with QEMU's reason, ``not ok ... #
TODO`` is an expected failure, ``not ok``, ``Bail out!``, a missing result or a non-zero exit
status fail with the tail of the output; a hung case is killed with its whole process group.

Without ``--qemu-qtests``/``QEMU_QTESTS_DIR`` the single placeholder test is skipped (CI does not
build QEMU). The TAP parser's own tests below always run.
"""
from __future__ import annotations

import re
import signal
from dataclasses import dataclass

import pytest

TAIL_LINES = 40

_RESULT = re.compile(r"^(?P<verdict>not ok|ok)\b[ \t]*(?P<num>\d+)?[ \t]*(?P<rest>.*)$")
_DIRECTIVE = re.compile(r"(?:^|\s)#\s*(?P<kind>SKIP|TODO)\b[ \t:]*(?P<reason>.*)$", re.IGNORECASE)


@dataclass
class TapResult:
    ok: bool
    name: str
    directive: str = ""      # "SKIP", "TODO" or ""
    reason: str = ""


def parse_tap(text: str) -> tuple[list[TapResult], str | None]:
    """The results of a TAP stream, and the ``Bail out!`` message if there is one."""
    results: list[TapResult] = []
    bail = None
    for line in text.splitlines():
        line = line.rstrip()
        m = _RESULT.match(line)
        if m:
            rest = m["rest"]
            d = _DIRECTIVE.search(rest)
            directive = reason = ""
            if d:
                directive, reason = d["kind"].upper(), d["reason"].strip()
                rest = rest[:d.start()]
            results.append(TapResult(m["verdict"] == "ok", rest.strip().removeprefix("- ").strip(),
                                     directive, reason))
        elif line.startswith("Bail out!") and bail is None:
            bail = line[len("Bail out!"):].strip() or "Bail out!"
    return results, bail


def _tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _status(status: int | None) -> str:
    if status is None:
        return "timed out"
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


def verdict(case: str, results: list[TapResult], bail: str | None, status: int | None) -> tuple[str, str]:
    """("pass" | "skip" | "xfail" | "fail", reason) for ``case`` from its TAP results."""
    mine = [r for r in results if r.name == case]
    if not mine and len(results) == 1 and not results[0].name:
        mine = results                       # a result line without a description
    if bail is not None and not (mine and not mine[-1].ok):
        return "fail", f"Bail out! {bail} ({_status(status)})"
    if not mine:
        return "fail", f"no TAP result for {case} ({_status(status)})"
    r = mine[-1]
    if not r.ok:
        if r.directive == "TODO":
            return "xfail", r.reason or "TODO"
        return "fail", f"not ok {case} ({_status(status)})"
    if status != 0:
        return "fail", f"reported ok, then {_status(status)}"
    if r.directive == "SKIP":
        return "skip", r.reason or "skipped by the qtest program"
    return "pass", ""


@pytest.mark.qemu_qtests
@pytest.mark.subprocess
def test_qemu_qtest(qemu_qtest_case, qemu_qtests_setup, qemu_qtest_tmp):
    case = qemu_qtest_case
    if case.error:
        pytest.fail(case.error, pytrace=False)
    setup = qemu_qtests_setup
    args = ["--tap", "-k", "-p", case.path]
    for sub in case.exclude:
        args += ["-s", sub]
    run = setup.run(case.program, args, qemu_qtest_tmp, setup.timeout)

    def details() -> str:
        return (f"\n$ QTEST_QEMU_BINARY={setup.binary} (-> {setup.target}) "
                f"QTEST_QEMU_IMG={setup.qemu_img} TMPDIR={qemu_qtest_tmp / 'tmp'} {' '.join(run.argv)}"
                f"\n--- stdout (tail)\n{_tail(run.stdout)}\n--- stderr (tail)\n{_tail(run.stderr)}")

    if run.status is None:
        pytest.fail(f"{case.id}: timed out (hung) after {setup.timeout:g} s; process group killed"
                    + details(), pytrace=False)
    results, bail = parse_tap(run.stdout)
    kind, reason = verdict(case.path, results, bail, run.status)
    if kind == "skip":
        pytest.skip(f"{case.id}: {reason}")
    if kind == "xfail":
        pytest.xfail(f"{case.id}: {reason}")
    if kind == "fail":
        pytest.fail(f"{case.id}: {reason}" + details(), pytrace=False)


# --------------------------------------------------------------------------------------
# The TAP interpretation itself (no QEMU needed)
# --------------------------------------------------------------------------------------

GLIB_OK = """\
TAP version 13
# random seed: R02S36350ab1a18b1f4048368914291498a0
# Start of x86_64 tests
ok 1 /x86_64/rtc/check-time/bcd
# End of x86_64 tests
1..1
"""


@pytest.mark.parametrize("text,status,expected", [
    (GLIB_OK, 0, ("pass", "")),
    (GLIB_OK, 1, ("fail", "reported ok, then exit status 1")),
    ("ok 1 /x86_64/rtc/check-time/bcd # SKIP no /dev/kvm\n1..1\n", 0, ("skip", "no /dev/kvm")),
    ("not ok 1 /x86_64/rtc/check-time/bcd # TODO flaky\n", 0, ("xfail", "flaky")),
    ("not ok 1 /x86_64/rtc/check-time/bcd\n1..1\n", 1,
     ("fail", "not ok /x86_64/rtc/check-time/bcd (exit status 1)")),
    ("# Start of rtc tests\nBail out! ERROR:../tests/qtest/rtc-test.c:42:check_time: assertion failed\n", -6,
     ("fail", "Bail out! ERROR:../tests/qtest/rtc-test.c:42:check_time: assertion failed (killed by SIGABRT)")),
    ("# random seed: R02S\n", 1, ("fail", "no TAP result for /x86_64/rtc/check-time/bcd (exit status 1)")),
    ("ok 1 /x86_64/rtc/check-time/bcd/sub\n", 0,
     ("fail", "no TAP result for /x86_64/rtc/check-time/bcd (exit status 0)")),
], ids=["ok", "ok-then-exit-1", "skip", "todo", "not-ok", "bail-out", "nothing", "other-case"])
def test_verdict_from_tap(text, status, expected):
    results, bail = parse_tap(text)
    assert verdict("/x86_64/rtc/check-time/bcd", results, bail, status) == expected
