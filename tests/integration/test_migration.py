"""Migration between processes: ours to ours over
unix sockets, loading QEMU 7.2's saved stream, and ours to Debian's QEMU 7.2 through exec."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from qtest.machine import QTestMachine, short_tempdir

BIN = shutil.which("emu-system-x86_64")
QEMU = shutil.which("qemu-system-x86_64")
pytestmark = pytest.mark.skipif(BIN is None, reason="emu-system-x86_64 is not installed")
NONE16 = ["-M", "none", "-m", "16M"]


@pytest.fixture
def tmp():
    d = Path(short_tempdir("mg"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def events_on(m: QTestMachine) -> None:
    m.qmp.cmd("migrate-set-capabilities", capabilities=[{"capability": "events", "state": True}])


def wait_completed(m: QTestMachine, timeout: float = 60) -> dict:
    """Polls query-migrate until completed, as QEMU's wait_for_migration_complete does."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        info = m.qmp.cmd("query-migrate")
        if info.get("status") == "completed":
            return info
        assert info.get("status") not in ("failed", "cancelled"), (info, m.stderr_text())
        assert time.monotonic() < deadline, info


def statuses(m: QTestMachine, until: str = "completed") -> list[str]:
    seen = []
    while not seen or seen[-1] not in (until, "failed", "cancelled"):
        seen.append(m.qmp.wait_event("MIGRATION", timeout=30)["data"]["status"])
    return seen


def test_unix_migration_moves_ram_and_run_state(tmp):
    with QTestMachine(BIN, NONE16) as src, QTestMachine(BIN, [*NONE16, "-incoming", "defer"]) as dst:
        src.qtest.memwrite(0x1000, b"hello migration")
        src.qtest.memset(0x200000, 0xAB, 0x3000)
        events_on(src)
        events_on(dst)
        assert dst.qmp.cmd("query-status") == {"status": "inmigrate", "running": False}
        dst.qmp.cmd("migrate-incoming", uri=f"unix:{tmp}/m.sock")
        assert dst.qmp.cmd("query-migrate") == {"status": "setup",
                                                "socket-address": [{"type": "unix", "path": f"{tmp}/m.sock"}]}
        src.qmp.cmd("migrate", uri=f"unix:{tmp}/m.sock")
        assert statuses(src) == ["setup", "active", "completed"]
        assert statuses(dst) == ["setup", "active", "completed"]
        info = src.qmp.cmd("query-migrate")
        assert info["status"] == "completed" and info["ram"]["normal"] == 4 and info["ram"]["total"] == 16 << 20
        assert info["ram"]["duplicate"] + info["ram"]["normal"] == 4096
        assert dst.qmp.cmd("query-migrate") == {"status": "completed"}
        assert src.qmp.cmd("query-status") == {"status": "postmigrate", "running": False}
        assert dst.qmp.cmd("query-status") == {"status": "running", "running": True}  # the source ran
        assert dst.qtest.memread(0x1000, 15) == b"hello migration"
        assert dst.qtest.memread(0x200000, 0x3000) == b"\xab" * 0x3000
        with pytest.raises(Exception, match="Can't migrate the vm that was paused due to previous migration"):
            src.qmp.cmd("migrate", uri=f"unix:{tmp}/m2.sock")


def test_stopped_source_keeps_the_destination_paused_and_cont_resumes(tmp):
    with QTestMachine(BIN, [*NONE16, "-S"]) as src, QTestMachine(BIN, [*NONE16, "-incoming", "defer", "-S"]) as dst:
        dst.qmp.cmd("migrate-incoming", uri=f"unix:{tmp}/m.sock")
        src.qmp.cmd("migrate", uri=f"unix:{tmp}/m.sock")
        wait_completed(src)
        wait_completed(dst)
        assert dst.qmp.cmd("query-status") == {"status": "prelaunch", "running": False}  # as received
        dst.qmp.cmd("cont")
        assert dst.qmp.wait_event("RESUME", timeout=30)["event"] == "RESUME"


def test_destination_loads_qemu_72_saved_stream(tmp, vectors_dir):
    vector = vectors_dir / "qemu72-none-16M.mig"
    with QTestMachine(BIN, [*NONE16, "-incoming", f"exec:cat {vector}"]) as dst:
        wait_completed(dst)
        assert dst.qmp.cmd("query-status") == {"status": "prelaunch", "running": False}
        assert dst.qtest.memread(0, 4096) == bytes(4096)


@pytest.mark.parametrize("args,message", [
    ({"uri": "foo:bar"}, "unknown migration protocol: foo:bar"),
    ({}, "need either 'uri' or 'channels' argument"),
])
def test_migrate_argument_errors_leave_state_untouched(args, message):
    with QTestMachine(BIN, NONE16) as m:
        events_on(m)
        with pytest.raises(Exception, match=message):
            m.qmp.cmd("migrate", **args)
        assert m.qmp.cmd("query-migrate") == {}
        assert not [e for e in m.qmp.get_events() if e["event"] == "MIGRATION"]


def test_migrate_incoming_needs_dash_incoming_and_runs_once(tmp):
    with QTestMachine(BIN, NONE16) as m:
        with pytest.raises(Exception, match="'-incoming' was not specified on the command line"):
            m.qmp.cmd("migrate-incoming", uri=f"unix:{tmp}/x.sock")
    with QTestMachine(BIN, [*NONE16, "-incoming", "defer"]) as m:
        m.qmp.cmd("migrate-incoming", uri=f"unix:{tmp}/x.sock")
        with pytest.raises(Exception, match="The incoming migration has already been started"):
            m.qmp.cmd("migrate-incoming", uri=f"unix:{tmp}/y.sock")


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed (CI installs it)")
def test_our_source_into_qemu_72_destination(tmp):
    """Our stream, loaded by a real QEMU 7.2 (-M none -m 16M), gives the same RAM (read with HMP xp)."""
    stream = tmp / "stream"
    with QTestMachine(BIN, [*NONE16, "-S"]) as src:
        src.qtest.memwrite(0x1000, bytes(range(256)))
        src.qmp.cmd("migrate", uri=f"exec:cat > {stream}")
        wait_completed(src)
    with QTestMachine(QEMU, [*NONE16, "-S", "-incoming", f"exec:cat {stream}"], accel_qtest=False) as dst:
        wait_completed(dst)
        dump = dst.qmp.cmd("human-monitor-command", {"command-line": "xp /16xb 0x1000"})
        assert dump.startswith("0000000000001000: 0x00 0x01 0x02 0x03 0x04 0x05 0x06 0x07")
        assert dst.qmp.cmd("query-status")["status"] == "prelaunch"


@pytest.mark.skipif(importlib.util.find_spec("unicorn") is None, reason="needs unicorn")
def test_live_precopy_of_the_ab_guest_keeps_memory_consistent_and_the_guest_running(tmp):
    """QEMU's precopy test shape: the A-B guest runs on the source, migrates while dirtying RAM, and
    carries on at the destination (its CPU state travels too); the memory check passes there."""
    from qtest.migration import ab_bootsect, check_guests_ram, wait_for_serial

    image = ab_bootsect(tmp / "bootsect")
    common = ["-accel", "tcg", "-M", "pc", "-m", "150M", "-drive", f"file={image},format=raw"]
    with QTestMachine(BIN, [*common, "-serial", f"file:{tmp}/src-serial"]) as src, \
            QTestMachine(BIN, [*common, "-serial", f"file:{tmp}/dst-serial", "-incoming", "defer"]) as dst:
        wait_for_serial(tmp / "src-serial", timeout=60)
        events_on(src)
        src.qmp.cmd("migrate-set-parameters", **{"downtime-limit": 1, "max-bandwidth": 4 << 30})
        dst.qmp.cmd("migrate-incoming", uri=f"unix:{tmp}/m.sock")
        src.qmp.cmd("migrate", uri=f"unix:{tmp}/m.sock")
        passes = []
        while len(passes) < 2:  # as migrate_ensure_non_converge: a 1 ms downtime cannot be met
            ev = src.qmp.wait_event("MIGRATION_PASS", timeout=120)
            passes.append(ev["data"]["pass"])
        src.qmp.cmd("migrate-set-parameters", **{"downtime-limit": 30000})  # migrate_ensure_converge
        while not passes or passes[-1] != "completed":
            ev = src.qmp.wait_event(None, timeout=120)
            if ev["event"] == "MIGRATION_PASS":
                passes.append(ev["data"]["pass"])
            elif ev["event"] == "MIGRATION":
                assert ev["data"]["status"] not in ("failed", "cancelled"), src.stderr_text()
                if ev["data"]["status"] == "completed":
                    passes.append("completed")
        assert passes[:2] == [1, 2]  # setup sync, then at least one more round before completion
        info = src.qmp.cmd("query-migrate")
        assert info["ram"]["dirty-sync-count"] >= 3 and info["ram"]["normal"] > (100 << 20) // 4096
        wait_completed(dst)
        assert dst.qmp.cmd("query-status") == {"status": "running", "running": True}
        wait_for_serial(tmp / "dst-serial", timeout=60)  # the guest goes on printing at the destination
        # ...without starting over: a rebooted guest would print its 'A' first
        assert (tmp / "dst-serial").read_bytes().startswith(b"B")
        dst.qmp.cmd("stop")
        check_guests_ram(dst.qtest)
