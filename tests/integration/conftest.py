"""Fixtures shared by the process-level tests."""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from qtest.machine import short_tempdir


@pytest.fixture
def tmp() -> Iterator[Path]:
    """A per-test directory with a short path (unix socket paths must fit in 107 bytes)."""
    d = Path(short_tempdir("it"))
    yield d
    shutil.rmtree(d, ignore_errors=True)
