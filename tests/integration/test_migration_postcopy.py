"""Postcopy between our processes, with the live A-B guest: the switch, pages asked for by the
running destination, the return path, migrate-pause and recovery, the preempt channel; each run
ends with the A-B memory check on the destination."""
from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_migration import BIN, ab_args, events_on, guest_goes_on, migrate, wait_completed

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
    assert "never received" not in dst.stderr_text()


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
    assert events(dst, "completed")[-4:] == ["postcopy-paused", "postcopy-recover", "postcopy-active", "completed"]
    wait_completed(dst)
    guest_goes_on(dst, pair.tmp / "dst-serial")


# ---- with a real QEMU 7.2 (Debian's), -M none: pages asked for by whoever reads the destination

QEMU = shutil.which("qemu-system-x86_64")
NONE16 = ["-M", "none", "-m", "16M"]
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed (CI installs it)")


def postcopy_via(src: QTestMachine, dst: QTestMachine, uri: str, preempt: bool = False) -> None:
    """postcopy-ram on both, a precopy too slow to finish, the switch once it runs; the rest of
    RAM trickles at 64 KiB/s, so whatever the destination reads it must ask for."""
    for m in (src, dst):
        caps(m, postcopy_ram=True, postcopy_preempt=preempt)
    src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 20, "max-postcopy-bandwidth": 64 << 10})
    dst.qmp.cmd("migrate-incoming", uri=uri)
    src.qmp.cmd("migrate", uri=uri)
    while src.qmp.cmd("query-migrate").get("status") != "active":
        time.sleep(0.02)
    src.qmp.cmd("migrate-start-postcopy")
    # the destination too: before its LISTEN a read would map a zero page that is then never asked
    # for (QEMU's destination is no different; nothing runs there before RUN)
    wait_status(src, "postcopy-active")
    wait_status(dst, "postcopy-active")


@needs_qemu
@pytest.mark.parametrize("preempt", [False, True], ids=["plain", "preempt"])
def test_qemu_72_postcopy_source_serves_what_our_destination_reads(tmp, preempt):
    """QEMU 7.2 as the source (its preempt channel too): pages our destination reads are asked
    for and arrive; then the rest, and all 16 MiB compare equal. (7.2 without preempt flushes
    requested pages only every 50 ms, so only some pages are read while it trickles.)"""
    pattern = random.Random(12).randbytes(16 << 20)
    (tmp / "pattern").write_bytes(pattern)
    with QTestMachine(QEMU, [*NONE16, "-nodefaults", "-S", "-device",
                             f"loader,file={tmp}/pattern,addr=0,force-raw=on"], accel_qtest=False) as src, \
            QTestMachine(BIN, [*NONE16, "-S", "-incoming", "defer"]) as dst:
        postcopy_via(src, dst, f"unix:{tmp}/m.sock", preempt)
        for page in random.Random(14).sample(range(4096), 48):
            assert dst.qtest.bufread(page * 4096, 4096) == pattern[page * 4096:(page + 1) * 4096]
        assert src.qmp.cmd("query-migrate")["ram"]["postcopy-requests"] > 0
        src.qmp.cmd("migrate-set-parameters", **{"max-postcopy-bandwidth": 0})
        wait_completed(src)
        wait_completed(dst)
        assert dst.qtest.bufread(0, 16 << 20) == pattern
        assert "never received" not in dst.stderr_text()


@needs_qemu
def test_our_postcopy_source_serves_what_a_qemu_72_destination_reads(tmp):
    pattern = random.Random(13).randbytes(16 << 20)
    with QTestMachine(BIN, [*NONE16, "-S"]) as src, \
            QTestMachine(QEMU, [*NONE16, "-nodefaults", "-S", "-incoming", "defer"], accel_qtest=False) as dst:
        src.qtest.memwrite(0, pattern)
        postcopy_via(src, dst, f"unix:{tmp}/m.sock")
        dst.qmp.cmd("pmemsave", val=0, size=16 << 20, filename=str(tmp / "during"))
        assert (tmp / "during").read_bytes() == pattern
        info = wait_completed(src)
        assert info["ram"]["postcopy-requests"] > 0
        wait_completed(dst)
        dst.qmp.cmd("pmemsave", val=0, size=16 << 20, filename=str(tmp / "after"))
        assert (tmp / "after").read_bytes() == pattern


# ---- QMP: the commands' refusals, and the return path on its own

def test_postcopy_commands_outside_postcopy_are_refused_with_qemus_texts(tmp):
    with QTestMachine(BIN, NONE16) as m:
        with pytest.raises(Exception, match="^GenericError: Enable postcopy with migrate_set_capability before "
                                            "the start of migration$"):
            m.qmp.cmd("migrate-start-postcopy")
        caps(m, postcopy_ram=True)
        with pytest.raises(Exception, match="^GenericError: Postcopy must be started after migration has been "
                                            "started$"):
            m.qmp.cmd("migrate-start-postcopy")
        with pytest.raises(Exception, match="^GenericError: migrate-pause is currently only supported during "
                                            "postcopy-active or postcopy-recover state$"):
            m.qmp.cmd("migrate-pause")
        with pytest.raises(Exception, match="^GenericError: Migrate recover can only be run when postcopy is "
                                            "paused.$"):
            m.qmp.cmd("migrate-recover", uri=f"unix:{tmp}/r.sock")
        with pytest.raises(Exception, match="^GenericError: Cannot resume if there is no paused migration$"):
            m.qmp.cmd("migrate", uri=f"unix:{tmp}/r.sock", resume=True)
        assert m.qmp.cmd("query-migrate") == {}


def test_the_return_path_capability_alone_ends_precopy_with_the_destinations_shut(tmp):
    """return-path on both: OPEN_RETURN_PATH and PING 1 go out, the destination answers PONG and,
    once loaded, SHUT; the source completes on it."""
    with QTestMachine(BIN, NONE16) as src, QTestMachine(BIN, [*NONE16, "-incoming", "defer"]) as dst:
        src.qtest.memwrite(0x5000, b"return path")
        for m in (src, dst):
            caps(m, return_path=True)
        migrate(src, dst, uri=f"unix:{tmp}/m.sock")
        assert dst.qtest.memread(0x5000, 11) == b"return path"


def test_a_return_path_needs_a_socket(tmp):
    """A file has no way back: QEMU's "Unable to open return-path for postcopy", the migration
    fails and the guest runs on."""
    with QTestMachine(BIN, NONE16) as src:
        caps(src, return_path=True)
        src.qmp.cmd("migrate", uri=f"file:{tmp}/f")
        deadline = time.monotonic() + 30
        while (info := src.qmp.cmd("query-migrate"))["status"] != "failed":
            assert time.monotonic() < deadline, info
            time.sleep(0.02)
        assert info["error-desc"] == "Unable to open return-path for postcopy"
        assert "Unable to open return-path for postcopy" in src.stderr_text()
        assert src.qmp.cmd("query-status")["status"] == "running"


# ---- cut anywhere: recovery loses nothing

@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.tuples(st.integers(0, 3 << 20), st.sampled_from(["src", "dst"]), st.booleans()),
                     min_size=1, max_size=2),
       preempt=st.booleans())
def test_cutting_postcopy_anywhere_and_recovering_loses_no_page(tmp_path_factory, cuts, preempt):
    """A postcopy migration of 16 MiB of random bytes is cut (migrate-pause on the source or the
    destination) after a random number of postcopy bytes, once or twice, while the destination
    reads pages; each time migrate-recover and migrate resume carry on. In the end every byte
    on the destination is the source's."""
    tmp = tmp_path_factory.mktemp("cut")
    pattern = random.Random(len(cuts)).randbytes(16 << 20)
    with QTestMachine(BIN, [*NONE16, "-S"]) as src, QTestMachine(BIN, [*NONE16, "-S", "-incoming", "defer"]) as dst:
        src.qtest.memwrite(0, pattern)
        src.qmp.cmd("migrate-set-parameters", **{"max-postcopy-bandwidth": 2 << 20})
        postcopy_via(src, dst, f"unix:{tmp}/m.sock", preempt)
        reads = random.Random(7)
        for i, (after, side, read_first) in enumerate(cuts):
            src.qmp.cmd("migrate-set-parameters", **{"max-postcopy-bandwidth": 2 << 20})
            while src.qmp.cmd("query-migrate")["ram"]["postcopy-bytes"] < after:
                time.sleep(0.01)
            if read_first:  # a page asked for just before the cut
                page = reads.randrange(4096)
                assert dst.qtest.bufread(page * 4096, 4096) == pattern[page * 4096:(page + 1) * 4096]
            (src if side == "src" else dst).qmp.cmd("migrate-pause")
            wait_status(dst, "postcopy-paused")
            wait_status(src, "postcopy-paused")
            dst.qmp.cmd("migrate-recover", uri=f"unix:{tmp}/r{i}.sock")
            src.qmp.cmd("migrate", uri=f"unix:{tmp}/r{i}.sock", resume=True)
            wait_status(src, "postcopy-active")
        for page in reads.sample(range(4096), 16):
            assert dst.qtest.bufread(page * 4096, 4096) == pattern[page * 4096:(page + 1) * 4096]
        src.qmp.cmd("migrate-set-parameters", **{"max-postcopy-bandwidth": 0})
        wait_completed(src)
        wait_completed(dst)
        assert dst.qtest.bufread(0, 16 << 20) == pattern
        assert "never received" not in dst.stderr_text()


def test_postcopy_requests_are_counted_as_they_come_with_the_preempt_channel(tmp):
    """A request served on the preempt channel shows in query-migrate at once, not only when the
    (here slow) background stream next refreshes the statistics."""
    pattern = random.Random(3).randbytes(16 << 20)
    with QTestMachine(BIN, [*NONE16, "-S"]) as src, QTestMachine(BIN, [*NONE16, "-S", "-incoming", "defer"]) as dst:
        src.qtest.memwrite(0, pattern)
        postcopy_via(src, dst, f"unix:{tmp}/m.sock", preempt=True)
        before = src.qmp.cmd("query-migrate")["ram"]["postcopy-requests"]
        page = 4000  # far from where the background stream is
        assert dst.qtest.bufread(page * 4096, 4096) == pattern[page * 4096:(page + 1) * 4096]
        assert src.qmp.cmd("query-migrate")["ram"]["postcopy-requests"] == before + 1
