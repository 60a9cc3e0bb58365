"""Postcopy between our processes, with the live A-B guest: the switch, pages asked for by the
running destination, the return path, migrate-pause and recovery, the preempt channel; each run
ends with the A-B memory check on the destination."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_migration import BIN, ab_args, events_on, guest_goes_on, wait_completed

from qtest.machine import QTestMachine
from qtest.migration import wait_for_serial


def caps(m: QTestMachine, **on: bool) -> None:
    m.qmp.cmd("migrate-set-capabilities",
              capabilities=[{"capability": k.replace("_", "-"), "state": v} for k, v in on.items()])


def wait_status(m: QTestMachine, status: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        info = m.qmp.cmd("query-migrate")
        if info.get("status") == status:
            return info
        assert info.get("status") not in ("failed", "cancelled", "completed"), (info, m.stderr_text())
        assert time.monotonic() < deadline, info
        time.sleep(0.02)  # polling a status, as QEMU's own test does (not to synchronise)


def events(m: QTestMachine, until: str) -> list[str]:
    seen: list[str] = []
    while not seen or seen[-1] != until:
        seen.append(m.qmp.wait_event("MIGRATION", timeout=60)["data"]["status"])
        assert seen[-1] not in ("failed", "cancelled"), (seen, m.stderr_text())
    return seen


class Pair:
    """A source running the A-B guest and a destination waiting for it, postcopy-ram on both."""

    def __init__(self, tmp: Path, preempt: bool = False) -> None:
        common = ab_args(tmp)
        self.tmp = tmp
        self.src = QTestMachine(BIN, [*common, "-serial", f"file:{tmp}/src-serial"])
        self.dst = QTestMachine(BIN, [*common, "-serial", f"file:{tmp}/dst-serial", "-incoming", "defer"])
        for m in (self.src, self.dst):
            events_on(m)
            caps(m, postcopy_ram=True, postcopy_preempt=preempt)
        caps(self.dst, postcopy_blocktime=True)
        self.uri = f"unix:{tmp}/migsocket"

    def start(self, bandwidth: int) -> None:
        """migrate without converging (QEMU's migrate_ensure_non_converge), the first pass done,
        then migrate-start-postcopy: STOP on the source, RESUME on the destination."""
        src, dst = self.src, self.dst
        src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 30_000_000, "downtime-limit": 1,
                                                 "max-postcopy-bandwidth": bandwidth})
        wait_for_serial(self.tmp / "src-serial", timeout=60)
        dst.qmp.cmd("migrate-incoming", uri=self.uri)
        src.qmp.cmd("migrate", uri=self.uri)
        while src.qmp.cmd("query-migrate").get("ram", {}).get("dirty-sync-count", 0) < 2:
            time.sleep(0.02)
        src.qmp.cmd("migrate-start-postcopy")
        src.qmp.wait_event("STOP", timeout=60)
        dst.qmp.wait_event("RESUME", timeout=60)

    def close(self) -> None:
        self.src.quit(check=False)
        self.dst.quit(check=False)


@pytest.fixture
def pair(tmp, request):
    p = Pair(tmp, preempt=getattr(request, "param", False))
    yield p
    p.close()


@pytest.mark.parametrize("pair", [False, True], ids=["plain", "preempt"], indirect=True)
def test_postcopy_runs_the_guest_on_the_destination_before_its_ram_has_arrived(pair):
    # a slow background stream: the running destination must ask for the pages it touches
    pair.start(bandwidth=32 << 20)
    src, dst = pair.src, pair.dst
    info = wait_completed(src, timeout=120)
    assert info["ram"]["postcopy-requests"] > 0
    assert info["ram"]["postcopy-bytes"] > 0
    assert "downtime" in info
    assert events(src, "completed") == ["setup", "active", "postcopy-active", "completed"]
    assert events(dst, "completed") == ["setup", "active", "postcopy-active", "completed"]
    dinfo = wait_completed(dst)
    assert isinstance(dinfo["postcopy-blocktime"], int) and dinfo["postcopy-blocktime"] > 0
    assert dinfo["postcopy-vcpu-blocktime"] == [dinfo["postcopy-blocktime"]]
    assert src.qmp.cmd("query-status")["status"] == "postmigrate"
    guest_goes_on(dst, pair.tmp / "dst-serial")


@pytest.mark.parametrize("pair", [False, True], ids=["plain", "preempt"], indirect=True)
def test_a_paused_postcopy_recovers_on_a_new_channel_and_loses_nothing(pair):
    pair.start(bandwidth=4096)
    src, dst = pair.src, pair.dst
    wait_status(src, "postcopy-active")
    src.qmp.cmd("migrate-pause")
    wait_status(dst, "postcopy-paused")
    wait_status(src, "postcopy-paused")
    assert src.qmp.cmd("query-migrate")["error-desc"] == "Postcopy migration is paused by the user"
    recover = f"unix:{pair.tmp}/migsocket-recover"
    dst.qmp.cmd("migrate-recover", uri=recover)
    src.qmp.cmd("migrate", uri=recover, resume=True)
    src.qmp.cmd("migrate-set-parameters", **{"max-postcopy-bandwidth": 0})
    wait_completed(src, timeout=120)
    assert events(src, "completed")[-5:] == ["postcopy-paused", "postcopy-recover-setup", "postcopy-recover",
                                             "postcopy-active", "completed"]
    assert events(dst, "completed")[-5:] == ["postcopy-paused", "postcopy-recover-setup", "postcopy-recover",
                                             "postcopy-active", "completed"]
    wait_completed(dst)
    guest_goes_on(dst, pair.tmp / "dst-serial")
