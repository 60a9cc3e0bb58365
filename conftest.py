"""Project-wide pytest configuration.

The ``qtest`` pytest plugin (fixtures ``qts``, ``qtest_factory``...) is loaded through its
``pytest11`` entry point once the package is installed. Here: the fixtures that locate the real
QEMU used by the compatibility tests, and the shared vectors directory.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("QTEST_EMU_SHARED", ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def real_qemu() -> str:
    """Path to Debian's qemu-system-x86_64; the test is skipped only when it is not installed."""
    path = shutil.which("qemu-system-x86_64")
    if path is None:
        pytest.skip("qemu-system-x86_64 is not installed (CI installs it)")
    return path


def find_vectors() -> Path:
    """``../shared/vectors`` when present, else the copy in ``tests/vectors`` (the same real QEMU
    data, kept in the repository so that a clean clone anywhere runs every test)."""
    shared = SHARED / "vectors"
    return shared if (shared / "qemu72-none-16M.mig").is_file() else ROOT / "tests" / "vectors"


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    """The directory of real QEMU data (read-only)."""
    return find_vectors()


@pytest.fixture
def assemble(tmp_path: Path):
    """Assembles a 16/32-bit x86 boot sector written in GNU as syntax (linked at 0x7c00) and
    returns its first 512 bytes. GNU binutils are a declared test dependency (.ci/run installs
    them): where they are missing the test fails, it does not skip."""
    import subprocess

    if not (shutil.which("as") and shutil.which("ld")):
        pytest.fail("GNU binutils (as, ld) are needed to assemble test guests: apt-get install binutils")

    def run(source: str, bits: int = 32) -> bytes:
        """``bits=64`` assembles for x86-64, so that the source may hold ``.code64`` too."""
        (tmp_path / "g.S").write_text(source)
        subprocess.run(["as", f"--{bits}", "-o", str(tmp_path / "g.o"), str(tmp_path / "g.S")], check=True)
        emulation = "elf_x86_64" if bits == 64 else "elf_i386"
        subprocess.run(["ld", "-m", emulation, "-Ttext", "0x7c00", "--oformat", "binary", "-o",
                        str(tmp_path / "g.bin"), str(tmp_path / "g.o")], check=True)
        return (tmp_path / "g.bin").read_bytes()[:512]

    return run


def pytest_addoption(parser: pytest.Parser) -> None:
    """Declares the options of tests/compat/test_qemu_qtests.py (here: pytest honours
    pytest_addoption only in conftests it loads at startup)."""
    group = parser.getgroup("qemu-qtests", "QEMU's own qtest programs (tests/compat/test_qemu_qtests.py)")
    options = [
        ("--qemu-qtests", dict(
            metavar="DIR", default=os.environ.get("QEMU_QTESTS_DIR") or None,
            help="QEMU build directory (or its tests/qtest directory) holding QEMU's qtest programs; "
                 "runs each of their cases as one test [env QEMU_QTESTS_DIR]")),
        ("--qemu-qtests-programs", dict(
            metavar="A,B", default=os.environ.get("QEMU_QTESTS_PROGRAMS") or None,
            help="comma-separated qtest programs to run (default: those of "
                 "migration-test, fw_cfg-test, rtc-test, i440fx-test, endianness-test, boot-order-test "
                 "that are built) [env QEMU_QTESTS_PROGRAMS]")),
        ("--qemu-qtests-binary", dict(
            metavar="PATH", default=os.environ.get("QEMU_QTESTS_BINARY") or None,
            help="run the cases against this binary instead of our emu-system-x86_64, e.g. "
                 "DIR/qemu-system-x86_64 for the comparison [env QEMU_QTESTS_BINARY]")),
        ("--qemu-qtests-timeout", dict(
            metavar="SECONDS", type=float, default=float(os.environ.get("QEMU_QTESTS_TIMEOUT") or 300),
            help="per-case timeout; the case's whole process group is killed (default 300) "
                 "[env QEMU_QTESTS_TIMEOUT]")),
    ]
    for name, kwargs in options:
        group.addoption(name, **kwargs)
