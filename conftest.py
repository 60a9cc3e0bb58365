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


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    """``../shared/vectors``: real QEMU data (read-only)."""
    path = SHARED / "vectors"
    if not path.is_dir():
        pytest.skip(f"shared vectors not found at {path}")
    return path
