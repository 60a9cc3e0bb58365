"""Migration between processes: ours to ours over
unix sockets, loading QEMU 7.2's saved stream, and ours to Debian's QEMU 7.2 through exec."""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from qtest.machine import QTestMachine
from qtest.migration import ab_bootsect, check_guests_ram, wait_for_serial

BIN = shutil.which("emu-system-x86_64")
QEMU = shutil.which("qemu-system-x86_64")
NONE16 = ["-M", "none", "-m", "16M"]


def ab_args(tmp: Path) -> list[str]:
    """A pc machine booting the A-B guest (written to ``tmp``), as QEMU's migration tests run it."""
    image = ab_bootsect(tmp / "bootsect")
    return ["-accel", "tcg", "-M", "pc", "-m", "150M", "-drive", f"file={image},format=raw"]


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


def migrate(src: QTestMachine, dst: QTestMachine, timeout: float = 60, **addr: Any) -> dict:
    """migrate-incoming on ``dst``, then migrate on ``src``, to the same address (``uri=`` or
    ``channels=``); waits until both have completed and returns the source's query-migrate."""
    dst.qmp.cmd("migrate-incoming", **addr)
    src.qmp.cmd("migrate", **addr)
    info = wait_completed(src, timeout)
    wait_completed(dst)
    return info


def guest_goes_on(dst: QTestMachine, serial: Path) -> None:
    """The migrated A-B guest prints on at the destination and, stopped there, passes the memory check."""
    wait_for_serial(serial, timeout=60)
    dst.qmp.cmd("stop")
    check_guests_ram(dst.qtest)


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
        migrate(src, dst, uri=f"unix:{tmp}/m.sock")
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
    ({}, "need either 'uri' or 'channels' argument"),  # validate_uri/channels/none_set
    ({"uri": "tcp:127.0.0.1:0", "channels": [{"channel-type": "main", "addr": {  # .../both_set
        "transport": "socket", "type": "inet", "host": "127.0.0.1", "port": "0"}}]},
     "need either 'uri' or 'channels' argument"),
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


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed (CI installs it)")
def test_qemu_72_source_into_our_destination_byte_for_byte(tmp):
    """A real QEMU 7.2 (-M none -m 16M) migrates over a unix socket into ours; all 16 MiB compare
    equal. Debian's QEMU has no qtest accelerator and crashes on qtest writes without a CPU, so its
    RAM is filled the only way it can be: by loading our stream first (a round trip ours→QEMU→ours)."""
    import random

    rng = random.Random(5)
    stream = tmp / "stream"
    with QTestMachine(BIN, [*NONE16, "-S"]) as origin:
        for addr, n in ((0, 4096), (0x1234, 777), (0x300000, 1 << 20), (0xFFF000, 4096)):
            origin.qtest.memwrite(addr, rng.randbytes(n))
        origin.qtest.memset(0x800000, 0xAB, 3 * 4096)
        expected = origin.qtest.bufread(0, 16 << 20)
        origin.qmp.cmd("migrate", uri=f"exec:cat > {stream}")
        wait_completed(origin)
    # -nodefaults: no default NIC, whose "slirp" section a -M none destination does not have
    with QTestMachine(QEMU, [*NONE16, "-nodefaults", "-S", "-incoming", f"exec:cat {stream}"],
                      accel_qtest=False) as src, \
            QTestMachine(BIN, [*NONE16, "-S", "-incoming", "defer"]) as dst:
        wait_completed(src)
        migrate(src, dst, uri=f"unix:{tmp}/m.sock")
        assert dst.qmp.cmd("query-status") == {"status": "prelaunch", "running": False}
        assert dst.qtest.bufread(0, 16 << 20) == expected


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_live_precopy_of_the_ab_guest_keeps_memory_consistent_and_the_guest_running(tmp, transport):
    """QEMU's precopy test shape: the A-B guest runs on the source, migrates while dirtying RAM, and
    carries on at the destination (its CPU state travels too); the memory check passes there."""
    common = ab_args(tmp)
    with QTestMachine(BIN, [*common, "-serial", f"file:{tmp}/src-serial"]) as src, \
            QTestMachine(BIN, [*common, "-serial", f"file:{tmp}/dst-serial", "-incoming", "defer"]) as dst:
        wait_for_serial(tmp / "src-serial", timeout=60)
        events_on(src)
        src.qmp.cmd("migrate-set-parameters", **{"downtime-limit": 1, "max-bandwidth": 4 << 30})
        if transport == "unix":
            dst.qmp.cmd("migrate-incoming", uri=f"unix:{tmp}/m.sock")
            uri = f"unix:{tmp}/m.sock"
        else:  # port 0: the destination reports the port it got, as QEMU's tests read it
            dst.qmp.cmd("migrate-incoming", uri="tcp:127.0.0.1:0")
            (sa,) = dst.qmp.cmd("query-migrate")["socket-address"]
            assert sa["type"] == "inet" and sa["host"] == "127.0.0.1" and int(sa["port"]) > 0
            uri = f"tcp:127.0.0.1:{sa['port']}"
        src.qmp.cmd("migrate", uri=uri)
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
        # downtime-bytes: only what went out with the guest stopped (the last dirty pages and the
        # devices), precopy-bytes the rest
        ram = info["ram"]
        assert ram["precopy-bytes"] + ram["downtime-bytes"] == ram["transferred"]
        assert 0 < ram["downtime-bytes"] < ram["precopy-bytes"]
        wait_completed(dst)
        assert dst.qmp.cmd("query-status") == {"status": "running", "running": True}
        guest_goes_on(dst, tmp / "dst-serial")
        # ...without starting over: a rebooted guest would print its 'A' first
        assert (tmp / "dst-serial").read_bytes().startswith(b"B")


def test_cancel_keeps_the_source_running_and_a_second_migration_completes(tmp):
    """QEMU's cancel case: a live migration cancelled mid-stream ends cancelling → cancelled, the
    guest runs on at the source, the half-fed destination fails, and migrating again succeeds."""
    common = ab_args(tmp)
    with QTestMachine(BIN, [*common, "-serial", f"file:{tmp}/src-serial"]) as src, \
            QTestMachine(BIN, [*common, "-serial", f"file:{tmp}/dst1-serial", "-incoming", "defer"]) as dst1:
        pos = wait_for_serial(tmp / "src-serial", timeout=60)
        events_on(src)
        events_on(dst1)
        # 1 MB/s: the bulk round alone takes minutes, so the cancel lands mid-stream
        src.qmp.cmd("migrate-set-parameters", **{"downtime-limit": 1, "max-bandwidth": 1 << 20})
        dst1.qmp.cmd("migrate-incoming", uri=f"unix:{tmp}/m1.sock", **{"exit-on-error": False})
        src.qmp.cmd("migrate", uri=f"unix:{tmp}/m1.sock")
        assert src.qmp.wait_event("MIGRATION", timeout=30)["data"]["status"] == "setup"
        assert src.qmp.wait_event("MIGRATION", timeout=30)["data"]["status"] == "active"
        src.qmp.cmd("migrate_cancel")
        assert statuses(src, until="cancelled") == ["cancelling", "cancelled"]
        assert src.qmp.cmd("query-migrate")["status"] == "cancelled"
        assert src.qmp.cmd("query-status") == {"status": "running", "running": True}
        assert statuses(dst1, until="failed")[-1] == "failed"
        assert dst1.qmp.cmd("query-status")["status"] == "inmigrate"
        wait_for_serial(tmp / "src-serial", timeout=60, start=pos)  # still running at the source

        with QTestMachine(BIN, [*common, "-serial", f"file:{tmp}/dst2-serial", "-incoming", "defer"]) as dst2:
            src.qmp.cmd("migrate-set-parameters", **{"downtime-limit": 30000, "max-bandwidth": 4 << 30})
            migrate(src, dst2, uri=f"unix:{tmp}/m2.sock")
            guest_goes_on(dst2, tmp / "dst2-serial")


def test_save_setup_error_fails_the_migration_and_the_source_runs_on(tmp):
    """A handler whose save_setup fails (test-only -device migration-fault): the migration goes
    setup → failed with that message as error-desc, and the guest keeps running at the source."""
    common = ab_args(tmp)
    with QTestMachine(BIN, [*common, "-serial", f"file:{tmp}/src-serial", "-device",
                            "migration-fault,stage=save-setup"]) as src:
        pos = wait_for_serial(tmp / "src-serial", timeout=60)
        events_on(src)
        src.qmp.cmd("migrate", uri=f"exec:cat > {tmp}/stream")
        assert statuses(src, until="failed") == ["setup", "failed"]
        info = src.qmp.cmd("query-migrate")
        assert info["status"] == "failed"
        assert info["error-desc"] == "migration-fault: injected save_setup failure"
        assert src.qmp.cmd("query-status") == {"status": "running", "running": True}
        wait_for_serial(tmp / "src-serial", timeout=60, start=pos)


@pytest.mark.parametrize("stage, failure", [("load-setup", "injected load_setup failure"),
                                            ("post-load", "injected post-load exception")])
def test_load_error_fails_the_destination_with_the_message(tmp, stage, failure):
    """A load_setup error, or an exception after the load (as a bug would raise): failed with the
    message and MIGRATION events; with exit-on-error false it stays up (in inmigrate) and answers."""
    with QTestMachine(BIN, [*NONE16, "-S"]) as src, \
            QTestMachine(BIN, [*NONE16, "-incoming", "defer", "-device", f"migration-fault,stage={stage}"]) as dst:
        events_on(dst)
        dst.qmp.cmd("migrate-incoming", uri=f"unix:{tmp}/m.sock", **{"exit-on-error": False})
        src.qmp.cmd("migrate", uri=f"unix:{tmp}/m.sock")
        assert statuses(dst, until="failed") == ["setup", "active", "failed"]
        assert dst.qmp.cmd("query-migrate")["error-desc"] == f"load of migration failed: migration-fault: {failure}"
        assert dst.qmp.cmd("query-status")["status"] == "inmigrate"


@pytest.mark.parametrize("spec, message", [
    ("migration-fault,stage=later", "Parameter 'stage' does not accept value 'later'"),
    ("migration-fault,when=now", "Property 'migration-fault.when' not found"),
])
def test_migration_fault_device_options_are_checked(spec, message):
    import subprocess

    out = subprocess.run([BIN, *NONE16, "-device", spec], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert out.stderr == f"emu-system-x86_64: -device {spec}: {message}\n"


UUID_A = "11111111-1111-1111-1111-111111111111"
UUID_B = "22222222-2222-2222-2222-222222222222"


@pytest.mark.parametrize("src_uuid, dst_uuid", [(UUID_A, UUID_A), (None, UUID_A), (UUID_A, None)],
                         ids=["validate_uuid", "src_not_set", "dst_not_set"])
def test_validate_uuid_cases_that_complete(tmp, src_uuid, dst_uuid):
    """QEMU's /migration/validate_uuid{,_src_not_set,_dst_not_set}: validate-uuid on the source;
    the A-B guest arrives and passes the memory check (a destination without -uuid only warns)."""
    common = ab_args(tmp)
    with QTestMachine(BIN, [*common, *(["-uuid", src_uuid] if src_uuid else []),
                            "-serial", f"file:{tmp}/src-serial"]) as src, \
            QTestMachine(BIN, [*common, *(["-uuid", dst_uuid] if dst_uuid else []),
                               "-serial", f"file:{tmp}/dst-serial", "-incoming", "defer"]) as dst:
        wait_for_serial(tmp / "src-serial", timeout=60)
        src.qmp.cmd("migrate-set-capabilities", capabilities=[{"capability": "validate-uuid", "state": True}])
        src.qmp.cmd("migrate-set-parameters", **{"downtime-limit": 1000000})
        migrate(src, dst, uri=f"unix:{tmp}/migsocket")
        guest_goes_on(dst, tmp / "dst-serial")
        warning = f"emu-system-x86_64: warning: UUID is received {UUID_A}, but local uuid isn't set\n"
        assert (warning in dst.stderr_text()) == (src_uuid is not None and dst_uuid is None)


def test_validate_uuid_error_ends_the_destination_and_fails_the_source(tmp):
    """/migration/validate_uuid_error: mismatched -uuid; the destination exits 1 with QEMU's text
    and the source's migration fails."""
    with QTestMachine(BIN, [*NONE16, "-uuid", UUID_A]) as src, \
            QTestMachine(BIN, [*NONE16, "-uuid", UUID_B, "-incoming", "defer"]) as dst:
        src.qtest.memset(0, 0x5A, 16 << 20)  # enough data that the source is still sending
        src.qmp.cmd("migrate-set-capabilities", capabilities=[{"capability": "validate-uuid", "state": True}])
        dst.qmp.cmd("migrate-incoming", uri=f"unix:{tmp}/migsocket")
        dst.set_expected_status(1)
        src.qmp.cmd("migrate", uri=f"unix:{tmp}/migsocket")
        assert dst.wait(timeout=30, check=False) == 1
        assert f"UUID received is {UUID_A} and local is {UUID_B}" in dst.stderr_text()
        deadline = time.monotonic() + 30
        while (status := src.qmp.cmd("query-migrate")["status"]) not in ("failed", "completed"):
            assert time.monotonic() < deadline
        assert status == "failed"
        assert src.qmp.cmd("query-status") == {"status": "running", "running": True}


def test_migration_through_channels_equals_through_uri(tmp):
    """The same source state sent once with ``uri`` and once with the equivalent ``channels``
    (socket/unix on both sides) arrives identically: same RAM and the same page counts."""
    results = []
    for how in ("uri", "channels"):
        sock = f"{tmp}/{how}.sock"
        addr = ({"uri": f"unix:{sock}"} if how == "uri" else
                {"channels": [{"channel-type": "main", "addr": {"transport": "socket", "type": "unix",
                                                                "path": sock}}]})
        with QTestMachine(BIN, [*NONE16, "-S"]) as src, \
                QTestMachine(BIN, [*NONE16, "-S", "-incoming", "defer"]) as dst:
            src.qtest.memset(0x4000, 0x11, 5 * 4096)
            src.qtest.memwrite(0xABC000, b"channels" * 512)
            info = migrate(src, dst, **addr)
            results.append((dst.qtest.bufread(0, 16 << 20), info["ram"]["normal"], info["ram"]["duplicate"]))
    assert results[0] == results[1]
    assert results[0][1] == 6 and results[0][0][0x4000:0x9000] == b"\x11" * 5 * 4096


def test_bad_dest_fails_and_the_source_runs_on():
    """/migration/bad_dest: connecting to tcp port 0 fails; setup → failed, the VM still runs."""
    with QTestMachine(BIN, NONE16) as src:
        events_on(src)
        src.qmp.cmd("migrate", uri="tcp:127.0.0.1:0")
        assert statuses(src, until="failed") == ["setup", "failed"]
        info = src.qmp.cmd("query-migrate")
        assert info["status"] == "failed" and info["error-desc"].startswith("Failed to connect")
        assert src.qmp.cmd("query-status") == {"status": "running", "running": True}


@pytest.mark.parametrize("suffix, offset", [("", 0), (",offset=4096", 4096)], ids=["file", "file_offset"])
def test_precopy_file_and_file_offset(tmp, suffix, offset):
    """/migration/precopy/file and /file/offset: the stopped source saves to a file (bytes before the
    offset are left alone) and a destination loads it with the same URI."""
    path = tmp / "migfile"
    path.write_bytes(b"\xEE" * offset)
    with QTestMachine(BIN, [*NONE16, "-S"]) as src:
        src.qtest.memwrite(0x3000, b"file migration")
        src.qmp.cmd("migrate", uri=f"file:{path}{suffix}")
        wait_completed(src)
    assert path.read_bytes()[:offset] == b"\xEE" * offset
    assert path.read_bytes()[offset:offset + 4] == b"QEVM"
    with QTestMachine(BIN, [*NONE16, "-S", "-incoming", f"file:{path}{suffix}"]) as dst:
        wait_completed(dst)
        assert dst.qtest.memread(0x3000, 14) == b"file migration"


def test_precopy_file_offset_bad(tmp):
    """/migration/precopy/file/offset/bad: 0x20M is no size; migrate fails with QEMU's text."""
    with QTestMachine(BIN, [*NONE16, "-S"]) as src:
        with pytest.raises(Exception, match=r"file URI has bad offset 0x20M: Invalid argument"):
            src.qmp.cmd("migrate", uri=f"file:{tmp}/migfile,offset=0x20M")
        assert src.qmp.cmd("query-migrate") == {}


@pytest.mark.parametrize("kind", ["socketpair", "file"])
def test_precopy_fd_then_closefd_fails_on_both_sides(tmp, kind):
    """/migration/precopy/fd/tcp and /fd/file: the stream goes through an fd passed with getfd
    (a socket pair's ends, or one regular file written then read); the migration consumes the
    named fd, so closefd afterwards fails with QEMU's text."""
    import os
    import socket

    with QTestMachine(BIN, [*NONE16, "-S"]) as src, \
            QTestMachine(BIN, [*NONE16, "-S", "-incoming", "defer"]) as dst:
        src.qtest.memwrite(0x5000, b"through an fd")
        if kind == "socketpair":
            a, b = socket.socketpair()
            fd_src, fd_dst = a.fileno(), b.fileno()
        else:
            path = tmp / "migfile"
            fd_src = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            src.qmp.cmd_fds("getfd", [fd_src], fdname="fd-mig")
            if kind == "socketpair":
                dst.qmp.cmd_fds("getfd", [fd_dst], fdname="fd-mig")
                dst.qmp.cmd("migrate-incoming", uri="fd:fd-mig")
            src.qmp.cmd("migrate", uri="fd:fd-mig")
            wait_completed(src)
            if kind == "file":
                fd_dst = os.open(path, os.O_RDONLY)
                try:
                    dst.qmp.cmd_fds("getfd", [fd_dst], fdname="fd-mig")
                finally:
                    os.close(fd_dst)
                dst.qmp.cmd("migrate-incoming", uri="fd:fd-mig")
            wait_completed(dst)
        finally:
            if kind == "socketpair":
                a.close()
                b.close()
            else:
                os.close(fd_src)
        assert dst.qtest.memread(0x5000, 13) == b"through an fd"
        for m in (src, dst):
            with pytest.raises(Exception, match="File descriptor named 'fd-mig' not found"):
                m.qmp.cmd("closefd", fdname="fd-mig")
        if kind == "file":
            warning = "fd: migration to a file is deprecated. Use file: instead."
            assert warning in src.stderr_text() and warning in dst.stderr_text()


def test_precopy_exec(tmp):
    """exec: on both sides, the stream through shell commands joined by a fifo."""
    import os

    os.mkfifo(tmp / "fifo")
    with QTestMachine(BIN, [*NONE16, "-S"]) as src, \
            QTestMachine(BIN, [*NONE16, "-S", "-incoming", "defer"]) as dst:
        src.qtest.memwrite(0x6000, b"through exec")
        dst.qmp.cmd("migrate-incoming", uri=f"exec:cat {tmp}/fifo")
        src.qmp.cmd("migrate", uri=f"exec:cat > {tmp}/fifo")
        wait_completed(src)
        wait_completed(dst)
        assert dst.qtest.memread(0x6000, 12) == b"through exec"


def test_mapped_ram_is_refused_before_anything_starts(tmp):
    """mapped-ram's file layout is not implemented: migrate and migrate-incoming refuse it with a
    clear error and change nothing (a plain stream would be misread by a QEMU using it)."""
    with QTestMachine(BIN, NONE16) as src, QTestMachine(BIN, [*NONE16, "-incoming", "defer"]) as dst:
        for m in (src, dst):
            events_on(m)
            m.qmp.cmd("migrate-set-capabilities", capabilities=[{"capability": "mapped-ram", "state": True}])
        with pytest.raises(Exception, match="^GenericError: mapped-ram migration is not supported by this emulator$"):
            src.qmp.cmd("migrate", uri=f"file:{tmp}/f")
        with pytest.raises(Exception, match="^GenericError: mapped-ram migration is not supported by this emulator$"):
            dst.qmp.cmd("migrate-incoming", uri=f"file:{tmp}/f")
        assert src.qmp.cmd("query-migrate") == {} and dst.qmp.cmd("query-migrate") == {}
        assert not [e for m in (src, dst) for e in m.qmp.get_events() if e["event"] == "MIGRATION"]
        assert not (tmp / "f").exists()


@pytest.mark.parametrize("cap", ["background-snapshot", "x-ignore-shared", "late-block-activate", "dirty-bitmaps",
                                 "release-ram", "zero-blocks", "rdma-pin-all"])
def test_capabilities_not_implemented_are_refused(cap):
    """Nothing accepted and ignored: switching on a capability this emulator does not implement
    is an error and leaves every capability as it was (QEMU's own checks come first)."""
    with QTestMachine(BIN, NONE16) as m:
        before = m.qmp.cmd("query-migrate-capabilities")
        with pytest.raises(Exception, match=f"^GenericError: Capability '{cap}' is not supported by this emulator$"):
            m.qmp.cmd("migrate-set-capabilities", capabilities=[{"capability": "events", "state": True},
                                                                {"capability": cap, "state": True}])
        assert m.qmp.cmd("query-migrate-capabilities") == before
        # switching one off is always fine
        m.qmp.cmd("migrate-set-capabilities", capabilities=[{"capability": cap, "state": False}])


def test_qemu_checks_come_before_the_refusal():
    with QTestMachine(BIN, NONE16) as m:
        with pytest.raises(Exception, match="^GenericError: Postcopy is not yet compatible with multifd$"):
            m.qmp.cmd("migrate-set-capabilities", capabilities=[{"capability": "postcopy-ram", "state": True},
                                                                {"capability": "multifd", "state": True}])
