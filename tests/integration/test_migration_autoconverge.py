"""Auto-converge and pause-before-switchover between processes: a port of QEMU's
/migration/auto_converge on the live A-B guest, and migrate-continue's checks."""
from __future__ import annotations

import pytest
from test_migration import BIN, NONE16, ab_args, events_on, statuses, wait_completed

from qtest.machine import QTestMachine
from qtest.migration import check_guests_ram, wait_for_serial


def set_params(m: QTestMachine, **params: object) -> None:
    """migrate_set_parameter_int: set, then read back through query-migrate-parameters."""
    m.qmp.cmd("migrate-set-parameters", **params)
    got = m.qmp.cmd("query-migrate-parameters")
    assert {k: got[k] for k in params} == params


def test_auto_converge_throttles_the_guest_and_the_migration_completes(tmp):
    """/migration/auto_converge: initial 5, increment 25, max 95, a bandwidth the guest outruns;
    the throttle appears while the source still runs (no STOP yet), stays within max through
    pre-switchover, and the guest goes on at the destination with consistent memory.

    QEMU's test limits bandwidth to 3 MB/s, which puts the first throttle about 70 s in (two
    1-second periods of whole 100 MB rounds); 30 MB/s reaches it in seconds by the same rules."""
    common = ab_args(tmp)
    with QTestMachine(BIN, [*common, "-serial", f"file:{tmp}/src-serial"]) as src, \
            QTestMachine(BIN, [*common, "-serial", f"file:{tmp}/dst-serial", "-incoming", "defer"]) as dst:
        src.qmp.cmd("migrate-set-capabilities", capabilities=[{"capability": "auto-converge", "state": True}])
        set_params(src, **{"cpu-throttle-initial": 5, "cpu-throttle-increment": 25, "max-cpu-throttle": 95})
        set_params(src, **{"max-bandwidth": 30_000_000, "downtime-limit": 1})  # migrate_ensure_non_converge
        src.qmp.cmd("migrate-set-capabilities",
                    capabilities=[{"capability": "pause-before-switchover", "state": True}])
        events_on(src)
        wait_for_serial(tmp / "src-serial", timeout=60)
        dst.qmp.cmd("migrate-incoming", uri=f"unix:{tmp}/migsocket")
        src.qmp.cmd("migrate", uri=f"unix:{tmp}/migsocket")
        while True:  # poll until throttled; the source must not have stopped meanwhile
            info = src.qmp.cmd("query-migrate")
            assert info["status"] in ("setup", "active"), info
            assert not [e for e in src.qmp.get_events() if e["event"] == "STOP"]
            pct = info.get("cpu-throttle-percentage", 0)
            if pct:
                break
        assert pct >= 5
        assert info["ram"]["dirty-pages-rate"] > 0
        set_params(src, **{"max-bandwidth": 1_000_000_000, "downtime-limit": 30000})  # migrate_ensure_converge
        seen = statuses(src, until="pre-switchover")
        assert seen[-1] == "pre-switchover"
        info = src.qmp.cmd("query-migrate")
        assert info["status"] == "pre-switchover" and info.get("cpu-throttle-percentage", 0) <= 95
        assert src.qmp.cmd("query-status")["status"] == "finish-migrate"
        src.qmp.cmd("migrate-continue", state="pre-switchover")
        assert statuses(src) == ["device", "completed"]
        info = wait_completed(src)
        assert "cpu-throttle-percentage" not in info  # cpu_throttle_stop at the end
        wait_completed(dst)
        wait_for_serial(tmp / "dst-serial", timeout=60)
        dst.qmp.cmd("stop")
        check_guests_ram(dst.qtest)


def test_migrate_continue_outside_its_state_is_refused():
    with QTestMachine(BIN, NONE16) as m:
        with pytest.raises(Exception, match="^GenericError: Migration not in expected state: none$"):
            m.qmp.cmd("migrate-continue", state="pre-switchover")


def test_pause_before_switchover_then_cancel_leaves_the_source_running(tmp):
    with QTestMachine(BIN, NONE16) as src, QTestMachine(BIN, [*NONE16, "-incoming", "defer"]) as dst:
        src.qmp.cmd("migrate-set-capabilities",
                    capabilities=[{"capability": "pause-before-switchover", "state": True}])
        events_on(src)
        dst.qmp.cmd("migrate-incoming", uri=f"unix:{tmp}/m.sock", **{"exit-on-error": False})
        src.qmp.cmd("migrate", uri=f"unix:{tmp}/m.sock")
        assert statuses(src, until="pre-switchover") == ["setup", "active", "pre-switchover"]
        assert src.qmp.cmd("query-status") == {"status": "finish-migrate", "running": False}
        with pytest.raises(Exception, match="Migration not in expected state: pre-switchover"):
            src.qmp.cmd("migrate-continue", state="device")
        src.qmp.cmd("migrate_cancel")
        assert statuses(src, until="cancelled") == ["cancelling", "cancelled"]
        assert src.qmp.cmd("query-status") == {"status": "running", "running": True}


def test_writes_while_paused_before_switchover_still_reach_the_destination(tmp):
    """QEMU syncs the dirty bitmap for the last time after the pause: memory changed in
    pre-switchover (here through qtest) goes out with the END section."""
    with QTestMachine(BIN, NONE16) as src, QTestMachine(BIN, [*NONE16, "-incoming", "defer"]) as dst:
        src.qmp.cmd("migrate-set-capabilities",
                    capabilities=[{"capability": "pause-before-switchover", "state": True}])
        events_on(src)
        dst.qmp.cmd("migrate-incoming", uri=f"unix:{tmp}/m.sock")
        src.qmp.cmd("migrate", uri=f"unix:{tmp}/m.sock")
        assert statuses(src, until="pre-switchover")[-1] == "pre-switchover"
        src.qtest.memwrite(0x4000, b"written while paused")
        src.qmp.cmd("migrate-continue", state="pre-switchover")
        assert statuses(src) == ["device", "completed"]
        wait_completed(dst)
        assert dst.qtest.memread(0x4000, 20) == b"written while paused"
