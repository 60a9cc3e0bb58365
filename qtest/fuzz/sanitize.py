"""The fuzzers' ASan/UBSan mode (``--sanitize``): a cached sanitized build of ``csrc/``, the
environment that makes every process of a run load it, and the sanitizer reports it leaves.

* Build: ``csrc/build_memcore.py --sanitize address,undefined --out DIR`` in a child process,
  into ``$EMU_SANITIZE_CACHE`` (default ``~/.cache/emu/sanitized-memcore``), one directory per
  hash of the C sources, the builder, the Python version and the compiler; built in a scratch
  directory and renamed into place, so concurrent runs never see half a build, and the installed
  ``emu/_memcore.abi3.so`` is never touched.
* Environment: CPython is not instrumented, so the ASan runtime is preloaded (``LD_PRELOAD``);
  ``EMU_MEMCORE`` makes :mod:`emu._native` load the sanitized file. Every finding aborts the process
  (SIGABRT: the targets classify that as a crash); reports go to ``<dir>/report.<pid>`` files that
  :mod:`qtest.fuzz.common` attaches to the finding. Leak checking is off (CPython "leaks" at
  exit), ``malloc`` returns NULL on impossible sizes as glibc does (Python raises MemoryError), and
  the quarantine is small so that the memory oracles keep their meaning.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

CSRC = Path(__file__).resolve().parents[2] / "csrc"
BUILDER = CSRC / "build_memcore.py"
SANITIZERS = "address,undefined"
CACHE_ENV = "EMU_SANITIZE_CACHE"
MEMCORE_ENV = "EMU_MEMCORE"
#: Runtime options (``log_path`` is added per run).
ASAN_OPTIONS = "detect_leaks=0:abort_on_error=1:allocator_may_return_null=1:quarantine_size_mb=16"
UBSAN_OPTIONS = "halt_on_error=1:abort_on_error=1:print_stacktrace=1"
REPORT_PREFIX = "report"
#: What a dead in-process worker's last input is saved as, per target: (suffix, how it replays)
RAW_INPUTS = {
    "stream": (".mig", "python -m qtest.fuzz.stream THIS_FILE"),
    "qmp": (".qmp", "python -m qtest.fuzz.qmp --replay THIS_FILE"),
    "qtest": (".bin", "(the raw generic-fuzz input: decode it with qtest.fuzz.generic.Decoder)"),
}
_SUMMARY = re.compile(r"^SUMMARY: \w*Sanitizer: .*$", re.M)
_UB = re.compile(r"^.*runtime error: .*$", re.M)
_ERROR = re.compile(r"^==\d+==ERROR: \w*Sanitizer: .*$", re.M)


class SanitizerUnavailable(RuntimeError):
    """The compiler cannot build or the system cannot run a sanitized core."""


def _compiler() -> str:
    return os.environ.get("CC", "gcc")


@functools.lru_cache(maxsize=1)
def runtime_library() -> str:
    """The ASan runtime to preload (``gcc -print-file-name=libasan.so``)."""
    try:
        out = subprocess.run([_compiler(), "-print-file-name=libasan.so"], capture_output=True, text=True,
                             check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as e:
        raise SanitizerUnavailable(f"cannot ask {_compiler()} for libasan.so: {e}") from e
    if not os.path.isabs(out) or not os.path.exists(out):
        raise SanitizerUnavailable(f"{_compiler()} has no libasan.so (Debian: apt-get install libasan8 / gcc)")
    return os.path.realpath(out)


def check_toolchain(work_dir: Path) -> str | None:
    """None when a C file compiles and links with ``-fsanitize=address,undefined``, else why not."""
    src = work_dir / "probe.c"
    src.write_text("int main(void) { return 0; }\n")
    argv = [_compiler(), f"-fsanitize={SANITIZERS}", "-o", str(work_dir / "probe"), str(src)]
    try:
        result = subprocess.run(argv, capture_output=True, text=True)
    except OSError as e:
        return f"{argv[0]}: {e}"
    if result.returncode != 0:
        return (result.stderr.strip().splitlines() or ["(no message)"])[-1]
    try:
        runtime_library()
    except SanitizerUnavailable as e:
        return str(e)
    return None


def build_key() -> str:
    """Hash of what the sanitized build depends on."""
    h = hashlib.sha256()
    for path in sorted([*CSRC.glob("*.c"), *CSRC.glob("*.h"), BUILDER]):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    try:
        cc = subprocess.run([_compiler(), "--version"], capture_output=True, text=True).stdout
    except OSError:
        cc = ""
    h.update(f"{SANITIZERS}\0{sys.version}\0{sys.platform}\0{cc}".encode())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    """``$EMU_SANITIZE_CACHE``, else ``$XDG_CACHE_HOME/emu/sanitized-memcore`` (``~/.cache/...``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "emu" / "sanitized-memcore"


def _extension_in(build_dir: Path) -> Path | None:
    found = sorted(build_dir.glob("emu/_memcore*.so"))
    return found[0] if found else None


def cached_build(cache: Path | None = None, log: bool = True) -> Path:
    """The sanitized extension for the current sources: reused from ``cache`` (default
    :func:`cache_dir`), or built there first; SanitizerUnavailable when the build fails."""
    if not BUILDER.is_file():
        raise SanitizerUnavailable(f"no {BUILDER}: --sanitize needs the source tree (an editable install)")
    cache = cache or cache_dir()
    final = cache / build_key()
    found = _extension_in(final)
    if found is not None:
        return found
    cache.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"{final.name}.building-", dir=cache))
    if log:
        sys.stderr.write(f"[sanitize] building the C core with -fsanitize={SANITIZERS} in {final}\n")
    result = subprocess.run([sys.executable, str(BUILDER), "--sanitize", SANITIZERS, "--out", str(scratch),
                             "--quiet"], capture_output=True, text=True)
    if result.returncode != 0 or _extension_in(scratch) is None:
        shutil.rmtree(scratch, ignore_errors=True)
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise SanitizerUnavailable(f"the sanitized build failed (status {result.returncode}):\n{tail}")
    try:
        scratch.rename(final)
    except OSError:  # another run finished the same build first: use theirs
        shutil.rmtree(scratch, ignore_errors=True)
    found = _extension_in(final)
    assert found is not None
    return found


def environment(memcore: Path | str, report_dir: Path | None = None) -> dict[str, str]:
    """The variables a process needs to run on the sanitized core; with ``report_dir``, reports
    go to ``report_dir/report.<pid>`` instead of stderr."""
    log = f":log_path={Path(report_dir).resolve() / REPORT_PREFIX}" if report_dir is not None else ""
    runtime = runtime_library()
    others = [p for p in os.environ.get("LD_PRELOAD", "").replace(" ", ":").split(":") if p and p != runtime]
    return {"LD_PRELOAD": ":".join([runtime, *others]), "ASAN_OPTIONS": ASAN_OPTIONS + log,  # ASan first
            "UBSAN_OPTIONS": UBSAN_OPTIONS + log, MEMCORE_ENV: str(memcore)}


@contextlib.contextmanager
def applied(env: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``env`` for the duration (processes started meanwhile inherit it)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def replay_prefix(memcore: Path | str) -> str:
    """``VAR=value ...`` to put before a replay command line (reports on stderr)."""
    return " ".join(f"{k}={shlex.quote(v)}" for k, v in environment(memcore).items()) + " "


def report_files(report_dir: Path, recursive: bool = False) -> set[Path]:
    """The sanitizer reports written so far in ``report_dir`` (and below it if ``recursive``)."""
    find = report_dir.rglob if recursive else report_dir.glob
    return set(find(f"{REPORT_PREFIX}.*"))


def summary(report: str) -> str:
    """A report's one-line summary (``SUMMARY: AddressSanitizer: heap-buffer-overflow ...``)."""
    for pattern in (_SUMMARY, _UB, _ERROR):
        m = pattern.search(report)
        if m:
            return m.group(0).strip()[:300]
    lines = report.strip().splitlines()
    return lines[0][:300] if lines else "(empty sanitizer report)"


def prepare(args: argparse.Namespace) -> None:
    """For ``--sanitize``: builds or reuses the core and sets ``args.memcore``; exits with a
    message when the toolchain cannot, or when ``--binary`` is not our emulator."""
    if Path(args.binary).name.startswith("qemu"):
        raise SystemExit("--sanitize instruments our C core (csrc/): it does not apply to a QEMU --binary")
    try:
        args.memcore = str(cached_build())
        runtime_library()
    except SanitizerUnavailable as e:
        raise SystemExit(f"--sanitize: {e}") from None
    sys.stderr.write(f"[sanitize] {MEMCORE_ENV}={args.memcore}\n")
