"""The ASan/UBSan build of ``csrc/`` and the fuzzers on it (``--sanitize``, docs/fuzzing.md
"Sanitized build"): the build is instrumented and lands in a directory of its own, ``EMU_MEMCORE``
makes a process load it, an out-of-bounds access in the core is reported and kills the process,
the regression corpus replays on it with the recorded replies, short fuzz runs on it find nothing,
and a sanitizer report becomes a saved crash finding with its reproducer.

Skipped only when gcc cannot compile and link with ``-fsanitize=address,undefined``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qtest.fuzz import sanitize

pytestmark = pytest.mark.subprocess

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "fuzz" / "corpus"
INSTALLED = REPO / "emu" / "_memcore.abi3.so"
TIMEOUT = 120

#: Reads 17 bytes of a 16-byte calloc block through the C core (``mc_is_zero``): the canary.
OOB_READ = """
import ctypes, sys
from emu._native import ffi, lib
libc = ctypes.CDLL(None)
libc.calloc.restype = ctypes.c_void_p
lib.mc_is_zero(ffi.cast("uint8_t *", libc.calloc(1, 16)), int(sys.argv[1]))
"""


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sanitized extension, built in this module's own cache directory."""
    work = tmp_path_factory.mktemp("sanitize")
    why = sanitize.check_toolchain(work)
    if why is not None:
        pytest.skip(f"gcc cannot build with -fsanitize=address,undefined: {why}")
    installed = INSTALLED.stat().st_mtime_ns if INSTALLED.exists() else None
    built = sanitize.cached_build(work / "cache", log=False)
    assert (INSTALLED.stat().st_mtime_ns if INSTALLED.exists() else None) == installed  # never overwritten
    return built


def sanitized_env(core: Path, reports: Path | None = None, **extra: str) -> dict[str, str]:
    return {**os.environ, **sanitize.environment(core, reports), **extra}


def python(code: str, *args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=TIMEOUT)


def fuzz(*argv: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qtest.fuzz", *argv], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=TIMEOUT)


def test_the_build_is_instrumented_cached_and_apart_from_the_installed_one(core: Path):
    assert core.is_file() and REPO / "emu" not in core.parents
    undefined = subprocess.run(["nm", "-D", "--undefined-only", str(core)], capture_output=True, text=True,
                               check=True).stdout.split()
    assert "__asan_init" in undefined
    # UBSan's non-recovering handlers: every UB report is fatal
    assert any(s.startswith("__ubsan_handle_") and s.endswith("_abort") for s in undefined)
    assert not any(s.startswith("__ubsan_handle_") and not s.endswith("_abort") for s in undefined)
    mtime = core.stat().st_mtime_ns
    assert sanitize.cached_build(core.parents[2], log=False) == core  # reused, not rebuilt
    assert core.stat().st_mtime_ns == mtime


def test_the_builder_refuses_to_build_over_the_installed_core(tmp_path: Path):
    builder = [sys.executable, str(REPO / "csrc" / "build_memcore.py")]
    no_out = subprocess.run([*builder, "--sanitize", "address"], capture_output=True, text=True, cwd=tmp_path)
    assert no_out.returncode == 2 and "--sanitize needs --out DIR" in no_out.stderr
    bad = subprocess.run([*builder, "--sanitize", "thread", "--out", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode == 2 and "address,undefined" in bad.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_child_loads_the_sanitized_core_and_runs_memcore_operations(core: Path, tmp_path: Path):
    code = textwrap.dedent("""
        import json, sys
        from emu._native import ffi, lib
        from emu.migration.stream import xbzrle_decode
        b = lib.mc_block_new(3 * 4096)
        data = bytes(range(256)) * 4
        out = ffi.new("uint8_t[]", len(data))
        old, new = bytes(4096), bytearray(4096)
        new[100:104] = b"abcd"
        delta = ffi.new("uint8_t[]", 4096)
        n = lib.xb_encode_page(old, bytes(new), delta)
        page = bytearray(old)
        b64 = ffi.new("uint8_t[]", 16)
        print(json.dumps({
            "file": sys.modules["emu._memcore"].__file__,
            "asan_mapped": "/libasan.so" in open("/proc/self/maps").read(),
            "write": lib.mc_block_write(b, 4096 + 10, data, len(data)),
            "read": lib.mc_block_read(b, 4096 + 10, out, len(data)),
            "same": ffi.buffer(out)[:] == data,
            "past_end": lib.mc_block_read(b, 3 * 4096 - 1, out, 2),
            "dirty": [lib.mc_dirty_set(b, 4096 + 10, len(data)), lib.mc_dirty_count(b), lib.mc_dirty_find_next(b, 0)],
            "xbzrle": [ffi.buffer(delta, n)[:].hex(), xbzrle_decode(ffi.buffer(delta, n)[:], page), page == new],
            "b64": ffi.buffer(b64, lib.mc_glib_b64_decode(b"aGVsbG8=", 8, b64))[:].decode(),
        }))
        lib.mc_block_free(b)
    """)
    reports = tmp_path / "reports"
    reports.mkdir()
    result = python(code, env=sanitized_env(core, reports), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # QEMU's XBZRLE form: zero run 100 (uleb128 0x64), then a 4-byte literal run
    assert json.loads(result.stdout) == {
        "file": str(core), "asan_mapped": True, "write": 0, "read": 0, "same": True, "past_end": -1,
        "dirty": [0, 1, 1], "xbzrle": ["640461626364", 104, True], "b64": "hello"}
    assert list(reports.iterdir()) == []


def test_an_out_of_bounds_read_in_the_core_is_reported_and_fatal(core: Path, tmp_path: Path):
    reports = tmp_path / "reports"
    reports.mkdir()
    env = sanitized_env(core, reports)
    assert python(OOB_READ, "16", env=env, cwd=tmp_path).returncode == 0  # in bounds: nothing to say
    assert list(reports.iterdir()) == []
    result = python(OOB_READ, "17", env=env, cwd=tmp_path)
    assert result.returncode == -6  # abort_on_error: a signal death, which every target calls a crash
    [report] = sanitize.report_files(reports)
    assert report.name == f"report.{report.name.split('.')[1]}"
    text = report.read_text()
    assert "READ of size 1" in text and "in mc_is_zero" in text and "memcore.c:" in text
    assert sanitize.summary(text).startswith("SUMMARY: AddressSanitizer: heap-buffer-overflow ")


def test_the_loader_refuses_a_bad_path_or_a_missing_runtime(core: Path, tmp_path: Path):
    code = "import emu._native"
    missing = python(code, env={**os.environ, "EMU_MEMCORE": str(tmp_path / "nope.so")}, cwd=tmp_path)
    assert missing.returncode == 1 and "ImportError: EMU_MEMCORE=" in missing.stderr
    assert "no such file" in missing.stderr
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    no_runtime = python(code, env={**env, "EMU_MEMCORE": str(core)}, cwd=tmp_path)
    assert no_runtime.returncode == 1 and "is a sanitized build" in no_runtime.stderr
    assert "LD_PRELOAD=" in no_runtime.stderr


def test_the_corpus_replays_with_the_recorded_replies_on_the_sanitized_core(core: Path, tmp_path: Path):
    """``test_corpus.py`` (exact replies, load outcomes, memory bounds, clean exits) in a child
    pytest whose emulators all run on the sanitized core, then the QMP reproducer's replay."""
    reports = tmp_path / "reports"
    reports.mkdir()
    env = sanitized_env(core, reports)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                             "--rootdir", str(REPO), str(REPO / "tests" / "fuzz" / "test_corpus.py")],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)
    qtest_and_mig = len([p for p in CORPUS.iterdir() if p.name.endswith((".qtest", ".recipe", ".mig"))])
    assert result.returncode == 0, result.stdout[-3000:]
    assert f"{qtest_and_mig + 1} passed" in result.stdout
    for qmp_file in sorted(CORPUS.glob("*.qmp")):
        replay = subprocess.run([sys.executable, "-m", "qtest.fuzz.qmp", "--replay", str(qmp_file)], env=env,
                                cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT)
        assert replay.returncode == 0 and replay.stdout.strip().endswith("no finding"), replay.stderr[-2000:]
    assert list(reports.iterdir()) == []


@pytest.mark.parametrize("target", ["qtest", "stream"])
def test_a_short_sanitized_fuzz_run_finds_nothing(core: Path, tmp_path: Path, target: str):
    env = {**os.environ, sanitize.CACHE_ENV: str(core.parents[2])}
    result = fuzz(target, "--count", "40", "--sanitize", "--out", str(tmp_path / "out"), env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"[sanitize] EMU_MEMCORE={core}\n" in result.stderr  # the cached build, not a new one
    assert "40 execs in" in result.stderr and ", 0 finding(s)" in result.stderr
    if target == "stream":  # in process: the worker itself runs on the sanitized core
        assert f"emu._memcore is {core}\n" in result.stderr
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def test_an_emulator_sanitizer_report_is_a_saved_crash_with_its_reproducer(core: Path, tmp_path: Path):
    """A stand-in emulator dies of an out-of-bounds read in the core: the stream target sees the
    death, the runner attaches the report, and the reproducer replays under the same environment."""
    fake = tmp_path / "fake-emu"
    fake.write_text(f"#!{sys.executable}\n{OOB_READ.replace('int(sys.argv[1])', '17')}")
    fake.chmod(0o755)
    env = {**os.environ, sanitize.CACHE_ENV: str(core.parents[2])}
    out = tmp_path / "out"
    result = fuzz("stream", "--process", "--count", "1", "--sanitize", "--out", str(out), "--binary", str(fake),
                  env=env, cwd=REPO)
    assert result.returncode == 1, result.stderr[-3000:]
    [repro] = out.glob("crash-*.mig")
    note = repro.with_suffix(".mig.txt").read_text()
    assert note.startswith("crash: SUMMARY: AddressSanitizer: heap-buffer-overflow ")
    assert "in mc_is_zero" in note and "killed by signal 6" in note
    assert f"EMU_MEMCORE={core} {fake} -M none" in note
    assert "ERROR: AddressSanitizer: heap-buffer-overflow" in repro.with_suffix(".mig.sanitizer.txt").read_text()
    assert sanitize.report_files(out / "sanitizer", recursive=True) == set()  # every report claimed


def test_a_worker_killed_in_process_leaves_its_input_and_report(core: Path, tmp_path: Path):
    """An in-process target whose input triggers the canary: the worker itself aborts, and the
    runner saves the in-flight input with the worker's report."""
    (tmp_path / "canary_target.py").write_text(textwrap.dedent("""
        from emu._native import ffi, lib
        import ctypes
        class Canary:
            def __init__(self, args):
                libc = ctypes.CDLL(None)
                libc.calloc.restype = ctypes.c_void_p
                self.buf = ffi.cast("uint8_t *", libc.calloc(1, 16))
            def generate(self, rng):
                return bytes([rng.randrange(256) for _ in range(8)])
            def run_one(self, data):
                lib.mc_is_zero(self.buf, 17 if data[0] == 0xC3 else 16)
            def minimise(self, data, finding):
                return finding
            def close(self):
                pass
        def make_target(args):
            return Canary(args)
    """))
    (tmp_path / "run.py").write_text(textwrap.dedent(f"""
        import argparse, sys
        from qtest.fuzz import common
        import canary_target
        if __name__ == "__main__":
            args = argparse.Namespace(time=None, count=3000, jobs=1, seed=0, out="out", target="stream",
                                      memcore={str(core)!r})
            sys.exit(common.run_jobs("canary", canary_target.make_target, args))
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "run.py"], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.returncode == 1, result.stderr[-3000:]
    [repro] = (tmp_path / "out").glob("crash-*.mig")
    assert repro.read_bytes()[0] == 0xC3 and len(repro.read_bytes()) == 8
    note = repro.with_suffix(".mig.txt").read_text()
    assert "heap-buffer-overflow" in note and "exited with status -6 while running this input" in note
    assert "in mc_is_zero" in repro.with_suffix(".mig.sanitizer.txt").read_text()
    assert not list((tmp_path / "out" / "sanitizer").iterdir())  # in-flight file and worker dir gone


def test_a_ubsan_report_has_a_one_line_summary():
    report = ("csrc/xbzrle.c:10:5: runtime error: shift exponent 70 is too large for 64-bit type 'long unsigned int'\n"
              "    #0 0x7f in xb_encode_page csrc/xbzrle.c:10\n\n"
              "SUMMARY: UndefinedBehaviorSanitizer: undefined-behavior csrc/xbzrle.c:10:5 in \n")
    assert sanitize.summary(report) == "SUMMARY: UndefinedBehaviorSanitizer: undefined-behavior csrc/xbzrle.c:10:5 in"
    assert sanitize.summary(report.split("\n\n")[0]).startswith("csrc/xbzrle.c:10:5: runtime error: shift")


def test_sanitize_refuses_a_qemu_binary(tmp_path: Path):
    qemu = shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64"
    result = fuzz("qtest", "--count", "1", "--sanitize", "--binary", qemu, "--out", str(tmp_path), env=dict(os.environ),
                  cwd=REPO)
    assert result.returncode == 1 and "does not apply to a QEMU --binary" in result.stderr
